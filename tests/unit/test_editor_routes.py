"""The routes ComfyUI's editor needs: its files at /, the user folder (/userdata, /v2/userdata,
/settings) per team, the editor's extras, and the signed-in session the editor acts with."""

from __future__ import annotations

import json

import pytest

from tests.unit.test_teams_and_auth import auth_settings, bearer, farm  # noqa: F401 - fixtures
from web import frontend


# the editor's files -------------------------------------------------------------------------------
def test_the_editor_is_served_at_the_root_with_its_assets(client):
    if frontend.frontend_root() is None:
        pytest.skip("the [frontend] extra is not installed")
    page = client.get("/")
    assert page.status_code == 200 and b'<div id="vue-app">' in page.data
    assert page.headers["Cache-Control"] == "no-cache"
    asset = next(path for path in (frontend.frontend_root() / "assets").iterdir() if path.suffix == ".js")
    served = client.get(f"/assets/{asset.name}")
    assert served.status_code == 200 and "immutable" in served.headers["Cache-Control"]
    extensions = client.get("/api/extensions").get_json()
    assert extensions and all(path.startswith("/extensions/core/") and path.endswith(".js") for path in extensions)
    assert client.get(extensions[0]).status_code == 200
    assert client.get("/templates/index.json").get_json() == []
    assert client.get("/favicon.ico").status_code == 200


@pytest.mark.parametrize("path", ["/../setup.cfg", "/assets/../../__init__.py", "/%2e%2e/setup.cfg", "/nothing.js"])
def test_files_outside_the_editor_are_not_found(client, path):
    assert client.get(path).status_code == 404


def test_without_the_package_the_root_says_how_to_install_it(client, monkeypatch):
    monkeypatch.setattr(frontend, "frontend_root", lambda: None)
    answer = client.get("/")
    assert answer.status_code == 200 and b"comfy-farm[frontend]" in answer.data
    assert client.get("/api/extensions").get_json() == []


# the user folder -----------------------------------------------------------------------------------
def test_user_files_round_trip_with_comfyuis_answers(client):
    assert client.get("/api/users").get_json() == {"storage": "server", "migrated": True}
    saved = client.post("/api/userdata/workflows%2Fportrait.json?overwrite=false&full_info=true", data=b'{"a": 1}')
    assert saved.status_code == 200 and saved.get_json()["path"] == "workflows/portrait.json"
    assert saved.get_json()["size"] == 8
    again = client.post("/api/userdata/workflows%2Fportrait.json?overwrite=false", data=b"{}")
    assert again.status_code == 409
    assert client.post("/api/userdata/workflows%2Fportrait.json", data=b'{"a": 2}').get_json() == \
        "workflows/portrait.json"
    read = client.get("/api/userdata/workflows%2Fportrait.json")
    assert read.data == b'{"a": 2}' and read.mimetype == "application/json"
    client.post("/api/userdata/workflows%2Fdeep%2Fx.json", data=b"1")
    client.post("/api/userdata/notes.txt", data=b"<script>")
    assert client.get("/api/userdata?dir=workflows").get_json() == ["portrait.json"]
    assert client.get("/api/userdata?dir=workflows&recurse=true").get_json() == ["deep/x.json", "portrait.json"]
    assert client.get("/api/userdata?dir=workflows&recurse=true&split=true").get_json() == [
        ["deep/x.json", "deep", "x.json"], ["portrait.json", "portrait.json"]]
    assert client.get("/api/userdata?dir=nothing-yet").get_json() == []
    assert client.get("/api/userdata").status_code == 400
    assert [(entry["name"], entry["type"]) for entry in client.get("/api/v2/userdata?path=workflows").get_json()] == [
        ("deep", "directory"), ("portrait.json", "file")]
    assert client.get("/api/v2/userdata?path=missing").status_code == 404
    assert client.get("/api/v2/userdata?path=notes.txt").status_code == 400
    download = client.get("/api/userdata/notes.txt")  # never rendered as a page
    assert download.mimetype == "application/octet-stream" and download.headers["Content-Disposition"] == "attachment"
    moved = client.post("/api/userdata/workflows%2Fportrait.json/move/workflows%2Fhero.json?full_info=true")
    assert moved.get_json()["path"] == "workflows/hero.json"
    assert client.get("/api/userdata/workflows%2Fportrait.json").status_code == 404
    assert client.post("/api/userdata/notes.txt/move/workflows%2Fhero.json").status_code == 409
    assert client.delete("/api/userdata/workflows%2Fhero.json").status_code == 204
    assert client.delete("/api/userdata/workflows%2Fhero.json").status_code == 404
    assert client.get("/api/userdata/user.css").mimetype == "text/css"  # none saved: an empty stylesheet


@pytest.mark.parametrize("path", ["..%2Fsecrets.json", "a%2F..%2F..%2Fb.json", "..%5C..%5Cb.json"])
def test_user_paths_cannot_leave_the_folder(client, path):
    assert client.post(f"/api/userdata/{path}", data=b"x").status_code == 403
    assert client.get(f"/api/userdata/{path}").status_code == 403


def test_absolute_and_empty_user_paths_are_refused():
    from farm.services.userdata import UserDataError, clean_path

    for path, status in (("/etc/passwd", 403), ("", 400), ("a\x00b", 400), ("x" * 2000, 400)):
        with pytest.raises(UserDataError) as refused:
            clean_path(path)
        assert refused.value.status == status
    assert clean_path("a//b/./c.json") == "a/b/c.json"


def test_settings_merge_and_read_one_by_one(client):
    assert client.get("/api/settings").get_json() == {}
    assert client.post("/api/settings", data=json.dumps({"Comfy.A": 1, "Comfy.B": "x"})).status_code == 200
    assert client.post("/api/settings/Comfy.B", data=json.dumps({"deep": [1]})).status_code == 200
    assert client.get("/api/settings").get_json() == {"Comfy.A": 1, "Comfy.B": {"deep": [1]}}
    assert client.get("/api/settings/Comfy.A").get_json() == 1
    assert client.get("/api/settings/Comfy.Missing").get_json() is None
    # the settings are the user folder's comfy.settings.json, as in ComfyUI
    assert json.loads(client.get("/api/userdata/comfy.settings.json").data)["Comfy.A"] == 1
    assert client.post("/api/settings", data="[1]").status_code == 400
    assert client.post("/api/settings", data="{not json").status_code == 400


def test_each_team_has_its_own_user_folder(farm):  # noqa: F811
    client, _, keys = farm
    client.post("/api/settings/Comfy.ColorPalette", data='"dark"', headers=bearer(keys["a"]))
    client.post("/api/userdata/workflows%2Fa.json", data=b"{}", headers=bearer(keys["a"]))
    assert client.get("/api/settings", headers=bearer(keys["b"])).get_json() == {}
    assert client.get("/api/userdata?dir=workflows", headers=bearer(keys["b"])).get_json() == []
    assert client.get("/api/userdata/workflows%2Fa.json", headers=bearer(keys["b"])).status_code == 404
    assert client.get("/api/settings", headers=bearer(keys["a_operator"])).get_json() == {"Comfy.ColorPalette": "dark"}
    assert client.get("/api/settings").status_code == 401  # no key, no session


# the session the editor acts with --------------------------------------------------------------------
def test_a_signed_in_session_drives_the_api_from_the_farms_own_pages_only(farm):  # noqa: F811
    client, _, keys = farm
    if frontend.frontend_root() is not None:
        assert "/dashboard/login" in client.get("/").headers["Location"]  # the editor needs a sign-in
    signed_in = client.post("/dashboard/login", data={"key": keys["a"], "next": "/"})
    assert signed_in.status_code == 303 and signed_in.headers["Location"] == "/"
    assert client.get("/api/settings").status_code == 200  # reads ride on the (SameSite=Lax) cookie
    own = {"Origin": "http://localhost"}
    assert client.post("/api/settings/Comfy.X", data="1", headers=own).status_code == 200
    assert client.get("/api/settings", headers=bearer(keys["a"])).get_json() == {"Comfy.X": 1}
    # a change from another site's page, or with no Origin at all, does not count the cookie (on a
    # loopback address ComfyUI's origin check refuses the foreign page even before that)
    evil = {"Origin": "http://evil.example"}
    assert client.post("/api/settings/Comfy.X", data="2", headers=evil).status_code == 403
    assert client.post("/api/settings/Comfy.X", data="2").status_code == 401
    lan = "http://10.0.0.5:8188"
    client.post("/dashboard/login", data={"key": keys["a"]}, base_url=lan)
    assert client.get("/api/settings", base_url=lan).status_code == 200
    assert client.post("/api/settings/Comfy.X", data="2", headers=evil, base_url=lan).status_code == 401
    assert client.post("/prompt", data=json.dumps({"prompt": {}}), headers=evil, base_url=lan).status_code == 401
    assert client.post("/api/settings/Comfy.X", data="3", headers={"Origin": lan}, base_url=lan).status_code == 200


def test_the_editors_extras_answer(client):
    assert client.get("/api/i18n").get_json() == {}
    assert client.get("/api/workflow_templates").get_json() == {}
    assert client.get("/api/global_subgraphs").get_json() == {}
    folders = client.get("/api/experiment/models").get_json()
    assert "checkpoints" in [entry["name"] for entry in folders]
    assert "configs" not in [entry["name"] for entry in folders]
    assert client.get("/api/experiment/models/checkpoints").get_json() == []
    assert client.get("/api/experiment/models/nope").status_code == 404
    assert "checkpoints" in client.get("/internal/folder_paths").get_json()
    assert client.get("/internal/files/input").get_json() == []
    assert client.get("/internal/files/models").status_code == 400
