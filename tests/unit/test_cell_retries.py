"""Batch cells that fail for reasons not their own run again elsewhere; a worker failing three cells
of a batch is blocked from it until an operator lets it back; a cell's own node error is final."""

from __future__ import annotations

import json

from sqlalchemy import select

from farm.db.models import Prompt, PromptState
from farm.services import execution, workers
from tests.workflows import invert_workflow


def start(context, *names):
    for name in names:
        workers.register(context.database, workers.WorkerInfo(
            name=name, session=f"s-{name}", queue=f"farm.gpu.{name}", host="h", pid=1, gpu_index=None,
            device_name="cpu", device_type="cpu", version="test"), context.settings)


def failure(kind: str) -> dict:
    return {"exception_type": kind, "exception_message": "boom\n", "node_id": "2", "traceback": []}


def run_and_fail(context, sender, kind: str):
    """The worker of the next sent assignment claims it and fails with `kind`; (prompt_id, worker,
    whether its end was recorded)."""
    assignment = sender.sent.pop(0)
    claimed = execution.claim(context.database, assignment.prompt_id, assignment.attempt, assignment.worker)
    recorded, _ = execution.finish_then(context.database, claimed, assignment.worker, PromptState.ERROR, {},
                                        [["execution_error", failure(kind)]], failure(kind), cell_retries=3)
    return assignment.prompt_id, assignment.worker, recorded


def row(context, prompt_id) -> Prompt:
    with context.database.reading() as session:
        return session.get(Prompt, prompt_id)


def batch(client, cells: int = 1) -> dict:
    answer = client.post("/api/batches", data=json.dumps({
        "workflow": invert_workflow(), "sweep": {"1.width": {"range": [8, 8 + cells - 1]}}}))
    assert answer.status_code == 201, answer.get_json()
    return answer.get_json()


def test_out_of_memory_reruns_the_cell_on_another_worker_up_to_the_limit(client, context, sender):
    start(context, "w1", "w2")
    cell = batch(client)["prompt_ids"][0]
    seen = []
    for _ in range(3):
        prompt_id, worker, recorded = run_and_fail(context, sender, "torch.OutOfMemoryError")
        assert prompt_id == cell and not recorded
        seen.append(worker)
        context.dispatcher.dispatch()
        assert row(context, cell).state in ("dispatched", "queued")
    assert seen[1] != seen[0]  # the retry went to the other worker
    assert row(context, cell).retries == 3
    _, _, recorded = run_and_fail(context, sender, "Timeout")  # the fourth failure is final
    assert recorded and row(context, cell).state == PromptState.ERROR.value
    assert client.get(f"/history/{cell}").get_json()[cell]["status"]["status_str"] == "error"


def test_a_cells_own_node_error_is_final_at_once(client, context, sender):
    start(context, "w1")
    cell = batch(client)["prompt_ids"][0]
    _, _, recorded = run_and_fail(context, sender, "ValueError")
    assert recorded and row(context, cell).state == PromptState.ERROR.value and row(context, cell).retries == 0


def test_a_plain_prompt_is_not_retried(client, context, sender):
    start(context, "w1")
    client.post("/prompt", data=json.dumps({"prompt": invert_workflow()}))
    _, _, recorded = run_and_fail(context, sender, "torch.OutOfMemoryError")
    assert recorded


def test_a_worker_failing_three_cells_of_a_batch_is_blocked_from_it_until_unblocked(client, context, sender):
    start(context, "w1")
    body = batch(client, cells=4)
    for _ in range(3):
        _, worker, _ = run_and_fail(context, sender, "torch.OutOfMemoryError")
        assert worker == "w1"
        context.dispatcher.dispatch()
    assert sender.sent == []  # blocked: w1 takes no cell of this batch
    detail = client.get(f"/api/batches/{body['batch_id']}").get_json()
    assert detail["workers_failed"] == [{"worker": "w1", "failures": 3, "blocked": True}]
    job = client.get(f"/api/jobs/{body['prompt_ids'][0]}").get_json()
    assert job["status"] == "pending"
    other = client.post("/prompt", data=json.dumps({"prompt": invert_workflow(7)})).get_json()["prompt_id"]
    assert [a.prompt_id for a in sender.sent] == [other]  # it still serves everything else
    sender.sent.clear()
    with context.database.write() as session:  # that prompt done
        session.get(Prompt, other).state = PromptState.SUCCESS.value
    start(context, "w2")
    context.dispatcher.dispatch()
    assert [a.worker for a in sender.sent] == ["w2"]
    sender.sent.clear()
    answer = client.delete(f"/api/batches/{body['batch_id']}/blocklist/w1")
    assert answer.status_code == 200 and answer.get_json()["workers_failed"] == []
    assert [a.worker for a in sender.sent] == ["w1"]
    assert client.delete(f"/api/batches/{body['batch_id']}/blocklist/w1").status_code == 404
    with context.database.reading() as session:
        assert session.scalar(select(Prompt.lost_on).where(Prompt.prompt_id == body["prompt_ids"][0])) == ["w1"]
