"""The dashboard's pages and actions through the Flask app: open with auth off, sign-in with a key
(a cookie holding its hash, never the key) with auth on, CSRF on every form, roles from the
services, and each team seeing its own."""

from __future__ import annotations

import json
import re

import pytest

from farm.services import teams, workers
from farm.services.principal import LOCAL
from tests.workflows import invert_workflow


def csrf(page: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', page).group(1)


def make_batch(client, headers=None, name="turntable", cells=3) -> str:
    answer = client.post("/api/batches", headers=headers or {}, data=json.dumps({
        "workflow": invert_workflow(), "name": name, "sweep": {"1.width": {"range": [8, 8 + cells - 1]}}}))
    assert answer.status_code == 201, answer.get_json()
    return answer.get_json()["batch_id"]


def register(context, name="w1"):
    workers.register(context.database, workers.WorkerInfo(
        name=name, session=f"s-{name}", queue="q", host="h", pid=1, gpu_index=None, device_name="cpu",
        device_type="cpu", version="t"), context.settings)


def test_with_auth_off_every_page_renders_and_acts(client, context):
    register(context)
    batch_id = make_batch(client)
    overview = client.get("/dashboard/")
    assert overview.status_code == 200
    page = overview.get_data(as_text=True)
    # The idle worker took the first cell as the batch came in.
    assert 'id="team-default"' in page and 'class="queued">2<' in page and 'class="running">1<' in page
    assert 'id="workers-busy">1<' in page
    workers_page = client.get("/dashboard/workers").get_data(as_text=True)
    assert 'id="worker-w1"' in workers_page and "dispatch running" in workers_page
    listing = client.get("/dashboard/batches").get_data(as_text=True)
    assert f'id="batch-{batch_id}"' in listing and "turntable" in listing
    detail = client.get(f"/dashboard/batches/{batch_id}").get_data(as_text=True)
    assert 'id="cell-2"' in detail and "1.width=10" in detail and f"/dashboard/batches/{batch_id}/sheet.png" in detail
    token = csrf(listing)
    answer = client.post("/dashboard/batches/actions", data={"csrf": token, "ids": [batch_id], "action": "pause"})
    assert answer.status_code == 303
    assert client.get(f"/api/batches/{batch_id}").get_json()["state"] == "paused"
    assert client.post("/dashboard/workers/w1/drain", data={"csrf": token}).status_code == 303
    assert client.get("/api/workers/w1").get_json()["state"] in ("draining", "busy")
    with context.database.reading() as session:
        from farm.db.models import Worker

        assert session.get(Worker, "w1").draining
    assert client.post("/dashboard/dispatch/pause", data={"csrf": token}).status_code == 303
    assert client.get("/api/dispatch").get_json() == {"paused": True}


def test_every_form_needs_the_sessions_csrf_token(client, context):
    batch_id = make_batch(client)
    for form in ({}, {"csrf": "forged"}):
        answer = client.post("/dashboard/batches/actions", data={**form, "ids": [batch_id], "action": "cancel"})
        assert answer.status_code == 400
    assert client.get(f"/api/batches/{batch_id}").get_json()["state"] == "queued"


@pytest.fixture
def secured(settings, sender):
    from farm.services.context import make_context
    from web import create_app

    context = make_context(settings.with_overrides(auth="on"), sender=sender)
    for name in ("a", "b"):
        teams.create_team(context.database, name, teams.TeamLimits(), LOCAL)
    keys = {"a": teams.create_key(context.database, "a", "submit", "", LOCAL)[0],
            "b": teams.create_key(context.database, "b", "submit", "", LOCAL)[0],
            "admin": teams.create_key(context.database, "default", "admin", "", LOCAL)[0]}
    app = create_app(context.settings, context=context)
    yield app, context, keys
    context.database.dispose()


def sign_in(app, key: str):
    client = app.test_client()
    answer = client.post("/dashboard/login", data={"key": key, "next": "/dashboard/batches"})
    assert answer.status_code == 303 and answer.headers["Location"].endswith("/dashboard/batches")
    cookie = answer.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and key not in cookie
    return client


def test_with_auth_on_pages_need_a_sign_in_and_show_a_teams_own(secured):
    app, context, keys = secured
    anonymous = app.test_client()
    answer = anonymous.get("/dashboard/batches")
    assert answer.status_code == 302 and "/dashboard/login" in answer.headers["Location"]
    assert anonymous.post("/dashboard/login", data={"key": "cfk_wrong"}).status_code == 401
    mine = make_batch(anonymous, {"Authorization": f"Bearer {keys['a']}"}, name="a-shots")
    theirs = make_batch(anonymous, {"Authorization": f"Bearer {keys['b']}"}, name="b-shots")
    a = sign_in(app, keys["a"])
    listing = a.get("/dashboard/batches").get_data(as_text=True)
    assert "a-shots" in listing and "b-shots" not in listing
    assert a.get(f"/dashboard/batches/{theirs}").status_code == 404
    assert a.get("/dashboard/workers").status_code == 403  # admins only, said by the service
    # Acting on the other team's batch through the form: refused, nothing changes.
    token = csrf(listing)
    assert a.post("/dashboard/batches/actions", data={"csrf": token, "ids": [theirs], "action": "cancel"}
                  ).status_code == 404
    assert anonymous.get(f"/api/batches/{theirs}", headers={"Authorization": f"Bearer {keys['b']}"}
                         ).get_json()["state"] == "queued"
    # The cookie opens the API to the browser too (ComfyUI's editor at / uses it): reads, and
    # changes that come with this farm's own Origin; a change without one still wants a key.
    assert a.get("/queue").status_code == 200
    assert a.post("/queue", data='{"clear": true}').status_code == 401
    overview = a.get("/dashboard/").get_data(as_text=True)
    assert 'id="team-a"' in overview and 'id="team-b"' not in overview and "workers-idle" not in overview
    admin = sign_in(app, keys["admin"])
    assert "b-shots" in admin.get("/dashboard/batches").get_data(as_text=True)
    assert admin.get("/dashboard/workers").status_code == 200
    a.post("/dashboard/logout", data={"csrf": csrf(a.get("/dashboard/").get_data(as_text=True))})
    assert a.get("/dashboard/batches").status_code == 302
    assert mine


def test_the_dashboards_socket_takes_its_cookie_only_from_the_farms_own_pages(secured):
    app, context, keys = secured
    lan = "http://farm.studio.lan"  # not loopback: ComfyUI's origin check is off, ours is what guards
    a = app.test_client()
    answer = a.post("/dashboard/login", data={"key": keys["a"]}, base_url=lan)
    assert answer.status_code == 303
    # The handshake is a GET on /ws: a cross-site page carrying the cookie gets a 401.
    assert a.get("/ws?clientId=x", headers={"Origin": "http://evil.example"}, base_url=lan).status_code == 401
    assert a.get("/ws?clientId=x", base_url=lan).status_code == 401  # no Origin: not a page of ours either
    same = a.get("/ws?clientId=x", headers={"Origin": lan}, base_url=lan)
    assert same.status_code != 401  # past auth (the test client cannot upgrade the connection)


def test_a_failed_prompts_page_shows_each_nodes_state_and_the_failing_node(client, context):
    from sqlalchemy import update

    from farm.db.models import Prompt

    prompt_id = client.post("/prompt", data=json.dumps({"prompt": invert_workflow()})).get_json()["prompt_id"]
    error = {"prompt_id": prompt_id, "node_id": "2", "node_type": "ImageInvert", "executed": ["1"],
             "exception_message": "pixels went sideways\n", "exception_type": "ValueError",
             "traceback": ["  File \"nodes.py\", line 3, in run\n"], "current_inputs": {}, "current_outputs": []}
    with context.database.write() as session:
        session.execute(update(Prompt).where(Prompt.prompt_id == prompt_id).values(
            state="error", execution_error=error, worker="w1", attempt=1, started_at=Prompt.created_at,
            finished_at=Prompt.created_at, messages=[["execution_start", {}], ["execution_cached", {"nodes": []}],
                                                     ["execution_error", error]], outputs={}))
    page = client.get(f"/dashboard/prompts/{prompt_id}").get_data(as_text=True)
    assert "ValueError in node 2 (ImageInvert)" in page and "pixels went sideways" in page
    assert re.search(r'id="node-1".*?node-ran', page, re.S) and re.search(r'id="node-2" class="failed"', page)
    assert re.search(r'id="node-3".*?node-not-reached', page, re.S)
    assert "nodes.py" in page  # the traceback
    assert client.get("/dashboard/prompts/nope").status_code == 404
    history = client.get("/dashboard/history?state=error").get_data(as_text=True)
    assert f'id="prompt-{prompt_id}"' in history and "ValueError" in history


def test_history_pages_by_cursor_newest_first(client, context):
    import datetime as dt

    from sqlalchemy import update

    from farm.db.models import Prompt

    ids = [client.post("/prompt", data=json.dumps({"prompt": invert_workflow(i)})).get_json()["prompt_id"]
           for i in range(5)]
    start = dt.datetime(2026, 12, 1, tzinfo=dt.timezone.utc)
    with context.database.write() as session:
        for index, prompt_id in enumerate(ids):
            session.execute(update(Prompt).where(Prompt.prompt_id == prompt_id).values(
                state="success", outputs={}, messages=[], finished_at=start + dt.timedelta(minutes=index)))
    from farm.services import prompt_views
    from farm.services.principal import LOCAL

    first = prompt_views.history(context.database, LOCAL, limit=2)
    assert [item["prompt_id"] for item in first["prompts"]] == [ids[4], ids[3]]
    second = prompt_views.history(context.database, LOCAL, limit=2, before=first["next"])
    assert [item["prompt_id"] for item in second["prompts"]] == [ids[2], ids[1]]
    last = prompt_views.history(context.database, LOCAL, limit=2, before=second["next"])
    assert [item["prompt_id"] for item in last["prompts"]] == [ids[0]] and last["next"] is None
    page = client.get("/dashboard/history").get_data(as_text=True)
    assert all(f'id="prompt-{prompt_id}"' in page for prompt_id in ids)


def test_images_in_pages_open_with_the_session_cookie(secured):
    app, context, keys = secured
    storage = context.storage.for_team("a")
    from PIL import Image

    Image.new("RGB", (8, 8), "red").save(storage.root("output") / "mine.png")
    a = sign_in(app, keys["a"])
    assert a.get("/dashboard/view?filename=mine.png&type=output").status_code == 200
    assert a.get("/view?filename=mine.png&type=output").status_code == 200  # as the editor shows it
    assert app.test_client().get("/view?filename=mine.png&type=output").status_code == 401  # no key, no cookie
    b = sign_in(app, keys["b"])
    assert b.get("/view?filename=mine.png&type=output").status_code == 404
    assert b.get("/dashboard/view?filename=mine.png&type=output&team=a").status_code == 404


def test_admins_manage_teams_and_keys_and_read_the_audit_log_in_the_dashboard(secured):
    app, context, keys = secured
    admin = sign_in(app, keys["admin"])
    page = admin.get("/dashboard/teams").get_data(as_text=True)
    token = csrf(page)
    assert 'id="team-a"' in page and "Audit log" in page
    assert admin.post("/dashboard/teams", data={"csrf": token, "name": "comp", "share": "3", "burst": "6"}
                      ).status_code == 303
    assert admin.post("/dashboard/teams/comp", data={"csrf": token, "share": "2", "burst": "", "max_queued": "900"}
                      ).status_code == 303
    made = admin.post("/dashboard/keys", data={"csrf": token, "team": "comp", "role": "operator", "label": "lead"})
    assert made.status_code == 200 and "cfk_" not in made.headers.get("Set-Cookie", "")  # never in a cookie
    secret = re.search(r"<code>(cfk_[^<]+)</code>", made.get_data(as_text=True)).group(1)
    assert app.test_client().get("/api/me", headers={"Authorization": f"Bearer {secret}"}).get_json() == {
        "team": "comp", "role": "operator", "actor": secret[:12], "auth": True}
    listed = teams.list_teams(context.database)
    comp = next(team for team in listed if team["name"] == "comp")
    assert (comp["share"], comp["burst"], comp["max_queued"]) == (2.0, None, 900)
    key_id = next(key["id"] for key in teams.list_keys(context.database) if key["team"] == "comp")
    assert admin.post(f"/dashboard/keys/{key_id}/revoke", data={"csrf": token}).status_code == 303
    log = admin.get("/dashboard/teams").get_data(as_text=True)
    assert "key.revoke" in log and "team.update" in log
    # Not for anyone else: the page, and the actions (checked by the services, not the page).
    a = sign_in(app, keys["a"])
    assert a.get("/dashboard/teams").status_code == 403
    token_a = csrf(a.get("/dashboard/").get_data(as_text=True))
    assert a.post("/dashboard/teams", data={"csrf": token_a, "name": "mine"}).status_code == 403
    assert a.post("/dashboard/keys", data={"csrf": token_a, "team": "a", "role": "admin"}).status_code == 403


def test_the_overview_charts_the_last_hour_from_the_farms_own_scripts(client, context):
    from sqlalchemy import update

    from farm.db.models import Prompt
    from farm.services import overview
    from farm.services.principal import LOCAL

    ids = [client.post("/prompt", data=json.dumps({"prompt": invert_workflow(i)})).get_json()["prompt_id"]
           for i in range(3)]
    with context.database.write() as session:
        session.execute(update(Prompt).where(Prompt.prompt_id.in_(ids)).values(
            state="success", outputs={}, messages=[], started_at=Prompt.created_at, finished_at=Prompt.created_at))
    series = overview.overview(context.database, context.settings, LOCAL)["series"]
    assert len(series["minutes"]) == 60 and sum(series["images"]) == 3 and series["images"][-1] == 3
    assert len(series["wait_at"]) == 12 and series["wait_p50"][-1] == 0.0
    page = client.get("/dashboard/").get_data(as_text=True)
    assert '<script type="application/json" id="series">' in page
    scripts = re.findall(r'<script src="([^"]+)"', page) + re.findall(r'<link rel="stylesheet" href="([^"]+)"', page)
    assert scripts and all(src.startswith("/dashboard/static/") for src in scripts)  # nothing from a CDN
    for src in scripts:
        assert client.get(src).status_code == 200, src


def test_vendored_javascript_is_pinned_with_its_licence():
    from pathlib import Path

    vendor = Path(__file__).resolve().parents[2] / "web" / "dashboard" / "static" / "vendor"
    pins = json.loads((vendor / "VERSIONS.json").read_text())
    for package, pin in pins.items():
        assert pin["version"] and pin["integrity"].startswith("sha512-") and pin["license"]
        for name in pin["files"]:
            assert (vendor / package / name).stat().st_size > 0
        assert "LICENSE" in pin["files"]


def test_a_running_prompts_latest_preview_is_served_to_its_team_only(secured):
    import base64

    from farm.events import decode_events, encode_event
    from farm.graph.progress import PREVIEW_EVENT

    app, context, keys = secured
    relay = app.extensions["farm_relay"]
    image = b"\xff\xd8\xff preview bytes"
    for step in (1, 2):
        data = {"image": base64.b64encode(image + bytes([step])).decode(), "image_type": "image/jpeg",
                "prompt_id": "p-a"}
        for event in decode_events(encode_event(PREVIEW_EVENT, data, "p-a", None, "a")):
            relay.dispatch(event)
    a = sign_in(app, keys["a"])
    answer = a.get("/dashboard/previews/p-a")
    assert answer.status_code == 200 and answer.mimetype == "image/jpeg" and answer.data == image + b"\x02"
    assert sign_in(app, keys["b"]).get("/dashboard/previews/p-a").status_code == 404
    assert a.get("/dashboard/previews/nothing").status_code == 404


def test_history_filters_by_time(client, context):
    import datetime as dt

    from sqlalchemy import update

    from farm.db.models import Prompt

    old, new = (client.post("/prompt", data=json.dumps({"prompt": invert_workflow(i)})).get_json()["prompt_id"]
                for i in range(2))
    now = dt.datetime.now(dt.timezone.utc)
    with context.database.write() as session:
        for prompt_id, when in ((old, now - dt.timedelta(days=3)), (new, now - dt.timedelta(minutes=5))):
            session.execute(update(Prompt).where(Prompt.prompt_id == prompt_id).values(
                state="success", outputs={}, messages=[], finished_at=when))
    last_hour = client.get("/dashboard/history?since=1h").get_data(as_text=True)
    assert f'id="prompt-{new}"' in last_hour and f'id="prompt-{old}"' not in last_hour
    week = client.get("/dashboard/history?since=7d").get_data(as_text=True)
    assert f'id="prompt-{old}"' in week
