"""The cluster scheduler in SQL: placement by model files, affinity, operator states, reaping by
the database's clock, loss streaks, cancelling at scale. The RecordingSender stands in for
Celery delivery only; every database step is the real one, on SQLite and PostgreSQL."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import insert, select, text, update

from farm.db.models import Prompt, PromptState, Worker
from farm.services import execution, queue_control, reaping, workers
from farm.services.context import make_context
from farm.nodes.registry import default_registry
from tests.nodepack import NODES
from tests.unit.test_dispatch_and_history import register, take


@pytest.fixture
def context(settings, sender):
    context = make_context(settings, sender=sender, registry=default_registry(NODES))
    context.node_env.models.ttl = 0
    yield context
    context.database.dispose()


def report(context, info, **fields):
    assert workers.report(context.database, info, fields)


def model_prompt(client, ckpt, **body):
    prompt = {"1": {"class_type": "ModelName", "inputs": {"ckpt_name": ckpt, "value": 1}}}
    response = client.post("/prompt", data=json.dumps({"prompt": prompt, **body}))
    assert response.status_code == 200, response.get_json()
    return response.get_json()["prompt_id"]


def model_free_prompt(client):
    prompt = {"1": {"class_type": "Number", "inputs": {"value": 1}}, "2": {"class_type": "Show", "inputs": {"value": ["1", 0]}}}
    response = client.post("/prompt", data=json.dumps({"prompt": prompt}))
    assert response.status_code == 200, response.get_json()
    return response.get_json()["prompt_id"]


def age_worker(context, name, seconds):
    """Make the worker's last beat `seconds` old by the database's clock."""
    with context.database.write_connection() as connection:
        if context.database.is_sqlite:
            connection.execute(text(f"UPDATE workers SET last_seen = strftime('%Y-%m-%d %H:%M:%f000', 'now', "
                                    f"'-{seconds} seconds') WHERE name = :n"), {"n": name})
        else:
            connection.execute(text("UPDATE workers SET last_seen = now() - make_interval(secs => :s) "
                                    "WHERE name = :n"), {"s": seconds, "n": name})


def state_of(context, prompt_id):
    with context.database.reading() as session:
        row = session.get(Prompt, prompt_id)
        return row.state, row.worker, row.attempt


def test_each_worker_gets_only_prompts_whose_model_files_it_has(client, context, sender):
    a = register(context, "wa")
    b = register(context, "wb")
    report(context, a, model_files={"checkpoints": ["a.safetensors"]})
    report(context, b, model_files={"checkpoints": ["b.safetensors"]})
    for_b, for_a = model_prompt(client, "b.safetensors"), model_prompt(client, "a.safetensors")
    context.dispatcher.dispatch()
    assert {(s.prompt_id, s.worker) for s in take(sender)} == {(for_a, "wa"), (for_b, "wb")}


def test_a_prompt_no_live_worker_can_run_waits_and_says_why(client, context, sender):
    a = register(context, "wa")
    report(context, a, model_files={"checkpoints": ["a.safetensors"], "loras": ["l.safetensors"]})
    # The web host's own models folder has a file no live worker has: valid, but nobody can run it.
    folder = context.settings.models_dir / "checkpoints"
    folder.mkdir(parents=True)
    (folder / "b.safetensors").write_bytes(b"x")
    waiting = model_prompt(client, "b.safetensors")
    runnable = model_free_prompt(client)
    context.dispatcher.dispatch()
    assert [(s.prompt_id, s.worker) for s in take(sender)] == [(runnable, "wa")]
    assert state_of(context, waiting)[0] == "queued"  # it waits; it never fails for this
    pending = client.get("/queue").get_json()["queue_pending"]
    assert [item[1] for item in pending] == [waiting]
    assert pending[0][3]["farm_waiting_for"] == "no live worker has checkpoints/b.safetensors"
    jobs = client.get("/api/jobs?status=pending").get_json()["jobs"]
    assert jobs[0]["waiting_for"] == "no live worker has checkpoints/b.safetensors"
    assert client.get(f"/api/jobs/{waiting}").get_json()["waiting_for"].startswith("no live worker has")
    # A worker with the file arrives: the prompt runs there.
    c = register(context, "wc")
    report(context, c, model_files={"checkpoints": ["b.safetensors"]})
    context.dispatcher.dispatch()
    assert [(s.prompt_id, s.worker) for s in take(sender)] == [(waiting, "wc")]


def test_a_file_copied_in_a_moment_ago_is_accepted_at_once(client, context, tmp_path):
    a = register(context, "wa")
    report(context, a, model_files={"checkpoints": ["a.safetensors"]})
    context.node_env.models.ttl = 3600  # a listing cached long before the copy
    assert "new.safetensors" not in client.get("/models/checkpoints").get_json()
    folder = context.settings.models_dir / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "new.safetensors").write_bytes(b"x")
    model_prompt(client, "new.safetensors")
    # Still refused: a name outside the folder, or not a model file.
    (folder / "notes.txt").write_text("x")
    for name in ("notes.txt", "../checkpoints/new.safetensors", "missing.safetensors"):
        prompt = {"1": {"class_type": "ModelName", "inputs": {"ckpt_name": name, "value": 1}}}
        response = client.post("/prompt", data=json.dumps({"prompt": prompt}))
        assert response.status_code == 400
        assert response.get_json()["node_errors"]["1"]["errors"][0]["type"] == "value_not_in_list"


def test_affinity_prefers_the_loaded_checkpoint_within_the_bound(client, context, sender):
    info = register(context, "w1")
    report(context, info, model_files={"checkpoints": ["x.safetensors", "y.safetensors"]})
    client.post("/api/dispatch/pause")
    first_x, y, second_x = (model_prompt(client, "x.safetensors"), model_prompt(client, "y.safetensors"),
                            model_prompt(client, "x.safetensors"))
    report(context, info, loaded_models=[{"name": "y.safetensors", "component": "checkpoint",
                                         "file": "checkpoints/y.safetensors"}])
    client.post("/api/dispatch/resume")
    assert [s.prompt_id for s in take(sender)] == [y]
    with context.database.reading() as session:
        assert session.get(Prompt, first_x).passed_at is not None
        assert session.get(Prompt, second_x).passed_at is None
    # The passed prompt has waited past the bound: the next free worker takes it first.
    with context.database.write_connection() as connection:
        connection.execute(update(Prompt).where(Prompt.prompt_id == y).values(state="success"))
        connection.execute(text("UPDATE prompts SET passed_at = :t WHERE prompt_id = :p"),
                           {"t": "2000-01-01 00:00:00.000000" if context.database.is_sqlite else "2000-01-01T00:00:00Z",
                            "p": first_x})
    report(context, info, loaded_models=[])
    context.dispatcher.dispatch(only="w1", loaded=frozenset({"checkpoints/y.safetensors"}))
    assert [s.prompt_id for s in take(sender)] == [first_x]


def test_drained_and_locked_workers_and_a_paused_farm_get_nothing(client, context, sender):
    register(context, "w1")
    assert client.post("/api/workers/w1/drain").get_json()["state"] == "draining"
    model_free_prompt(client)
    assert take(sender) == []
    assert client.post("/api/workers/w1/unlock").get_json()["state"] == "busy"  # dispatched at once
    assert len(take(sender)) == 1
    assert client.post("/api/workers/w1/lock", data=json.dumps({"reason": "bad fan"})).get_json()["lock_reason"] == "bad fan"
    waiting = model_free_prompt(client)
    context.dispatcher.dispatch()
    assert take(sender) == []
    assert client.get(f"/api/jobs/{waiting}").get_json()["waiting_for"] == (
        "every live worker that can run it is draining or locked")
    assert client.post("/api/workers/w1/unlock").get_json()["state"] == "busy"
    assert client.post("/api/dispatch/pause").get_json() == {"paused": True}
    assert client.get("/api/workers").get_json()["dispatch"] == {"paused": True}
    context.dispatcher.dispatch()
    assert take(sender) == []
    assert client.post("/api/dispatch/resume").get_json() == {"paused": False}
    context.dispatcher.dispatch()
    # w1 still holds the first prompt: nothing new until it ends.
    assert take(sender) == []
    assert client.post("/api/workers/nobody/drain").status_code == 404
    assert client.post("/api/workers/w1/explode").status_code == 404


def test_workers_api_lists_every_field_the_operator_needs(client, context):
    info = register(context, "w1")
    report(context, info, vram_total=100, vram_free=40, model_files={"checkpoints": ["a", "b"]},
           loaded_models=[{"name": "a", "component": "checkpoint", "bytes": 5, "device": "cpu",
                           "file": "checkpoints/a"}])
    register(context, "w2")
    age_worker(context, "w2", 3600)
    listed = {w["name"]: w for w in client.get("/api/workers").get_json()["workers"]}
    one = listed["w1"]
    assert one["state"] == "idle" and listed["w2"]["state"] == "dead"
    assert (one["host"], one["device"], one["vram_total"], one["vram_free"], one["model_files"]) == (
        "h", "cpu", 100, 40, 2)
    assert one["loaded_models"][0]["file"] == "checkpoints/a"
    assert one["current_prompt"] is None and one["prompts_done"] == 0 and one["prompts_failed"] == 0
    assert 0 <= one["last_heartbeat_age"] < 5 and listed["w2"]["last_heartbeat_age"] >= 3600
    assert {"tags", "version", "started_at", "gpu_index", "lock_reason"} <= set(one)
    assert client.get("/api/workers/w2").get_json()["state"] == "dead"
    assert client.get("/api/workers/nobody").status_code == 404


def test_reaping_judges_beats_by_the_database_clock(client, context, sender):
    info = register(context, "w1")
    prompt_id = model_free_prompt(client)
    timeout = context.settings.worker_timeout_seconds
    age_worker(context, "w1", timeout - 5)
    assert reaping.reap(context.database, context.settings).taken == 0
    age_worker(context, "w1", timeout + 5)
    assert workers.beat(context.database, "w1", info.session)  # it beat just in time
    assert reaping.reap(context.database, context.settings).taken == 0
    assert state_of(context, prompt_id) == ("dispatched", "w1", 1)
    age_worker(context, "w1", timeout + 5)
    reaped = reaping.reap(context.database, context.settings)
    assert (reaped.taken, reaped.dead) == (1, ["w1"])
    assert state_of(context, prompt_id) == ("queued", None, 1)
    # The worker was only slow: its next beat finds it reaped; it rejoins without taking anything.
    assert not workers.beat(context.database, "w1", info.session)
    workers.rejoin(context.database, info)
    assert workers.beat(context.database, "w1", info.session)
    assert state_of(context, prompt_id) == ("queued", None, 1)


def test_a_lost_prompt_goes_to_another_worker_and_a_worker_losing_three_in_a_row_is_locked(client, context, sender):
    register(context, "w1")
    prompt_id = model_free_prompt(client)
    (first,) = take(sender)
    assert execution.claim(context.database, prompt_id, first.attempt, "w1")  # it runs, then w1 is lost
    age_worker(context, "w1", 3600)
    reaping.reap(context.database, context.settings)
    register(context, "w1")
    register(context, "w2")
    context.dispatcher.dispatch(only="w1")
    assert take(sender) == []  # w2 can run it: w1, which lost it, leaves it alone
    context.dispatcher.dispatch()
    (again,) = take(sender)
    assert (again.prompt_id, again.worker, again.attempt) == (prompt_id, "w2", 2)
    # A prompt dispatched to w1 but not started when it is lost does not count against it...
    unstarted = model_free_prompt(client)
    context.dispatcher.dispatch(only="w1")
    assert [s.prompt_id for s in take(sender)] == [unstarted]
    register(context, "w1")  # restarted before it took the message
    assert client.get("/api/workers/w1").get_json()["failures_in_row"] == 1
    context.dispatcher.dispatch(only="w1")
    (sent,) = take(sender)
    assert sent.prompt_id == unstarted
    for _ in range(2):  # ...two lost while running do: three in a row
        if sent is None:
            model_free_prompt(client)  # w2 is busy: it goes to w1
            (sent,) = take(sender)
        assert sent.worker == "w1"
        assert execution.claim(context.database, sent.prompt_id, sent.attempt, "w1")
        age_worker(context, "w1", 3600)
        reaping.reap(context.database, context.settings)
        register(context, "w1")
        sent = None
    listed = client.get("/api/workers/w1").get_json()
    assert listed["state"] == "locked" and listed["failures_in_row"] == 3
    assert listed["lock_reason"].startswith("lost or timed out 3 prompts in a row")
    assert client.post("/api/workers/w1/unlock").get_json()["state"] in ("idle", "busy")


def test_a_finished_prompt_ends_the_loss_streak_and_counts(client, context, sender):
    register(context, "w1")
    with context.database.write() as session:
        session.execute(update(Worker).values(failures_in_row=2))
    model_free_prompt(client)
    (assignment,) = take(sender)
    claimed = execution.claim(context.database, assignment.prompt_id, assignment.attempt, "w1")
    assert execution.finish(context.database, claimed, "w1", PromptState.SUCCESS, {}, [], None)
    assert not execution.finish(context.database, claimed, "w1", PromptState.SUCCESS, {}, [], None)
    listed = client.get("/api/workers/w1").get_json()
    assert (listed["failures_in_row"], listed["prompts_done"]) == (0, 1)


def test_timeouts_count_in_the_loss_streak(client, context, sender):
    register(context, "w1")
    for expected in (1, 2, 3):
        model_free_prompt(client)
        context.dispatcher.dispatch()
        (assignment,) = take(sender)
        claimed = execution.claim(context.database, assignment.prompt_id, assignment.attempt, "w1")
        error = reaping.worker_lost_error(claimed.prompt_id, "too long", "Timeout")
        assert execution.finish(context.database, claimed, "w1", PromptState.ERROR, {}, [["execution_error", error]],
                                error, timed_out=True, lock_after=3)
        assert client.get("/api/workers/w1").get_json()["failures_in_row"] == expected
    assert client.get("/api/workers/w1").get_json()["state"] == "locked"


def test_a_worker_with_nothing_loaded_looks_past_the_prompts_it_lost_to_the_first_it_may_run(client, context,
                                                                                            sender):
    register(context, "w1")
    register(context, "w2")
    first, second = model_free_prompt(client), model_free_prompt(client)
    sent = {assignment.worker: assignment for assignment in take(sender)}
    assert set(sent) == {"w1", "w2"}  # both busy now: the rest waits in the queue
    queued = [model_free_prompt(client) for _ in range(6)]
    with context.database.write_connection() as connection:  # w1 lost the first four; w2 may run them
        connection.execute(update(Prompt).where(Prompt.prompt_id.in_(queued[:4])).values(lost_on=["w1"]))
    claimed = execution.claim(context.database, sent["w1"].prompt_id, sent["w1"].attempt, "w1")
    recorded, following = execution.finish_then(
        context.database, claimed, "w1", PromptState.SUCCESS, {}, [], None,
        then=lambda connection: context.dispatcher.take_next(connection, "w1", frozenset(), frozenset()))
    assert recorded and following.prompt_id == queued[4]
    assert {first, second} == {sent["w1"].prompt_id, sent["w2"].prompt_id}


def test_clearing_a_huge_queue_is_one_statement_that_reports_only_what_it_cancelled(client, context, sender):
    count = 70_000  # past PostgreSQL's 65,535 parameters per statement
    rows = [{"prompt_id": f"p{i:06d}", "number": float(i), "front": False, "prompt": {}, "extra_data": {},
             "outputs_to_execute": [], "request_hash": "x", "node_errors": {}, "state": "queued", "attempt": 0,
             "created_at": "2026-01-01T00:00:00Z"} for i in range(count)]
    rows[1]["state"] = "dispatched"
    import datetime as dt

    for row in rows:
        row["created_at"] = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    with context.database.write_connection() as connection:
        connection.execute(insert(Prompt.__table__), rows)
    ids = [row["prompt_id"] for row in rows]
    deleted = queue_control.cancel_pending(context.database, ids[:66_000])
    assert len(deleted) == 65_999 and "p000001" not in deleted
    assert client.post("/queue", data=json.dumps({"clear": True})).status_code == 200
    with context.database.reading() as session:
        states = dict(session.execute(select(Prompt.state, text("count(*)")).group_by(Prompt.state)).all())
    assert states == {"cancelled": count - 1, "dispatched": 1}


def test_a_busy_worker_takes_its_next_prompt_as_it_records_the_last(client, context, sender):
    register(context, "w1")
    first = model_free_prompt(client)
    (sent,) = take(sender)
    second, third = model_free_prompt(client), model_free_prompt(client)
    assert take(sender) == []  # w1 is busy: nothing is sent for the others

    def record(claimed):
        return execution.finish_then(
            context.database, claimed, "w1", PromptState.SUCCESS, {}, [], None,
            then=lambda connection: context.dispatcher.take_next(connection, "w1", frozenset(), frozenset()))

    claimed = execution.claim(context.database, first, sent.attempt, "w1")
    recorded, following = record(claimed)
    assert recorded and following.prompt_id == second and following.attempt == 1
    assert state_of(context, second) == ("running", "w1", 1)  # claimed: no message, no claim step
    assert take(sender) == []
    # A drained worker records its prompt but takes no next one.
    client.post("/api/workers/w1/drain")
    recorded, following = record(following)
    assert recorded and following is None
    assert state_of(context, third) == ("queued", None, 0)
    # A stale attempt takes nothing either.
    client.post("/api/workers/w1/unlock")
    (sent,) = take(sender)
    stale = execution.claim(context.database, third, sent.attempt, "w1")
    with context.database.write_connection() as connection:
        connection.execute(update(Prompt).where(Prompt.prompt_id == third).values(attempt=9))
    assert record(stale) == (False, None)
