"""Dispatch, claim, execution and history through the real services (SQL), without a broker.

The RecordingSender stands in for Celery delivery only; every database step is the real one.
"""

from __future__ import annotations

import datetime as dt
import io
import json

import pytest
from PIL import Image
from sqlalchemy import update

from farm.db.models import Prompt, PromptState, Worker
from farm.graph.executor import GraphExecutor
from farm.services import execution, reaping, workers
from tests.workflows import invert_workflow


def register(context, name="w1"):
    info = workers.WorkerInfo(name=name, session=f"s-{name}", queue=f"farm.gpu.{name}", host="h", pid=1,
                              gpu_index=None, device_name="cpu", device_type="cpu", version="test")
    workers.register(context.database, info, context.settings)
    return info


def submit(client, **body):
    response = client.post("/prompt", data=json.dumps({"prompt": invert_workflow(), **body}))
    assert response.status_code == 200, response.get_json()
    return response.get_json()["prompt_id"]


def take(sender):
    """The assignments sent since the last call (submissions dispatch at once in these tests)."""
    sent, sender.sent = list(sender.sent), []
    return sent


def run(context, assignment, worker="w1"):
    """What a worker does with one message: claim, execute, record."""
    claimed = execution.claim(context.database, assignment.prompt_id, assignment.attempt, worker)
    assert claimed is not None
    events = []
    result = GraphExecutor(context.registry, context.storage).execute(
        claimed.prompt_id, claimed.prompt, claimed.outputs_to_execute, claimed.extra_data,
        lambda event, data: events.append(event))
    state = {"success": PromptState.SUCCESS, "error": PromptState.ERROR}[result.status]
    assert execution.finish(context.database, claimed, worker, state, result.outputs, result.messages, result.error)
    return events


def test_dispatch_keeps_one_outstanding_prompt_per_worker_in_sql_order(client, context, sender):
    first, second, third = submit(client), submit(client), submit(client, front=True)
    assert take(sender) == []  # no worker yet: everything waits in SQL
    register(context, "w1")
    register(context, "w2")
    sent = context.dispatcher.dispatch()
    assert sorted(a.prompt_id for a in sent) == sorted([third, first])
    assert {a.worker for a in sent} == {"w1", "w2"}
    assert all(a.attempt == 1 for a in sent)
    assert [a.front for a in sent if a.prompt_id == third] == [True]
    assert context.dispatcher.dispatch() == [] and take(sender) == sent  # both workers busy
    queue = client.get("/queue").get_json()
    assert [item[1] for item in queue["queue_running"]] == [third, first]
    assert [item[1] for item in queue["queue_pending"]] == [second]
    busy = next(a for a in sent if a.prompt_id == first)
    run(context, busy, busy.worker)
    assert [a.prompt_id for a in context.dispatcher.dispatch()] == [second]


def test_history_entry_and_view_after_a_run(client, context, sender):
    register(context)
    prompt_id = submit(client, client_id="c1", extra_data={"extra_pnginfo": {"workflow": {"id": "wf"}}})
    assert client.get(f"/history/{prompt_id}").get_json() == {}
    (assignment,) = take(sender)
    events = run(context, assignment)
    assert events == ["execution_start", "execution_cached",
                      "progress_state", "executing", "progress_state", "progress_state", "executing", "progress_state",
                      "progress_state", "executing", "executed", "progress_state", "execution_success"]
    entry = client.get(f"/history/{prompt_id}").get_json()[prompt_id]
    image = {"filename": "ComfyUI_00001_.png", "subfolder": "", "type": "output"}
    assert entry["outputs"] == {"3": {"images": [image]}}
    assert entry["prompt"][1:] == [prompt_id, invert_workflow(), {"extra_pnginfo": {"workflow": {"id": "wf"}},
                                                                  "client_id": "c1"}, ["3"]]
    assert entry["status"]["status_str"] == "success" and entry["status"]["completed"] is True
    assert [m[0] for m in entry["status"]["messages"]] == ["execution_start", "execution_cached", "execution_success"]
    assert entry["meta"] == {"3": {"node_id": "3", "display_node": "3", "parent_node": None, "real_node_id": "3"}}

    response = client.get("/api/view", query_string=image)
    assert response.status_code == 200 and response.mimetype == "image/png"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    png = Image.open(io.BytesIO(response.data))
    assert png.getpixel((0, 0)) == (0, 255, 255)  # inverted red
    assert json.loads(png.text["prompt"]) == invert_workflow()
    assert json.loads(png.text["workflow"]) == {"id": "wf"}


def test_node_exception_is_recorded_as_execution_error(client, context, sender):
    register(context)
    prompt = invert_workflow(prefix="../outside")
    prompt_id = client.post("/prompt", data=json.dumps({"prompt": prompt})).get_json()["prompt_id"]
    (assignment,) = take(sender)
    run(context, assignment)
    entry = client.get(f"/history/{prompt_id}").get_json()[prompt_id]
    assert entry["status"]["status_str"] == "error" and entry["status"]["completed"] is False
    event, error = entry["status"]["messages"][-1]
    assert event == "execution_error"
    assert error["node_id"] == "3" and error["node_type"] == "SaveImage"
    assert error["executed"] == ["1", "2"]
    assert error["exception_type"] == "farm.storage.PathRejected"
    assert "outside the output folder" in error["exception_message"]
    assert error["traceback"] and error["current_inputs"]["filename_prefix"] == ["../outside"]


def test_stale_attempt_and_late_result_are_refused(client, context, sender):
    register(context)
    submit(client)
    (assignment,) = take(sender)
    assert execution.claim(context.database, assignment.prompt_id, assignment.attempt + 1, "w1") is None
    claimed = execution.claim(context.database, assignment.prompt_id, assignment.attempt, "w1")
    assert execution.claim(context.database, assignment.prompt_id, assignment.attempt, "w1") is None  # duplicate
    # The worker is presumed dead: the prompt goes back to the queue and is dispatched again.
    with context.database.write() as session:
        session.execute(update(Worker).values(last_seen=dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=1)))
    assert reaping.reap(context.database, context.settings).taken == 1
    register(context, "w2")
    context.dispatcher.dispatch()
    (again,) = take(sender)
    assert again.prompt_id == assignment.prompt_id and again.attempt == 2 and again.worker == "w2"
    assert not execution.finish(context.database, claimed, "w1", PromptState.SUCCESS, {}, [], None)
    run(context, again, "w2")


def test_retry_limit_turns_a_lost_prompt_into_an_error(client, context, sender):
    prompt_id = submit(client)
    for attempt in range(1, context.settings.max_attempts + 1):
        register(context)
        context.dispatcher.dispatch()
        (assignment,) = take(sender)
        assert assignment.attempt == attempt
        with context.database.write() as session:
            session.execute(update(Worker).values(last_seen=dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=1)))
        reaping.reap(context.database, context.settings)
    entry = client.get(f"/history/{prompt_id}").get_json()[prompt_id]
    assert entry["status"]["status_str"] == "error"
    assert entry["status"]["messages"][0][1]["exception_type"] == "WorkerLost"


def test_broker_down_leaves_the_prompt_queued(client, context, sender):
    register(context)
    sender.fail = True
    prompt_id = submit(client)
    with context.database.reading() as session:
        row = session.get(Prompt, prompt_id)
    assert (row.state, row.worker, row.attempt) == ("queued", None, 0)
    sender.fail = False
    (assignment,) = context.dispatcher.dispatch()
    assert assignment.prompt_id == prompt_id and assignment.attempt == 1


def test_restarted_worker_takes_back_what_its_previous_session_held(client, context):
    register(context)
    prompt_id = submit(client)
    context.dispatcher.dispatch()
    register(context)  # same name, new process
    with context.database.reading() as session:
        assert session.get(Prompt, prompt_id).state == "queued"


def test_history_paging_follows_comfyui(client, context, sender):
    register(context)
    ids = []
    for color in range(5):
        ids.append(submit(client, prompt=invert_workflow(color=color)))
        (assignment,) = take(sender)
        run(context, assignment)
    page = lambda **q: list(client.get("/history", query_string=q).get_json())  # noqa: E731
    assert page() == ids
    assert page(max_items=2) == ids[3:]
    assert page(max_items=2, offset=1) == ids[1:3]
    assert page(offset=3) == ids[3:]
    assert page(offset=9) == []
    assert page(max_items=0, offset=0) == ids[:1]
    assert page(max_items=-1) == []
    assert client.get("/history", query_string={"max_items": "x"}).status_code == 400


@pytest.mark.parametrize("query,status", [
    ({}, 404),
    ({"filename": ""}, 400),
    ({"filename": "../farm.db"}, 400),
    ({"filename": "/etc/passwd"}, 400),
    ({"filename": "a.png", "type": "secret"}, 400),
    ({"filename": "passwd", "subfolder": "../../../../etc"}, 403),
    ({"filename": "passwd", "subfolder": "/etc"}, 403),
    ({"filename": "nothing.png"}, 404),
])
def test_view_path_checks(client, query, status):
    response = client.get("/view", query_string=query)
    assert response.status_code == status
    assert "error" in response.get_json()


def test_view_refuses_symlinks_out_of_the_store(client, context, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("secret")
    output = context.storage.root("output")
    (output / "link.png").symlink_to(secret)
    (output / "linkdir").symlink_to(tmp_path)
    assert client.get("/view", query_string={"filename": "link.png"}).status_code == 403
    assert client.get("/view", query_string={"filename": "secret.txt", "subfolder": "linkdir"}).status_code == 403


def test_view_serves_active_content_as_download(client, context):
    output = context.storage.root("output")
    (output / "page.html").write_text("<script>alert(1)</script>")
    (output / "pic.svg").write_text("<svg/>")
    for name in ("page.html", "pic.svg"):
        response = client.get("/view", query_string={"filename": name})
        assert response.status_code == 200
        assert response.mimetype == "application/octet-stream"
        assert response.headers["Content-Disposition"].startswith("attachment;")
        assert response.headers["X-Content-Type-Options"] == "nosniff"


def test_view_annotated_filename_picks_the_folder(client, context):
    (context.storage.root("input") / "in.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    assert client.get("/view", query_string={"filename": "in.png [input]"}).status_code == 200
    assert client.get("/view", query_string={"filename": "in.png"}).status_code == 404


def test_system_stats_lists_live_workers(client, context):
    register(context, "w1")
    body = client.get("/api/system_stats").get_json()
    assert set(body) == {"system", "devices"}
    assert {"os", "ram_total", "ram_free", "comfyui_version", "python_version", "pytorch_version",
            "embedded_python", "argv"} <= set(body["system"])
    assert [(d["worker"], d["name"], d["type"], d["index"]) for d in body["devices"]] == [("w1", "cpu", "cpu", None)]
