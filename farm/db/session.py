"""Engines and sessions for SQLite and PostgreSQL, with the locking each needs for writes.

SQLite allows one writer at a time. A transaction that reads first and writes later can fail
with "database is locked" when another process wrote in between, so every write transaction
here starts with `BEGIN IMMEDIATE` (it takes the write lock up front and waits for it), while
reads use plain deferred transactions and never block writers (WAL mode).

The farm's writers wait for one another before BEGIN IMMEDIATE, not inside SQLite: SQLite's
busy handler sleeps in steps of a millisecond and more, which capped processes sharing the file
at a few hundred commits per second. They queue (farm.db.writer_queue: threads on a Python lock,
processes on a file lock the kernel hands on at once), so BEGIN IMMEDIATE finds the database
free; only a writer outside the farm (the sqlite3 shell, a migration) makes it wait, in SQLite's
busy handler, for up to BUSY_TIMEOUT_MS.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from sqlalchemy import Connection, Engine, create_engine, event, exc
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from farm.db.writer_queue import WriterQueue

BUSY_TIMEOUT_MS = 30000
# A pooled connection idle longer than this is pinged before use. One in steady use is not:
# a ping per checkout is a round trip on every prompt and request, the largest single cost of a
# worker's step between two prompts. A connection that died within this window fails its next
# statement; SQLAlchemy then invalidates every connection of the pool, the hot paths that must
# not fail (recording a prompt's end, claiming) retry, and any other caller answers as in an outage.
IDLE_PING_SECONDS = 1.0


@dataclass
class Database:
    engine: Engine
    writer: Engine  # the engine with the write execution option (BEGIN IMMEDIATE on SQLite)
    read: sessionmaker
    write_factory: sessionmaker
    # SQLite's writers on this host, queued (farm.db.writer_queue); None on PostgreSQL.
    writers: WriterQueue | None = None
    # Called by dispose() first: holders of a connection kept outside the pool (DirectWriter).
    _on_dispose: list = field(default_factory=list)

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    @contextlib.contextmanager
    def write(self) -> Iterator[Session]:
        """A session for one write transaction: committed on success, rolled back on error."""
        with self.write_lock(), self.write_factory() as session, session.begin():
            yield session

    @contextlib.contextmanager
    def write_connection(self) -> Iterator[Connection]:
        """A Core connection in one write transaction, for hot paths that skip the ORM."""
        with self.write_lock(), self.writer.begin() as connection:
            yield connection

    def write_lock(self):
        """What every writer of this process holds for a write transaction (SQLite: one writer)."""
        return self.writers if self.writers is not None else contextlib.nullcontext()

    def begin_write(self, driver_connection) -> None:
        """Start a write transaction on a driver connection outside SQLAlchemy (DirectWriter's):
        BEGIN IMMEDIATE on SQLite; PostgreSQL's driver begins implicitly."""
        if self.is_sqlite:
            driver_connection.execute("BEGIN IMMEDIATE")

    @contextlib.contextmanager
    def reading(self) -> Iterator[Session]:
        with self.read() as session:
            yield session

    def on_dispose(self, callback) -> None:
        self._on_dispose.append(callback)

    def dispose(self) -> None:
        for callback in self._on_dispose:
            callback()
        self.engine.dispose()
        if self.writers is not None:
            self.writers.close()


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record):
        # Let SQLAlchemy's "begin" event decide how transactions start (pysqlite's own
        # implicit BEGIN would defeat BEGIN IMMEDIATE).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        # WAL + NORMAL: a commit survives a crash of any farm process; only an OS crash or
        # power loss can roll back the last commits.
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection):
        # Straight to the driver: this runs for every transaction, and SQLAlchemy's statement
        # machinery would cost more than the BEGIN itself.
        driver = connection.connection.driver_connection
        driver.execute("BEGIN IMMEDIATE" if connection.get_execution_options().get("farm_write", False) else "BEGIN")


def _ping_when_idle(engine: Engine) -> None:
    """SQLAlchemy's pessimistic disconnect handling (its `checkout` event recipe), only for
    connections that sat in the pool longer than IDLE_PING_SECONDS (pool_pre_ping pings every time)."""

    @event.listens_for(engine, "checkin")
    def _on_checkin(_dbapi_connection, record):
        record.info["checked_in"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _on_checkout(dbapi_connection, record, _proxy):
        if time.monotonic() - record.info.get("checked_in", 0.0) <= IDLE_PING_SECONDS:
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except Exception as error:  # noqa: BLE001 - any failure means this connection is unusable
            # The pool discards this connection and checks out another (a fresh one if need be).
            raise exc.DisconnectionError(str(error)) from error


def _writer_queue(url) -> WriterQueue:
    in_memory = not url.database or url.database == ":memory:" or url.query.get("mode") == "memory"
    return WriterQueue(None if in_memory else Path(url.database).resolve())


def make_database(url: str, *, pool_size: int = 10) -> Database:
    """Engine plus read and write session factories for `url`; creates the SQLite folder."""
    parsed = make_url(url)
    kwargs: dict = {"future": True}
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
    else:
        if parsed.drivername == "postgresql":
            url = parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
        kwargs.update(pool_size=pool_size, max_overflow=20)
    engine = create_engine(url, **kwargs)
    if engine.dialect.name == "sqlite":
        _configure_sqlite(engine)
    else:
        _ping_when_idle(engine)
    writer = engine.execution_options(farm_write=True)
    return Database(
        writers=_writer_queue(parsed) if engine.dialect.name == "sqlite" else None,
        engine=engine,
        writer=writer,
        read=sessionmaker(engine, expire_on_commit=False),
        write_factory=sessionmaker(writer, expire_on_commit=False),
    )
