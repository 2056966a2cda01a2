"""The submission INSERT run straight on the driver (farm.db.direct_insert): it stores what
SQLAlchemy's own insert stores, raises SQLAlchemy's exceptions, survives a lost connection and
gives its connection back when the database is disposed."""

from __future__ import annotations

import time
import uuid

import pytest
from sqlalchemy import insert, select, text
from sqlalchemy.exc import IntegrityError, OperationalError

from farm.db.clock import db_now
from farm.db.models import Prompt, PromptState
from farm.db.session import IDLE_PING_SECONDS, make_database
from farm.services.group_commit import GroupCommit
from tests.services import service_url



@pytest.fixture
def postgres_url(postgres_databases):
    service_url("database")  # skips, saying why, where no PostgreSQL is set
    with postgres_databases.database() as url:
        yield url


_COMPARED = [column for column in Prompt.__table__.c if column.name not in ("prompt_id", "created_at")]


def _row(**changes) -> dict:
    row = dict(prompt_id=str(uuid.uuid4()), front=True, client_id="client", number=7.5,
               prompt={"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "text": "é\u2603", "big": 2 ** 53}}},
               extra_data={"client_id": "client", "extra_pnginfo": {"workflow": {"id": "w"}}},
               outputs_to_execute=["1"], partial_execution_targets=None, request_hash="ab" * 32,
               node_errors={"2": {"errors": []}}, state=PromptState.QUEUED.value, attempt=0, team="default",
               queue_rank=0, needs_id=None, coalesce_key="c" * 48, workflow_id="w")
    return row | changes


def test_a_direct_insert_stores_what_sqlalchemys_insert_stores(context):
    database = context.database
    direct, through_sqlalchemy = _row(), _row()
    GroupCommit(database).insert(direct, number=False)
    with database.write_connection() as connection:
        connection.execute(insert(Prompt.__table__).values(created_at=db_now()), [through_sqlalchemy])
    with database.engine.connect() as connection:
        stored = {row.prompt_id: row for row in connection.execute(select(Prompt.__table__))}
    mine, theirs = stored[direct["prompt_id"]], stored[through_sqlalchemy["prompt_id"]]
    assert {c.name: getattr(mine, c.name) for c in _COMPARED} == {c.name: getattr(theirs, c.name) for c in _COMPARED}
    assert mine.priority == 50 and mine.retries == 0  # the columns' defaults, as SQLAlchemy fills them
    # Stored alike too, not only read back alike: None in a JSON column is JSON null, not SQL NULL.
    stored_null = text("SELECT prompt_id, partial_execution_targets IS NULL FROM prompts")
    with database.engine.connect() as connection:
        nulls = dict(connection.execute(stored_null).all())
    assert nulls[direct["prompt_id"]] == nulls[through_sqlalchemy["prompt_id"]]
    assert mine.created_at is not None and abs((mine.created_at - theirs.created_at).total_seconds()) < 60


def test_a_duplicate_is_sqlalchemys_integrity_error_and_the_writer_goes_on(context):
    commit = GroupCommit(context.database)
    first = _row()
    commit.insert(first, number=True)
    with pytest.raises(IntegrityError):
        commit.insert(_row(prompt_id=first["prompt_id"]), number=True)
    after = _row()
    commit.insert(after, number=True)  # the failed transaction was rolled back, not left open
    with context.database.reading() as session:
        assert session.scalar(select(Prompt.number).where(Prompt.prompt_id == after["prompt_id"])) == after["number"]


def test_a_lost_connection_fails_one_submission_and_the_next_gets_a_fresh_one(postgres_url):
    database = make_database(postgres_url)
    try:
        commit = GroupCommit(database)
        commit.insert(_row(), number=True)
        with database.engine.connect() as connection:  # what a PostgreSQL restart does to it
            connection.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                     "WHERE datname = current_database() AND pid <> pg_backend_pid()"))
        with pytest.raises(OperationalError):
            commit.insert(_row(), number=True)
        commit.insert(_row(), number=True)
    finally:
        database.dispose()


def test_a_database_that_cannot_be_reached_is_sqlalchemys_operational_error():
    database = make_database("postgresql://postgres@127.0.0.1:1/nowhere")  # nothing listens on port 1
    try:
        with pytest.raises(OperationalError):  # what the web answers 503 for, as for any outage
            GroupCommit(database).insert(_row(), number=True)
    finally:
        database.dispose()


def test_a_connection_lost_while_idle_is_replaced_before_the_next_submission(postgres_url):
    database = make_database(postgres_url)
    try:
        commit = GroupCommit(database)
        commit.insert(_row(), number=True)
        with database.engine.connect() as connection:
            connection.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"))
        time.sleep(IDLE_PING_SECONDS + 0.2)  # idle long enough to be pinged, as the pool's are
        commit.insert(_row(), number=True)  # no error: the dead connection was found and replaced
    finally:
        database.dispose()


def test_dispose_gives_the_kept_connection_back(postgres_url):
    database = make_database(postgres_url)
    GroupCommit(database).insert(_row(), number=True)
    database.dispose()
    observer = make_database(postgres_url)
    try:
        with observer.engine.connect() as connection:
            others = connection.execute(text("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                                             "AND pid <> pg_backend_pid()")).scalar_one()
        assert others == 0
    finally:
        observer.dispose()
