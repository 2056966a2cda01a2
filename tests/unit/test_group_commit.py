"""Group commit of concurrent submissions: every row committed once, numbers unique and in order,
fewer transactions than rows under concurrency, and a conflict refusing only its own row."""

from __future__ import annotations

import threading
import uuid

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from farm.db.models import Prompt, PromptState
from farm.services.group_commit import GroupCommit


def _row(prompt_id: str | None = None) -> dict:
    return dict(prompt_id=prompt_id or str(uuid.uuid4()), front=False, client_id=None, prompt={}, extra_data={},
                outputs_to_execute=[], partial_execution_targets=None, request_hash="", node_errors={},
                state=PromptState.QUEUED.value, attempt=0, team="default", queue_rank=51, needs_id=None,
                coalesce_key=None, workflow_id=None)


def _submit_together(commit: GroupCommit, rows: list[dict], fronts=()) -> list[BaseException | None]:
    outcomes: list[BaseException | None] = [None] * len(rows)
    start = threading.Barrier(len(rows))

    def submit(index: int) -> None:
        start.wait()
        try:
            commit.insert(rows[index], number=True, front=index in fronts)
        except Exception as error:  # noqa: BLE001 - recorded for the test
            outcomes[index] = error

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(len(rows))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return outcomes


def test_concurrent_submissions_share_transactions_and_each_is_committed_once(context):
    commit = GroupCommit(context.database)
    rows = [_row() for _ in range(48)]
    assert _submit_together(commit, rows, fronts={5}) == [None] * 48
    with context.database.reading() as session:
        stored = dict(session.execute(select(Prompt.prompt_id, Prompt.number)).all())
    assert stored == {row["prompt_id"]: row["number"] for row in rows}
    numbers = sorted(abs(row["number"]) for row in rows)
    assert numbers == sorted(set(numbers)) and rows[5]["number"] <= 0
    assert commit.transactions < len(rows)  # grouped: threads arrived while a commit was under way


def test_a_lone_submission_is_committed_at_once(context):
    commit = GroupCommit(context.database)
    row = _row()
    commit.insert(row, number=True)
    assert commit.transactions == 1 and row["number"] == 0


def test_a_duplicate_id_refuses_only_its_own_submission(context):
    commit = GroupCommit(context.database)
    taken = _row()
    commit.insert(taken, number=True)
    rows = [_row() for _ in range(12)]
    rows[7] = _row(taken["prompt_id"])
    outcomes = _submit_together(commit, rows)
    assert isinstance(outcomes[7], IntegrityError)
    assert [outcome for index, outcome in enumerate(outcomes) if index != 7] == [None] * 11
    with context.database.reading() as session:
        assert session.scalar(select(func.count()).select_from(Prompt)) == 12
