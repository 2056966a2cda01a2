"""Upgrading a running farm: `farm db upgrade` on PostgreSQL while web processes take submissions,
a coming migration that has to wait for a lock (it steps aside instead of blocking submissions),
and a rolling worker upgrade whose mix of builds /api/workers shows."""

from __future__ import annotations

import logging
import signal
import threading
import time

import pytest
from sqlalchemy import create_engine, text

from farm.db.migrate import upgrade
from tests.integration.scheduler_farm import SchedulerFarm, own_redis_url, sleep_prompt
from tests.services import fresh_postgres_database, service_url

pytestmark = pytest.mark.integration

EXPAND = '''"""A coming release's migration, rehearsed: a new table, and a column with its index on prompts.

Revision ID: 9998
Revises: {head}
"""
import sqlalchemy as sa
from alembic import op

from migrations import online

revision = "9998"
down_revision = "{head}"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table("rehearsal_notes", sa.Column("id", sa.Integer(), primary_key=True), sa.Column("note", sa.Text()))
    op.add_column("prompts", sa.Column("rehearsal_note", sa.Text(), nullable=True))
    online.create_index("ix_prompts_rehearsal_note", "prompts", ["rehearsal_note"])


def downgrade() -> None:
    online.drop_index("ix_prompts_rehearsal_note", "prompts")
    op.drop_column("prompts", "rehearsal_note")
    op.drop_table("rehearsal_notes")
'''

REHEARSAL = '''"""A coming migration, rehearsed: a column and an index on the live prompts table.

Revision ID: 9999
Revises: 9998
"""
import sqlalchemy as sa
from alembic import op

from migrations import online

revision = "9999"
down_revision = "9998"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("prompts", sa.Column("rehearsal", sa.Integer(), nullable=False, server_default="7"))
    online.create_index("ix_prompts_rehearsal", "prompts", ["rehearsal", "created_at"])


def downgrade() -> None:
    online.drop_index("ix_prompts_rehearsal", "prompts")
    op.drop_column("prompts", "rehearsal")
'''


class Submitter:
    """Client threads posting prompts to a farm until stopped; what each answer was, and when."""

    def __init__(self, farm: SchedulerFarm, threads: int = 4):
        self.farm, self.accepted, self.refused = farm, [], []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self) -> None:
        import json

        import requests

        session = requests.Session()
        while not self._stop.is_set():
            try:
                answer = session.post(f"{self.farm.url}/prompt", data=json.dumps({"prompt": sleep_prompt(1)}),
                                      timeout=60)
            except requests.RequestException as error:
                self.refused.append(repr(error))
                continue
            if answer.status_code == 200:
                self.accepted.append((time.monotonic(), answer.json()["prompt_id"]))
            else:
                self.refused.append(f"{answer.status_code} {answer.text[:200]}")

    def accepted_between(self, start: float, end: float) -> int:
        return sum(1 for at, _ in self.accepted if start <= at <= end)

    def __enter__(self):
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        for thread in self._threads:
            thread.join(90)


def stored_ids(database_url: str) -> set[str]:
    engine = create_engine(database_url.replace("postgresql://", "postgresql+psycopg://"))
    try:
        with engine.connect() as connection:
            return set(connection.execute(text("SELECT prompt_id FROM prompts")).scalars())
    finally:
        engine.dispose()


def test_submissions_go_on_while_migrations_run_and_a_migration_waits_for_a_lock(tmp_path, caplog):
    """A running farm at head, and a coming release's migrations applied under it as `farm db
    upgrade` applies them (farm.db.migrate.upgrade, with the coming files as an extra version folder)."""
    from alembic.script import ScriptDirectory

    from farm.db.migrate import alembic_config

    with fresh_postgres_database(service_url("database")) as database_url:
        redis_url = own_redis_url()
        farm = SchedulerFarm(tmp_path, database_url, redis_url, redis_url)
        versions = tmp_path / "coming"
        versions.mkdir()
        head = ScriptDirectory.from_config(alembic_config("")).get_current_head()
        (versions / "9998_expand.py").write_text(EXPAND.format(head=head))
        (versions / "9999_rehearsal.py").write_text(REHEARSAL)
        try:
            farm.start_web()
            with Submitter(farm) as submitter:
                time.sleep(1)
                # 1. A new table, a column and its index on prompts, while submissions flow.
                upgrade(database_url, "9998", extra_versions=[str(versions)])
                # 2. A migration that needs the prompts table to itself while a long transaction
                # (a report, a backup) reads it: it waits 300 ms at a time and steps aside in
                # between, so submissions keep being accepted until it gets its turn.
                reader = create_engine(database_url.replace("postgresql://", "postgresql+psycopg://"))
                report = reader.connect()
                report.execute(text("SELECT count(*) FROM prompts"))  # holds its lock until it ends
                caplog.set_level(logging.WARNING, logger="farm.db.migrate")
                migrating = threading.Thread(target=upgrade, args=(database_url,),
                                             kwargs={"lock_timeout_ms": 300, "extra_versions": [str(versions)]})
                blocked_at = time.monotonic()
                migrating.start()
                time.sleep(3)
                released_at = time.monotonic()
                report.rollback()
                report.close()
                migrating.join(120)
                assert not migrating.is_alive()
                time.sleep(0.5)
            assert "waited 300 ms for a lock" in caplog.text  # it did wait, and stepped aside
            assert submitter.accepted_between(blocked_at + 0.5, released_at) > 0
            assert submitter.refused == []
            accepted = {prompt_id for _, prompt_id in submitter.accepted}
            assert accepted <= stored_ids(database_url)  # every accepted submission is there
            with reader.connect() as connection:
                assert connection.execute(text(
                    "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                    "WHERE c.relname = 'ix_prompts_rehearsal'")).scalar() is True
                assert connection.execute(text("SELECT count(*) FROM prompts WHERE rehearsal = 7")).scalar() == \
                    len(stored_ids(database_url))
            reader.dispose()
        finally:
            farm.close()


def test_a_rolling_worker_upgrade_drains_replaces_and_shows_the_mix(tmp_path):
    with fresh_postgres_database(service_url("database")) as database_url:
        redis_url = own_redis_url()
        farm = SchedulerFarm(tmp_path, database_url, redis_url, redis_url)
        try:
            farm.start_web(wait=False)  # the workers start alongside
            farm.start_workers("w1", "w2", build="old")
            ids = [farm.submit(sleep_prompt(100, value=index)) for index in range(14)]
            mixes = []
            for name in ("w1", "w2"):  # one at a time, as a rolling update does
                stopping = farm.workers.pop(name)
                stopping.stop(signal.SIGTERM)  # drains: the running prompt ends first
                farm.start_worker(name, build="new")
                mixes.append(farm.http.get(f"{farm.url}/api/workers", timeout=10).json()["versions"])
            for prompt_id in ids:
                assert farm.history(prompt_id)["status"]["status_str"] == "success"
            from farm import __version__

            old, new = f"{__version__}+old", f"{__version__}+new"
            assert mixes == [{new: 1, old: 1}, {new: 2}]
            listed = farm.http.get(f"{farm.url}/api/workers", timeout=10).json()["workers"]
            assert {worker["name"]: worker["version"] for worker in listed} == {"w1": new, "w2": new}
            with create_engine(database_url.replace("postgresql://", "postgresql+psycopg://")).connect() as connection:
                runs = connection.execute(text("SELECT count(*), sum(attempt) FROM prompts")).one()
            assert runs[0] == 14
        finally:
            farm.close()
