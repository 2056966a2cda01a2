"""The paths that must stay cheap with deep queues and long histories: kept prompt counts, sequence
numbers, the paged /queue, /history without counting, jobs by workflow id."""

from __future__ import annotations

import datetime as dt
import json
import random
import uuid

from sqlalchemy import delete, func, insert, select, text, update

from farm.db import numbers, prompt_counts
from farm.db.models import Prompt, PromptState
from farm.services import history
from tests.unit.test_dispatch_and_history import register, run, submit, take
from tests.workflows import invert_workflow

STATES = [state.value for state in PromptState]


def _actual(database) -> dict[tuple[str, str], int]:
    with database.reading() as session:
        rows = session.execute(select(Prompt.team, Prompt.state, func.count()).group_by(Prompt.team, Prompt.state))
        return {(team, state): n for team, state, n in rows}


def _kept(database) -> dict[tuple[str, str], int]:
    teams = {team for team, _ in _actual(database)} | {"a", "b", "c"}
    with database.engine.connect() as connection:
        found = {(team, state): prompt_counts.count(connection, [state], team) for team in teams for state in STATES}
    return {key: n for key, n in found.items() if n}


def _row(team: str, state: str) -> dict:
    return dict(prompt_id=str(uuid.uuid4()), number=0, front=False, prompt={}, extra_data={}, outputs_to_execute=[],
                request_hash="", node_errors={}, state=state, attempt=0, team=team, queue_rank=51,
                created_at=func.now())


def test_kept_counts_follow_every_insert_update_and_delete(context):
    """Random single and many-row statements in random transactions, on SQLite and PostgreSQL:
    the kept counts always equal a GROUP BY over the rows, before and after compaction."""
    database, table, chance = context.database, Prompt.__table__, random.Random(14)
    for round_ in range(30):
        with database.write_connection() as connection:
            for _ in range(chance.randint(1, 4)):
                action = chance.choice(["insert", "insert_many", "update", "update_all", "move_team", "delete", "noop"])
                if action == "insert":
                    connection.execute(insert(table).values(_row(chance.choice("abc"), chance.choice(STATES))))
                elif action == "insert_many":
                    for _ in range(chance.randint(2, 40)):
                        connection.execute(insert(table).values(_row(chance.choice("abc"), chance.choice(STATES))))
                elif action == "update":
                    connection.execute(update(table).where(table.c.state == chance.choice(STATES))
                                       .values(state=chance.choice(STATES)))
                elif action == "update_all":  # many rows, no state changes: nothing to count
                    connection.execute(update(table).values(attempt=table.c.attempt + 1))
                elif action == "move_team":
                    connection.execute(update(table).where(table.c.team == chance.choice("abc"))
                                       .values(team=chance.choice("abc")))
                elif action == "delete":
                    connection.execute(delete(table).where(table.c.state == chance.choice(STATES)))
        assert _kept(database) == {key: n for key, n in _actual(database).items() if n}, round_
        if round_ % 7 == 3:
            prompt_counts.compact(database)
    prompt_counts.compact(database)
    assert _kept(database) == _actual(database)
    if not database.is_sqlite:  # compaction folded every delta in
        with database.engine.connect() as connection:
            assert connection.execute(text("SELECT count(*) FROM prompt_count_deltas")).scalar() == 0


def test_numbers_are_ascending_and_never_repeat(context):
    taken = []
    for count in (1, 5, 1, 300, 2):
        with context.database.write_connection() as connection:
            got = numbers.take(connection, count)
        assert got == sorted(got) and len(got) == count
        taken += got
    assert len(set(taken)) == len(taken) and taken == sorted(taken) and taken[0] == 0


def test_queue_pages_its_pending_list_and_counts_everything(client, context, sender):
    register(context)
    ids = [submit(client) for _ in range(7)]
    (assignment,) = take(sender)  # the first runs; six wait
    whole = client.get("/queue").get_json()
    assert [item[1] for item in whole["queue_running"]] == [assignment.prompt_id]
    assert [item[1] for item in whole["queue_pending"]] == ids[1:]
    page = client.get("/queue?limit=2&offset=3").get_json()
    assert [item[1] for item in page["queue_pending"]] == ids[4:6]
    assert len(page["queue_running"]) == 1  # running prompts are always listed
    assert client.get("/prompt").get_json() == {"exec_info": {"queue_remaining": 7}}
    for bad in ("limit=x", "offset=-1", "limit=-3"):
        response = client.get(f"/queue?{bad}")
        assert response.status_code == 400 and response.get_json()["error"]["type"] == "invalid_query"
    assert len(history.queue(context.database, limit=10**9)["queue_pending"]) == 6  # capped, not refused


def test_history_pages_without_counting(client, context, sender):
    register(context)
    done = []
    for color in range(5):
        done.append(submit(client, prompt=invert_workflow(color=color)))
        (assignment,) = take(sender)
        run(context, assignment)
    assert list(client.get("/history?max_items=2").get_json()) == done[3:]  # the most recent 2, oldest first
    assert list(client.get("/history?offset=1&max_items=2").get_json()) == done[1:3]
    assert list(client.get("/history?offset=5").get_json()) == []
    assert list(client.get("/history").get_json()) == done
    assert list(client.get("/history?max_items=-1").get_json()) == []
    assert list(history.history_page(context.database, 10**6, None, cap=3)) == done[2:]  # at most the cap


def test_jobs_by_workflow_id_use_the_column(client, context, sender):
    submit(client, extra_data={"extra_pnginfo": {"workflow": {"id": "wf-9"}}})
    submit(client, extra_data={"extra_pnginfo": {"workflow": {"id": 12}}})  # not a string: no workflow id
    submit(client, extra_data={"extra_pnginfo": "not an object"})
    with context.database.reading() as session:
        assert sorted(session.scalars(select(Prompt.workflow_id)), key=str) == [None, None, "wf-9"]
    page = client.get("/api/jobs?workflow_id=wf-9").get_json()
    assert [job["workflow_id"] for job in page["jobs"]] == ["wf-9"] and page["pagination"]["total"] == 1
    assert client.get("/api/jobs").get_json()["pagination"]["total"] == 3


def test_batch_cells_take_sequence_numbers_after_plain_prompts(client, context):
    first = client.post("/prompt", data=json.dumps({"prompt": invert_workflow()})).get_json()["number"]
    batch = client.post("/api/batches", data=json.dumps({"workflow": invert_workflow(),
                                                          "sweep": {"1.color": [1, 2, 3]}}))
    assert batch.status_code in (200, 201), batch.get_json()
    low, high = batch.get_json()["number"]
    after = client.post("/prompt", data=json.dumps({"prompt": invert_workflow()})).get_json()["number"]
    assert first < low < high < after and high - low == 2


def test_retention_prunes_ended_prompts_and_whole_ended_batches_in_bounded_batches(context):
    from farm.db.models import Batch
    from farm.services import retention

    database, now = context.database, dt.datetime.now(dt.timezone.utc)
    old, recent = now - dt.timedelta(days=40), now - dt.timedelta(days=2)

    def prompt(state, finished_at, batch_id=None, created_at=old):
        row = {**_row("a", state), "created_at": created_at, "finished_at": finished_at, "batch_id": batch_id}
        with database.write_connection() as connection:
            connection.execute(insert(Prompt.__table__).values(row))
        return row["prompt_id"]

    def batch(batch_id):
        with database.write_connection() as connection:
            connection.execute(insert(Batch.__table__).values(
                id=batch_id, team="a", name="", priority=50, paused=False, cancelled=False, tags=[], sweep={},
                cells=3, created_at=old, created_by=""))

    gone = [prompt("success", old) for _ in range(7)] + [prompt("error", old), prompt("cancelled", old)]
    kept = [prompt("success", recent), prompt("queued", None), prompt("running", None)]
    batch("old-batch")
    gone += [prompt("success", old, "old-batch") for _ in range(3)]
    batch("open-batch")  # one cell still queued: the whole batch stays
    kept += [prompt("success", old, "open-batch"), prompt("queued", None, "open-batch")]

    assert retention.prune(database, 30, rows_per_batch=2) == retention.Pruned(prompts=len(gone), batches=1)
    with database.reading() as session:
        assert set(session.scalars(select(Prompt.prompt_id))) == set(kept)
        assert set(session.scalars(select(Batch.id))) == {"open-batch"}
    prompt_counts.compact(database)
    assert _kept(database) == _actual(database)
    assert not retention.prune(database, 30)  # nothing left to prune
    # Bounded: one call deletes about max_rows, the next goes on.
    for _ in range(5):
        prompt("success", old)
    assert retention.prune(database, 30, max_rows=2, rows_per_batch=2).prompts == 2
    assert retention.prune(database, 30).prompts == 3
