"""Hot statements run on the driver (farm.db.prepared): the same rows, rowcounts and stored values
as SQLAlchemy's own execute, IN lists of any length, SQLAlchemy's exceptions, and a lost
connection invalidated so that the next transaction gets a fresh one. On SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest
from sqlalchemy import bindparam, exists, insert, select, text, update
from sqlalchemy.exc import IntegrityError, OperationalError

from farm.db import prepared
from farm.db.clock import db_now
from farm.db.models import Prompt, PromptState, Worker
from farm.db.session import make_database
from farm.queue.dispatch import _CANDIDATES, _CLAIM_NEXT, _LOCK_FOR_NEXT
from farm.services.execution import _FINISH
from tests.services import service_url

_prompts, _workers = Prompt.__table__, Worker.__table__

# Module-level, as the farm's hot statements are (prepared statements are kept by identity).
_BY_STATE = select(_prompts.c.prompt_id, _prompts.c.front, _prompts.c.prompt, _prompts.c.created_at,
                   _prompts.c.needs_id).where(
    _prompts.c.state.in_(["queued", "paused"]),
    _prompts.c.needs_id.is_(None) | _prompts.c.needs_id.in_(bindparam("needs", expanding=True)),
).order_by(_prompts.c.number)
_ANY_FRONT = select(_prompts.c.prompt_id, exists().where(_prompts.c.front.is_(True))).limit(1)
_INSERT = insert(_prompts).values(created_at=db_now())
_RENAME = update(_prompts).where(_prompts.c.prompt_id == bindparam("p_id")).values(prompt_id=bindparam("new_id"))


def _prompt(number: float, **changes) -> dict:
    return dict(prompt_id=str(uuid.uuid4()), number=number, front=number > 2, client_id=None,
                prompt={"1": {"class_type": "EmptyImage", "inputs": {"text": "é\u2603", "big": 2 ** 53}}},
                extra_data={"k": [1, None]}, outputs_to_execute=["1"], request_hash="x", node_errors={},
                state=PromptState.QUEUED.value, attempt=0, needs_id=None) | changes


def _both(connection, statement, values=None):
    return prepared.execute(connection, statement, values), connection.execute(statement, values or {})


def test_rows_and_rowcounts_are_sqlalchemys(context):
    database = context.database
    rows = [_prompt(1), _prompt(2, state="paused"), _prompt(3), _prompt(4, state="error")]
    with database.write_connection() as connection:
        connection.execute(_INSERT, rows)
        for needs in ([], [7], [7, 8, 9], []):  # the empty list, then lengths seen before and new ones
            mine, theirs = _both(connection, _BY_STATE, {"needs": needs})
            theirs = theirs.all()
            assert [tuple(row) for row in mine] == [tuple(row) for row in theirs]
            assert [row.prompt_id for row in mine] == [rows[0]["prompt_id"], rows[1]["prompt_id"], rows[2]["prompt_id"]]
        first = prepared.execute(connection, _BY_STATE, {"needs": []}).first()
        assert first.prompt == rows[0]["prompt"] and first.front is False
        assert isinstance(first.created_at, dt.datetime) and first.created_at.tzinfo is not None
        # Unlabelled columns are reached by position; booleans are booleans on both databases.
        assert tuple(prepared.execute(connection, _ANY_FRONT).one())[1] is True
        assert prepared.execute(connection, _ANY_FRONT).scalar() == connection.execute(_ANY_FRONT).scalar()


def test_the_workers_statements_store_and_return_what_sqlalchemy_does(context):
    database = context.database
    mine, theirs = _prompt(1), _prompt(2)
    with database.write_connection() as connection:
        connection.execute(_INSERT, [mine, theirs])
        connection.execute(insert(_workers).values(
            name="w1", session="s", queue="q", host="h", pid=1, device_name="cpu", device_type="cpu", version="t",
            started_at=db_now(), last_seen=db_now()))
        params = {"timeout": 60, "worker": "w1"}
        assert tuple(prepared.execute(connection, _LOCK_FOR_NEXT, params).one()) == \
            tuple(connection.execute(_LOCK_FOR_NEXT, params).one())
        candidates = {"needs": [], "worker": "w1", "window": 8, "max_wait": 5.0}
        direct, through = _both(connection, _CANDIDATES, candidates)
        assert [tuple(row) for row in direct] == [tuple(row) for row in through]
        claimed = [prepared.execute(connection, _CLAIM_NEXT, {"p_id": mine["prompt_id"], "worker": "w1"}).one(),
                   connection.execute(_CLAIM_NEXT, {"p_id": theirs["prompt_id"], "worker": "w1"}).one()]
        assert [row[0] for row in claimed] == [mine["prompt_id"], theirs["prompt_id"]]
        assert [tuple(row)[1:8] for row in claimed[:1]] == [tuple(row)[1:8] for row in claimed[1:]]
        assert prepared.execute(connection, _CLAIM_NEXT, {"p_id": mine["prompt_id"], "worker": "w1"}).first() is None
        outputs = {"3": {"images": [{"filename": "a.png", "subfolder": "", "type": "output"}]}}
        for row, execute in ((mine, prepared.execute), (theirs, connection.execute)):
            result = execute(connection, _FINISH, {
                "p_id": row["prompt_id"], "p_attempt": 1, "p_worker": "w1", "p_state": "running",
                "new_state": "success", "outputs": outputs, "messages": [["execution_success", {"x": 1}]],
                "execution_error": None}) if execute is prepared.execute else execute(_FINISH, {
                "p_id": row["prompt_id"], "p_attempt": 1, "p_worker": "w1", "p_state": "running",
                "new_state": "success", "outputs": outputs, "messages": [["execution_success", {"x": 1}]],
                "execution_error": None})
            assert result.rowcount == 1
    stored_null = text("SELECT prompt_id, state, outputs, messages, execution_error IS NULL FROM prompts")
    with database.engine.connect() as connection:
        stored = {row[0]: tuple(row[1:]) for row in connection.execute(stored_null)}
    assert stored[mine["prompt_id"]] == stored[theirs["prompt_id"]]


def test_driver_errors_are_sqlalchemys_and_the_transaction_rolls_back(context):
    database = context.database
    first, second = _prompt(1), _prompt(2)
    with database.write_connection() as connection:
        connection.execute(_INSERT, [first, second])
    with pytest.raises(IntegrityError):
        with database.write_connection() as connection:
            prepared.execute(connection, _RENAME, {"p_id": first["prompt_id"], "new_id": "renamed"})
            prepared.execute(connection, _RENAME, {"p_id": second["prompt_id"], "new_id": "renamed"})
    with database.engine.connect() as connection:
        assert connection.execute(select(_prompts.c.prompt_id).where(_prompts.c.prompt_id == "renamed")).first() is None


@pytest.fixture
def postgres_url(postgres_databases):
    service_url("database")  # skips, saying why, where no PostgreSQL is set
    with postgres_databases.database() as url:
        yield url


def test_a_lost_connection_is_invalidated_and_the_next_transaction_gets_a_fresh_one(postgres_url):
    database = make_database(postgres_url)
    try:
        with database.write_connection() as connection:
            connection.execute(_INSERT, [_prompt(1)])
        with database.engine.connect() as killer, pytest.raises(OperationalError) as raised:
            with database.write_connection() as connection:
                # What a PostgreSQL restart does to a pooled connection: its backend is gone.
                killer.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"))
                prepared.execute(connection, _BY_STATE, {"needs": []})
        assert raised.value.connection_invalidated
        with database.write_connection() as connection:
            assert len(prepared.execute(connection, _BY_STATE, {"needs": [1]}).all()) == 1
    finally:
        database.dispose()
