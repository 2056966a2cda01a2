"""Teams, API keys and isolation: who may do what, and what one team can learn of another's work."""

from __future__ import annotations

import base64
import json

import pytest
from sqlalchemy import select, update

from farm.config import load_settings
from farm.db.models import ApiKey, AuditEntry, Prompt, PromptState, Worker
from farm.services import teams
from farm.services.principal import LOCAL, Principal
from tests.workflows import invert_workflow


@pytest.fixture
def auth_settings(settings):
    return settings.with_overrides(auth="on")


@pytest.fixture
def farm(auth_settings, sender):
    """An auth-on app with teams a and b: a submit key each, an operator and an admin key."""
    from farm.services.context import make_context
    from tests.conftest import RecordingControl
    from web import create_app

    context = make_context(auth_settings, sender=sender)
    context.control = RecordingControl()
    database = context.database
    for name in ("a", "b"):
        teams.create_team(database, name, teams.TeamLimits(), LOCAL)
    keys = {
        "a": teams.create_key(database, "a", "submit", "artist a", LOCAL)[0],
        "b": teams.create_key(database, "b", "submit", "artist b", LOCAL)[0],
        "a_operator": teams.create_key(database, "a", "operator", "lead a", LOCAL)[0],
        "admin": teams.create_key(database, "default", "admin", "ops", LOCAL)[0],
    }
    app = create_app(auth_settings, context=context)
    yield app.test_client(), context, keys
    database.dispose()


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def submit(client, key: str, **extra) -> str:
    answer = client.post("/prompt", data=json.dumps({"prompt": invert_workflow(), **extra}), headers=bearer(key))
    assert answer.status_code == 200, answer.get_json()
    return answer.get_json()["prompt_id"]


def finish_with_output(context, prompt_id: str, team: str, filename: str = "secret.png") -> None:
    """Record `prompt_id` as done with one image in its team's output folder."""
    storage = context.storage.for_team(team)
    (storage.root("output") / filename).write_bytes(b"\x89PNG team " + team.encode())
    outputs = {"3": {"images": [{"filename": filename, "subfolder": "", "type": "output"}]}}
    with context.database.write() as session:
        session.execute(update(Prompt).where(Prompt.prompt_id == prompt_id).values(
            state=PromptState.SUCCESS.value, outputs=outputs, messages=[], finished_at=Prompt.created_at))


# the mode ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(("host", "mode", "enabled"), [
    ("127.0.0.1", "auto", False), ("::1", "auto", False), ("localhost", "auto", False),
    ("0.0.0.0", "auto", True), ("192.168.1.20", "auto", True), ("farm.studio.lan", "auto", True),
    ("127.0.0.1", "on", True), ("0.0.0.0", "off", False),
])
def test_auth_auto_is_off_on_loopback_only(host, mode, enabled):
    assert load_settings(env={"FARM_HOST": host, "FARM_AUTH": mode}).auth_enabled is enabled


def test_an_unknown_auth_mode_is_refused_at_start():
    with pytest.raises(ValueError, match="FARM_AUTH"):
        load_settings(env={"FARM_AUTH": "maybe"})


# keys -------------------------------------------------------------------------------------------
def test_only_a_hash_of_a_key_is_stored_and_a_revoked_key_stops_working(context):
    teams.create_team(context.database, "a", teams.TeamLimits(), LOCAL)
    secret, key = teams.create_key(context.database, "a", "submit", "ci", LOCAL)
    assert secret.startswith("cfk_") and len(secret) >= 40 and key["prefix"] == secret[:12]
    with context.database.reading() as session:
        stored = session.execute(select(ApiKey)).scalar_one()
    assert secret not in (stored.secret_hash, stored.prefix, stored.label)
    ring = teams.KeyRing(context.database, ttl=0)
    assert ring.principal(secret) == Principal("a", "submit", key["prefix"])
    assert ring.principal(secret + "x") is None
    teams.revoke_key(context.database, key["prefix"], LOCAL)
    assert ring.principal(secret) is None
    assert [k["id"] for k in teams.list_keys(context.database)] == []
    assert teams.list_keys(context.database, include_revoked=True)[0]["revoked_at"] is not None


def test_team_and_key_requests_that_cannot_be_done_say_why(context):
    teams.create_team(context.database, "a", teams.TeamLimits(), LOCAL)
    with pytest.raises(teams.TeamError, match="exists"):
        teams.create_team(context.database, "a", teams.TeamLimits(), LOCAL)
    with pytest.raises(teams.TeamError, match="lowercase"):
        teams.create_team(context.database, "../etc", teams.TeamLimits(), LOCAL)
    with pytest.raises(teams.TeamError, match="share"):
        teams.create_team(context.database, "c", teams.TeamLimits(share=-1), LOCAL)
    with pytest.raises(teams.TeamError, match="no team"):
        teams.create_key(context.database, "nope", "submit", "", LOCAL)
    with pytest.raises(teams.TeamError, match="role"):
        teams.create_key(context.database, "a", "root", "", LOCAL)


@pytest.mark.parametrize("how", ["bearer", "x-api-key", "basic"])
def test_a_key_is_read_from_bearer_x_api_key_or_basic_auth(farm, how):
    client, _, keys = farm
    headers = {"bearer": bearer(keys["a"]), "x-api-key": {"X-API-Key": keys["a"]},
               "basic": {"Authorization": "Basic " + base64.b64encode(f"anyone:{keys['a']}".encode()).decode()}}[how]
    answer = client.get("/api/me", headers=headers)
    assert answer.status_code == 200 and answer.get_json()["team"] == "a"


def test_without_a_valid_key_every_route_answers_401_in_the_error_shape(farm):
    client, _, keys = farm
    for path in ("/prompt", "/queue", "/history", "/object_info", "/view?filename=x.png", "/api/jobs"):
        answer = client.get(path)
        assert answer.status_code == 401, path
        assert answer.get_json()["error"]["type"] == "unauthorized"
        assert "Bearer" in answer.headers["WWW-Authenticate"]
    assert client.get("/queue", headers=bearer(keys["a"] + "x")).status_code == 401
    # A query token counts on the WebSocket only (elsewhere it would end up in access logs).
    assert client.get(f"/queue?token={keys['a']}").status_code == 401


def test_with_auth_off_no_key_is_needed_but_a_wrong_one_is_refused(client, context):
    assert client.get("/queue").status_code == 200
    assert client.get("/api/me").get_json() == {"team": "default", "role": "admin", "actor": "local", "auth": False}
    assert client.get("/queue", headers=bearer("cfk_wrong")).status_code == 401


# isolation --------------------------------------------------------------------------------------
def test_another_teams_queue_history_and_jobs_are_invisible(farm):
    client, context, keys = farm
    queued = submit(client, keys["a"])
    done = submit(client, keys["a"])
    finish_with_output(context, done, "a")
    b = bearer(keys["b"])
    assert client.get("/queue", headers=b).get_json() == {"queue_running": [], "queue_pending": []}
    assert client.get("/history", headers=b).get_json() == {}
    assert client.get(f"/history/{done}", headers=b).get_json() == {}
    assert client.get("/api/jobs", headers=b).get_json()["jobs"] == []
    assert client.get(f"/api/jobs/{queued}", headers=b).status_code == 404
    # Team a sees its own; the admin sees everyone's.
    a = bearer(keys["a"])
    assert [item[1] for item in client.get("/queue", headers=a).get_json()["queue_pending"]] == [queued]
    assert list(client.get("/history", headers=a).get_json()) == [done]
    assert {item[1] for item in client.get("/queue", headers=bearer(keys["admin"])).get_json()["queue_pending"]} \
        == {queued}
    assert list(client.get(f"/history/{done}", headers=bearer(keys["admin"])).get_json()) == [done]


def test_another_team_cannot_cancel_interrupt_or_delete(farm):
    client, context, keys = farm
    queued, done = submit(client, keys["a"]), submit(client, keys["a"])
    finish_with_output(context, done, "a")
    with context.database.write() as session:
        session.add(Worker(name="w1", session="s", queue="q", host="h", pid=1, device_name="cpu", device_type="cpu",
                           version="0", started_at=_now(),
                           last_seen=_now()))
    b = bearer(keys["b"])
    assert client.post("/queue", data=json.dumps({"delete": [queued]}), headers=b).status_code == 200
    assert client.post("/queue", data=json.dumps({"clear": True}), headers=b).status_code == 200
    assert client.post(f"/api/jobs/{queued}/cancel", headers=b).get_json() == {"cancelled": False}
    assert client.post("/history", data=json.dumps({"clear": True}), headers=b).status_code == 200
    assert client.post("/history", data=json.dumps({"delete": [done]}), headers=b).status_code == 200
    with context.database.write() as session:
        session.execute(update(Prompt).where(Prompt.prompt_id == queued).values(
            state=PromptState.RUNNING.value, worker="w1"))
    client.post("/interrupt", data=json.dumps({"prompt_id": queued}), headers=b)
    client.post("/interrupt", data="{}", headers=b)
    assert context.control.interrupted == []
    with context.database.reading() as session:
        states = dict(session.execute(select(Prompt.prompt_id, Prompt.state)).all())
    assert states == {queued: "running", done: "success"}
    # Its own team can.
    client.post("/interrupt", data=json.dumps({"prompt_id": queued}), headers=bearer(keys["a"]))
    assert context.control.interrupted == [(queued, "w1")]


def _now():
    import datetime as dt

    return dt.datetime.now(dt.timezone.utc)


def test_another_teams_outputs_and_uploads_are_not_found(farm):
    client, context, keys = farm
    done = submit(client, keys["a"])
    finish_with_output(context, done, "a", "portrait.png")
    a, b = bearer(keys["a"]), bearer(keys["b"])
    assert client.get("/view?filename=portrait.png", headers=a).status_code == 200
    assert client.get("/view?filename=portrait.png", headers=b).status_code == 404
    assert client.get("/view?filename=portrait.png&team=a", headers=b).status_code == 404
    assert client.get("/view?filename=../teams/a/output/portrait.png", headers=b).status_code == 400
    assert client.get("/view?filename=portrait.png&subfolder=../../teams/a/output", headers=b).status_code == 403
    assert client.get("/view?filename=portrait.png&team=a", headers=bearer(keys["admin"])).status_code == 200
    # Uploads land in the team's input folder: only that team lists and loads them.
    png = _png()
    answer = client.post("/upload/image", data={"image": (png, "ref.png")}, headers=a,
                         content_type="multipart/form-data")
    assert answer.status_code == 200, answer.get_json()

    def load_image_choices(headers):
        info = client.get("/object_info/LoadImage", headers=headers).get_json()
        return info["LoadImage"]["input"]["required"]["image"][0]

    assert "ref.png" in load_image_choices(a)
    assert "ref.png" not in load_image_choices(b)
    workflow = {"1": {"class_type": "LoadImage", "inputs": {"image": "ref.png"}},
                "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}}}
    assert client.post("/prompt", data=json.dumps({"prompt": workflow}), headers=b).status_code == 400
    assert client.post("/prompt", data=json.dumps({"prompt": workflow}), headers=a).status_code == 200


def _png():
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), "red").save(buffer, format="PNG")
    buffer.seek(0)
    return buffer


def test_a_prompt_id_of_another_team_is_a_conflict_that_tells_nothing(farm):
    client, _, keys = farm
    body = {"prompt": invert_workflow(), "prompt_id": "8b3a6f5e-0d7c-4a57-9b52-3c1d2f0e9a11"}
    assert client.post("/prompt", data=json.dumps(body), headers=bearer(keys["a"])).status_code == 200
    answer = client.post("/prompt", data=json.dumps(body), headers=bearer(keys["b"]))
    assert answer.status_code == 400 and answer.get_json()["error"]["type"] == "prompt_id_conflict"


def test_front_and_farm_actions_need_their_roles(farm):
    client, context, keys = farm
    answer = client.post("/prompt", data=json.dumps({"prompt": invert_workflow(), "front": True}),
                         headers=bearer(keys["a"]))
    assert answer.status_code == 403 and answer.get_json()["error"]["type"] == "forbidden"
    assert client.post("/prompt", data=json.dumps({"prompt": invert_workflow(), "front": True}),
                       headers=bearer(keys["a_operator"])).status_code == 200
    for key in ("a", "a_operator"):
        assert client.get("/api/workers", headers=bearer(keys[key])).status_code == 403
        assert client.post("/api/dispatch/pause", headers=bearer(keys[key])).status_code == 403
        assert client.post("/free", data="{}", headers=bearer(keys[key])).status_code == 403
        assert client.get("/api/audit", headers=bearer(keys[key])).status_code == 403
        assert client.post("/api/teams", data=json.dumps({"name": "x"}), headers=bearer(keys[key])).status_code == 403
        assert client.get("/api/keys", headers=bearer(keys[key])).status_code == 403
    assert client.get("/api/workers", headers=bearer(keys["admin"])).status_code == 200


def test_admins_manage_teams_and_keys_over_http_and_every_change_is_audited(farm):
    client, context, keys = farm
    admin = bearer(keys["admin"])
    created = client.post("/api/teams", data=json.dumps({"name": "comp", "share": 4, "burst": 8}), headers=admin)
    assert created.status_code == 201 and created.get_json()["burst"] == 8
    assert client.patch("/api/teams/comp", data=json.dumps({"max_queued": 500}), headers=admin).get_json()[
        "max_queued"] == 500
    assert client.patch("/api/teams/comp", data=json.dumps({"share": "lots"}), headers=admin).status_code == 400
    key = client.post("/api/keys", data=json.dumps({"team": "comp", "role": "submit"}), headers=admin).get_json()
    assert client.get("/api/me", headers=bearer(key["key"])).get_json()["team"] == "comp"
    assert "key" not in client.get("/api/keys", headers=admin).get_json()["keys"][0]
    assert client.post(f"/api/keys/{key['id']}/revoke", headers=admin).status_code == 200
    # Visible to every team: only their own.
    assert [t["name"] for t in client.get("/api/teams", headers=bearer(keys["b"])).get_json()["teams"]] == ["b"]
    with context.database.write() as session:
        session.add(Worker(name="w1", session="s", queue="q", host="h", pid=1, device_name="cpu", device_type="cpu",
                           version="0", started_at=_now(), last_seen=_now()))
    assert client.post("/api/workers/w1/drain", headers=admin).status_code == 200
    assert client.post("/api/dispatch/pause", headers=admin).status_code == 200
    log = client.get("/api/audit?limit=3", headers=admin).get_json()
    assert [entry["action"] for entry in log["entries"]] == ["dispatch.pause", "worker.drain", "key.revoke"]
    assert log["entries"][1]["actor"] == keys["admin"][:12] and log["entries"][1]["target"] == "worker:w1"
    assert log["next"] is not None
    older = client.get(f"/api/audit?before={log['next']}&limit=100", headers=admin).get_json()
    assert [entry["action"] for entry in older["entries"]][:3] == ["key.create", "team.update", "team.create"]
    with context.database.reading() as session:
        assert session.scalar(select(AuditEntry.id).where(AuditEntry.action == "key.create").limit(1)) is not None


# the WebSocket's routing ------------------------------------------------------------------------
def test_a_prompts_events_reach_its_team_only_whatever_a_socket_subscribed_to():
    import threading

    from farm.events import decode_events, encode_event
    from web.relay import Relay

    relay = Relay(None)
    wake = threading.Event()
    own = relay.new_client("sid-a", wake, team="a")
    spy = relay.new_client("x", wake, team="b", prompts={"p1"}, everything=True)
    admin = relay.new_client("ops", wake, team=None, everything=True)
    for client in (own, spy, admin):
        relay.attach(client)

    def play(client_id):
        for name in ("executing", "progress"):
            for event in decode_events(encode_event(name, {"node": "3", "prompt_id": "p1"}, "p1", client_id, "a")):
                relay.dispatch(event)

    def frames(client) -> int:
        count = 0
        while client.outbox.pop() is not None:
            count += 1
        return count

    play("sid-a")
    assert (frames(own), frames(spy), frames(admin)) == (2, 0, 2)
    play(None)  # no client: progress goes to every socket, of the team
    assert (frames(own), frames(spy), frames(admin)) == (1, 0, 2)
    guess = relay.new_client("sid-a", wake, team="b")  # a socket naming itself with team a's client id
    relay.attach(guess)
    play("sid-a")
    assert (frames(guess), frames(own)) == (0, 2)  # nor does it take the owner's place


# the CLI ----------------------------------------------------------------------------------------
def test_the_cli_creates_teams_and_keys_on_the_database(monkeypatch, database_url, tmp_path, capsys):
    from farm.cli import main

    monkeypatch.setenv("FARM_DATABASE_URL", database_url)
    monkeypatch.setenv("FARM_DATA_DIR", str(tmp_path / "data"))
    assert main(["teams", "create", "lighting", "--share", "2", "--burst", "4"]) == 0
    assert main(["teams", "set", "lighting", "--burst", "none", "--max-queued", "100"]) == 0
    assert main(["teams", "ls"]) == 0
    listing = capsys.readouterr().out
    assert "lighting" in listing and "100" in listing
    assert main(["keys", "create", "--team", "lighting", "--role", "operator", "--label", "lead"]) == 0
    captured = capsys.readouterr()
    secret = captured.out.strip()
    assert secret.startswith("cfk_") and "shown only now" in captured.err
    assert main(["keys", "ls"]) == 0
    assert secret[:12] in capsys.readouterr().out and secret not in capsys.readouterr().out
    assert main(["keys", "revoke", secret[:12]]) == 0
    assert main(["keys", "create", "--team", "nope"]) == 1
    assert "no team 'nope'" in capsys.readouterr().err
    from farm.db import make_database

    database = make_database(database_url)
    try:
        assert teams.list_teams(database)[1]["burst"] is None
        assert teams.list_keys(database) == []
        with database.reading() as session:
            actors = set(session.scalars(select(AuditEntry.actor)))
        assert all(actor.startswith("cli:") for actor in actors)
    finally:
        database.dispose()


def test_a_plain_comfyui_client_works_with_its_key_as_basic_auth(farm):
    """A client that only knows user/password (ComfyUI's own frontend behind a proxy, scripts
    using requests' auth=(user, password)) drives the whole API with the key as the password."""
    client, context, keys = farm
    basic = {"Authorization": "Basic " + base64.b64encode(f"artist:{keys['a']}".encode()).decode()}
    answer = client.post("/prompt", data=json.dumps({"prompt": invert_workflow(), "client_id": "c1"}), headers=basic)
    assert answer.status_code == 200
    prompt_id = answer.get_json()["prompt_id"]
    assert [item[1] for item in client.get("/queue", headers=basic).get_json()["queue_pending"]] == [prompt_id]
    assert client.get("/prompt", headers=basic).get_json()["exec_info"]["queue_remaining"] == 1
    assert "SaveImage" in client.get("/object_info", headers=basic).get_json()
    finish_with_output(context, prompt_id, "a", "mine.png")
    entry = client.get(f"/history/{prompt_id}", headers=basic).get_json()[prompt_id]
    image = entry["outputs"]["3"]["images"][0]
    assert client.get(f"/view?filename={image['filename']}&type=output", headers=basic).status_code == 200
    assert client.get("/system_stats", headers=basic).status_code == 200


def test_cancels_interrupts_and_deletions_are_audited(farm):
    client, context, keys = farm
    a = bearer(keys["a"])
    queued, other = submit(client, keys["a"]), submit(client, keys["a"])
    client.post("/queue", data=json.dumps({"delete": [queued]}), headers=a)
    client.post(f"/api/jobs/{other}/cancel", headers=a)
    client.post("/queue", data=json.dumps({"clear": True}), headers=a)  # nothing left: nothing recorded
    client.post("/history", data=json.dumps({"delete": [queued]}), headers=a)
    log = client.get("/api/audit", headers=bearer(keys["admin"])).get_json()["entries"]
    mine = [(entry["action"], entry["actor"]) for entry in log if entry["actor_team"] == "a"]
    assert mine == [("history.delete", keys["a"][:12]), ("prompt.cancel", keys["a"][:12]),
                    ("queue.delete", keys["a"][:12])]
