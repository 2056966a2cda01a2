"""POST /queue, /interrupt, /history, /free and the jobs API, on the real services (SQL)."""

from __future__ import annotations

import json
import uuid

import pytest

from farm.db.models import Prompt
from farm.services import execution
from farm.graph.executor import GraphExecutor
from farm.db.models import PromptState
from tests.unit.test_dispatch_and_history import register, take
from tests.workflows import invert_workflow


def submit(client, **body):
    response = client.post("/prompt", data=json.dumps({"prompt": invert_workflow(), **body}))
    assert response.status_code == 200, response.get_json()
    return response.get_json()["prompt_id"]


def finish(context, assignment, worker="w1"):
    claimed = execution.claim(context.database, assignment.prompt_id, assignment.attempt, worker)
    result = GraphExecutor(context.registry, context.storage).execute(
        claimed.prompt_id, claimed.prompt, claimed.outputs_to_execute, claimed.extra_data, lambda *a: None)
    state = {"success": PromptState.SUCCESS, "error": PromptState.ERROR}[result.status]
    execution.finish(context.database, claimed, worker, state, result.outputs, result.messages, result.error)


def state_of(context, prompt_id):
    with context.database.reading() as session:
        row = session.get(Prompt, prompt_id)
        return None if row is None else row.state


@pytest.mark.parametrize("prefix", ["", "/api"])
def test_queue_delete_and_clear_touch_only_pending_prompts(client, context, sender, prefix):
    register(context)
    running = submit(client)
    pending = [submit(client) for _ in range(3)]
    response = client.post(f"{prefix}/queue", data=json.dumps({"delete": [pending[0], "unknown"]}))
    assert response.status_code == 200 and response.data == b""
    assert [item[1] for item in client.get("/queue").get_json()["queue_pending"]] == pending[1:]
    assert client.post("/queue", data=json.dumps({"clear": True})).status_code == 200
    queue = client.get("/queue").get_json()
    assert queue["queue_pending"] == [] and [item[1] for item in queue["queue_running"]] == [running]
    assert [state_of(context, p) for p in pending] == ["cancelled"] * 3
    assert client.get(f"/history/{pending[0]}").get_json() == {}  # never ran: not in history
    assert client.post("/queue", data="not json").status_code == 400
    assert client.post("/queue", data=json.dumps({"delete": "x"})).status_code == 400


def test_interrupt_targets_running_prompts_only(client, context, control):
    register(context)
    running = submit(client)
    pending = submit(client)
    assert client.post("/interrupt", data=json.dumps({"prompt_id": pending})).status_code == 200
    assert control.interrupted == []  # a pending prompt is not touched
    assert client.post("/api/interrupt", data=json.dumps({"prompt_id": running})).data == b""
    assert control.interrupted == [(running, "w1")]
    control.interrupted.clear()
    for body in ("", "garbage", json.dumps({})):  # no or broken body: interrupt everything running
        assert client.post("/interrupt", data=body).status_code == 200
    assert control.interrupted == [(running, "w1")] * 3
    assert state_of(context, pending) == "queued"


def test_history_delete_and_clear(client, context, sender):
    register(context)
    ids = []
    for color in range(3):
        ids.append(submit(client, prompt=invert_workflow(color=color)))
        (assignment,) = take(sender)
        finish(context, assignment)
    queued = submit(client)  # dispatched to the idle worker, not finished
    assert client.post("/history", data=json.dumps({"delete": [ids[0]]})).status_code == 200
    assert list(client.get("/history").get_json()) == ids[1:]
    assert client.post("/api/history", data=json.dumps({"clear": True})).data == b""
    assert client.get("/history").get_json() == {}
    assert state_of(context, queued) == "dispatched"  # history clear never touches live prompts


def test_free_is_forwarded_to_workers(client, control):
    assert client.post("/free", data=json.dumps({"unload_models": True})).status_code == 200
    assert client.post("/api/free", data=json.dumps({"free_memory": True, "unload_models": False})).data == b""
    assert client.post("/free", data=json.dumps({})).status_code == 200
    assert control.freed == [(True, False), (False, True)]


def test_jobs_list_filters_pages_and_details(client, context, sender):
    register(context)
    done = submit(client, extra_data={"extra_pnginfo": {"workflow": {"id": "wf-1"}}})
    (assignment,) = take(sender)
    finish(context, assignment)
    failed = submit(client, prompt=invert_workflow(prefix="../escape"))
    (assignment,) = take(sender)
    finish(context, assignment)
    running = submit(client)
    pending = submit(client, front=True)
    cancelled = submit(client)
    client.post("/queue", data=json.dumps({"delete": [cancelled]}))

    body = client.get("/api/jobs").get_json()
    assert [job["id"] for job in body["jobs"]] == [cancelled, pending, running, failed, done]
    # A page holds 100 jobs unless the request says otherwise (ComfyUI: all of them).
    assert body["pagination"] == {"offset": 0, "limit": 100, "total": 5, "has_more": False, "next_cursor": None}
    statuses = {job["id"]: job["status"] for job in body["jobs"]}
    assert statuses == {done: "completed", failed: "failed", running: "in_progress", pending: "pending",
                        cancelled: "cancelled"}
    completed = next(job for job in body["jobs"] if job["id"] == done)
    assert completed["outputs_count"] == completed["previewable_outputs_count"] == 1
    assert completed["preview_output"] == {"filename": "ComfyUI_00001_.png", "subfolder": "", "type": "output",
                                           "nodeId": "3", "mediaType": "images"}
    assert completed["workflow_id"] == "wf-1" and completed["priority"] == 0
    assert completed["execution_end_time"] >= completed["execution_start_time"] >= completed["create_time"] - 1000
    assert "execution_error" not in completed  # null fields are omitted
    waiting = next(job for job in body["jobs"] if job["id"] == pending)
    assert set(waiting) == {"id", "status", "priority", "create_time", "outputs_count", "previewable_outputs_count"}
    assert next(job for job in body["jobs"] if job["id"] == failed)["execution_error"]["node_type"] == "SaveImage"

    page = client.get("/api/jobs?status=completed,failed&sort_order=asc&limit=1&offset=1").get_json()
    assert [job["id"] for job in page["jobs"]] == [failed]
    assert page["pagination"] == {"offset": 1, "limit": 1, "total": 2, "has_more": False, "next_cursor": None}
    # Keyset paging: each page's next_cursor leads to the next, through every state's jobs.
    seen, cursor = [], ""
    for _ in range(6):
        page = client.get(f"/api/jobs?limit=2&cursor={cursor}").get_json()
        seen += [job["id"] for job in page["jobs"]]
        assert page["pagination"]["total"] == 5
        cursor = page["pagination"]["next_cursor"]
        assert (cursor is not None) == page["pagination"]["has_more"]
        if cursor is None:
            break
    assert seen == [cancelled, pending, running, failed, done]
    oldest = client.get("/api/jobs?sort_order=asc&limit=3").get_json()["pagination"]["next_cursor"]
    assert [j["id"] for j in client.get(f"/api/jobs?sort_order=asc&cursor={oldest}").get_json()["jobs"]] == [
        pending, cancelled]
    assert client.get("/api/jobs?limit=100000").get_json()["pagination"]["limit"] == 1000
    assert [j["id"] for j in client.get("/api/jobs?workflow_id=wf-1").get_json()["jobs"]] == [done]
    assert client.get("/api/jobs?offset=-5&limit=2").get_json()["pagination"]["offset"] == 0
    by_duration = client.get("/api/jobs?status=completed,failed&sort_by=execution_duration").get_json()
    assert {job["id"] for job in by_duration["jobs"]} == {done, failed}
    for bad in ("status=weird", "limit=0", "limit=x", "sort_by=name", "sort_order=up", "offset=x", "cursor=x",
                "cursor=WzFd", "sort_by=execution_duration&cursor=" + oldest):
        response = client.get(f"/api/jobs?{bad}")
        assert response.status_code == 400 and isinstance(response.get_json()["error"], str)

    detail = client.get(f"/api/jobs/{done}").get_json()
    assert detail["outputs"] == {"3": {"images": [{"filename": "ComfyUI_00001_.png", "subfolder": "",
                                                   "type": "output"}]}}
    assert detail["execution_status"]["status_str"] == "success"
    assert detail["workflow"]["prompt"] == invert_workflow()
    assert client.get(f"/api/jobs/{uuid.uuid4()}").get_json() == {"error": "Job not found"}
    assert client.get(f"/api/jobs/{uuid.uuid4()}").status_code == 404
    assert client.get("/api/api/jobs").status_code == 200  # mirrored like every route


def test_jobs_cancel_one_and_many(client, context, control):
    register(context)
    running = submit(client)
    pending = [submit(client) for _ in range(2)]
    assert client.post(f"/api/jobs/{pending[0]}/cancel").get_json() == {"cancelled": True}
    assert state_of(context, pending[0]) == "cancelled"
    assert client.post(f"/api/jobs/{running}/cancel").get_json() == {"cancelled": True}
    assert control.interrupted == [(running, "w1")]
    assert client.post(f"/api/jobs/{uuid.uuid4()}/cancel").get_json() == {"cancelled": False}
    many = client.post("/api/jobs/cancel", data=json.dumps({"job_ids": [pending[1], str(uuid.uuid4())]}))
    assert many.get_json() == {"cancelled": True} and state_of(context, pending[1]) == "cancelled"
    assert client.post("/api/jobs/cancel", data="nope").status_code == 400
    assert client.post("/api/jobs/cancel", data=json.dumps({"job_ids": "x"})).status_code == 400
    bad = client.post("/api/jobs/cancel", data=json.dumps({"job_ids": ["nope", pending[1]]}))
    assert bad.status_code == 400 and bad.get_json()["invalid_ids"] == ["nope"]
