"""An INSERT compiled once by SQLAlchemy and then run straight on the database driver.

Submission is the farm's hottest write: per prompt, SQLAlchemy's Core execution (connection
checkout and events, execution context, parameter processing) cost several times what the
driver's own execute and commit cost. `DirectInsert` keeps what SQLAlchemy decided (the SQL for
the engine's dialect, each column's bind processor such as JSON serialisation, the columns'
scalar defaults) and leaves only the driver call on the hot path. `DirectWriter` runs such
statements in one transaction on one connection kept for the purpose, and raises SQLAlchemy's
exceptions (IntegrityError, OperationalError ...) as SQLAlchemy would.

Written here because SQLAlchemy offers no public "compiled statement, bare execute" path; the
compilation and the exception wrapping are SQLAlchemy's own.
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Iterator, Sequence

from sqlalchemy import Table, exc, insert

from farm.db.session import IDLE_PING_SECONDS


class DirectInsert:
    """INSERT INTO `table` for rows with exactly the keys `keys`, plus `sql_values` (column ->
    SQL expression, e.g. the database's clock). Columns left out get their scalar defaults."""

    def __init__(self, dialect, table: Table, keys: Sequence[str], sql_values: dict | None = None):
        compiled = insert(table).values(sql_values or {}).compile(dialect=dialect, column_keys=list(keys))
        self.sql = compiled.string
        self.positional = bool(compiled.positional)
        names = list(compiled.positiontup) if self.positional else list(compiled.construct_params({k: None for k in keys}))
        self.names = names
        self.keys = frozenset(keys)
        self.defaults: dict = {}
        for name in names:
            if name in self.keys:
                continue
            default = table.c[name].default
            if default is None or not default.is_scalar:
                raise ValueError(f"{table.name}.{name} must be given: it has no scalar default")
            self.defaults[name] = default.arg
        processors = compiled._bind_processors  # SQLAlchemy's per-column conversions (JSON, bool ...)
        self.processors = [(name, processors.get(name)) for name in names]

    def parameters(self, row: dict):
        """The driver's parameters for one row (a tuple for positional drivers, else a dict)."""
        # None goes through the processor too: a JSON column stores it as JSON null, as SQLAlchemy does.
        values = [
            (processor(value) if processor is not None else value)
            for name, processor in self.processors
            for value in (row[name] if name in row else self.defaults[name],)
        ]
        return tuple(values) if self.positional else dict(zip(self.names, values))


class DirectStatement:
    """Any statement compiled once for `dialect`; `parameters(values)` gives the driver's
    parameters (SQLAlchemy's construct_params: literal values bound by the statement included).
    For statements run once per transaction; per-row INSERTs use DirectInsert."""

    def __init__(self, dialect, statement):
        self.compiled = statement.compile(dialect=dialect)
        self.sql = self.compiled.string

    def parameters(self, values: dict | None = None):
        params = self.compiled.construct_params(values or {})
        processors = self.compiled._bind_processors
        params = {name: (processors[name](value) if name in processors else value) for name, value in params.items()}
        if self.compiled.positional:
            return tuple(params[name] for name in self.compiled.positiontup)
        return params


class DirectWriter:
    """One transaction at a time on a connection kept for hot writes (a pooled connection held
    for the life of the process). Not for concurrent use: callers serialize (GroupCommit's leader)."""

    def __init__(self, database):
        self.database = database
        self.dialect = database.engine.dialect
        self._connection = None
        self._used = 0.0  # monotonic time of the kept connection's last transaction
        self._lock = threading.Lock()
        database.on_dispose(self.close)

    @contextlib.contextmanager
    def transaction(self) -> Iterator["DirectCursor"]:
        """A cursor in one write transaction: committed on success, rolled back on error; driver
        errors come out as SQLAlchemy's (a lost connection is dropped, the next one is fresh)."""
        with self._lock, self.database.write_lock():
            if self._connection is not None and time.monotonic() - self._used > IDLE_PING_SECONDS:
                self._ping()  # as the pool pings an idle connection at checkout (farm.db.session)
            if self._connection is None:
                try:
                    self._connection = self.database.engine.raw_connection()
                except self.dialect.loaded_dbapi.Error as error:  # raw_connection does not wrap it
                    raise exc.DBAPIError.instance(None, None, error, self.dialect.loaded_dbapi.Error,
                                                  dialect=self.dialect) from error
            self._used = time.monotonic()
            connection = self._connection
            cursor = DirectCursor(connection.cursor())
            try:
                self.database.begin_write(connection.driver_connection)
                yield cursor
                connection.driver_connection.commit()  # as SQLAlchemy commits, on both drivers
            except BaseException as error:
                self._abandon(connection, cursor, error)
                if isinstance(error, self.dialect.loaded_dbapi.Error):
                    raise exc.DBAPIError.instance(
                        cursor.statement, None, error, self.dialect.loaded_dbapi.Error,
                        connection_invalidated=self._connection is None, dialect=self.dialect) from error
                raise
            finally:
                cursor.close()

    def _ping(self) -> None:
        """Drop the kept connection if it died while idle (a database restart), so that the next
        submission does not fail on it."""
        try:
            self.dialect.do_ping(self._connection.driver_connection)
        except Exception:  # noqa: BLE001 - any failure means this connection is unusable
            self._connection.invalidate()
            self._connection = None

    def _abandon(self, connection, cursor, error: BaseException) -> None:
        lost = isinstance(error, self.dialect.loaded_dbapi.Error) and \
            self.dialect.is_disconnect(error, connection.driver_connection, cursor.cursor)
        if not lost:
            try:
                connection.driver_connection.rollback()
                return
            except self.dialect.loaded_dbapi.Error:
                pass  # a connection that cannot roll back is no longer one to keep
        self._connection = None
        connection.invalidate()

    def close(self) -> None:
        with self._lock:
            if self._connection is not None:
                self._connection.close()
                self._connection = None


class DirectCursor:
    """The driver's cursor, remembering its last statement for error messages."""

    def __init__(self, cursor):
        self.cursor = cursor
        self.statement: str | None = None

    def execute(self, sql: str, parameters=()):
        self.statement = sql
        self.cursor.execute(sql, parameters)
        return self.cursor

    def executemany(self, sql: str, rows: list) -> None:
        self.statement = sql
        self.cursor.executemany(sql, rows)

    def close(self) -> None:
        self.cursor.close()
