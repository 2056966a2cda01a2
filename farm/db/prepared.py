"""Hot statements compiled once by SQLAlchemy and run on the driver, inside SQLAlchemy's transactions.

A busy worker's step between two prompts (record the end, count it, take and claim the next)
runs five statements in one write transaction, and on SQLite that transaction holds the only
write lock every submission waits for. SQLAlchemy's Core execution (execution context, events,
parameter and result processing) cost more per statement than the driver's execute of these
statements. `execute(connection, statement, values)` keeps what SQLAlchemy decided (the SQL for the
connection's dialect, IN lists expanded as SQLAlchemy expands them, each parameter's bind
processor, each result column's result processor) and leaves the driver call on the hot path. The
transaction stays SQLAlchemy's (`database.write_connection()`): its begin, commit, rollback, retries
and pool are unchanged; driver errors come out as SQLAlchemy's, and a connection the driver lost is
invalidated, as SQLAlchemy's own execute does. SQLAlchemy's statement-level execution events
(before_execute, before_cursor_execute ...) do not fire for these statements: the farm listens to
none of them (farm.db.session uses connection and pool events only, which still fire).

Written here because SQLAlchemy has no public "compiled statement, bare execute" path; what it
does with the statement (compilation, expanded IN lists, processors, exception wrapping) is its own.
"""

from __future__ import annotations

import collections
import threading

from sqlalchemy import exc


class Rows:
    """What `execute` returns: the rows (named tuples, read at once) and the rowcount."""

    __slots__ = ("rows", "rowcount")

    def __init__(self, rows: list, rowcount: int):
        self.rows = rows
        self.rowcount = rowcount

    def __iter__(self):
        return iter(self.rows)

    def all(self) -> list:
        return self.rows

    def first(self):
        return self.rows[0] if self.rows else None

    def one(self):
        if len(self.rows) != 1:
            raise exc.NoResultFound("no row") if not self.rows else exc.MultipleResultsFound("several rows")
        return self.rows[0]

    def scalar(self):
        return self.rows[0][0] if self.rows else None


class _Variant:
    """One statement's SQL for one set of IN-list lengths: where each driver parameter comes from
    (a value of construct_params, or item `index` of the list `key`) and its bind processor."""

    def __init__(self, compiled, base: dict, expanding: tuple[str, ...]):
        state = compiled.construct_expanded_state(base)
        self.sql = state.statement
        self.positional = state.positiontup is not None
        self.names = list(state.positiontup) if self.positional else list(state.parameters)
        # The statement's own processors (JSON, booleans ...), and those of the expanded items.
        processors = {**compiled._bind_processors, **state.processors}
        self.sources = []
        for name in self.names:
            if name in base and name not in expanding:
                source = (name, None)
            else:  # SQLAlchemy names an expanded list's items key_1, key_2 ...
                key, _, number = name.rpartition("_")
                source = (key, int(number) - 1)
            self.sources.append((name, source, processors.get(name)))
        # The naming is SQLAlchemy's convention, not its API: checked against its own expansion.
        if self._values(base) != [state.parameters[name] for name in self.names]:
            raise ValueError(f"unexpected expansion of IN lists in {self.sql!r}")

    def _values(self, base: dict) -> list:
        return [base[key] if index is None else base[key][index] for _, (key, index), _ in self.sources]

    def parameters(self, base: dict):
        values = [
            processor(value) if processor is not None else value
            for (_, _, processor), value in zip(self.sources, self._values(base))
        ]
        return tuple(values) if self.positional else dict(zip(self.names, values))


class _Prepared:
    """A statement compiled for one dialect, with a variant per IN-list lengths and the row type."""

    def __init__(self, statement, dialect):
        self.compiled = statement.compile(dialect=dialect)
        # IN lists (and other late-rendered parameters): their lengths pick the variant.
        names = self.compiled.bind_names
        self.expanding = tuple(sorted(names[bind] for bind in self.compiled.post_compile_params))
        self.variants: dict[tuple, _Variant] = {}
        columns = list(statement.exported_columns)  # a SELECT's columns, or what an UPDATE returns
        self.row = collections.namedtuple("Row", [column.key or f"_{i}" for i, column in enumerate(columns)],
                                          rename=True) if columns else None
        self.types = [column.type.dialect_impl(dialect) for column in columns]
        self.dialect = dialect
        self.result_processors: list | None = None  # from the first result's column type codes

    def _result_processors(self, description) -> list:
        # The driver's type code of each column matters to some (PostgreSQL's numerics), as it does
        # to SQLAlchemy; a statement's result columns keep their types from one execution to the next.
        processors = [type_.result_processor(self.dialect, column[1])
                      for type_, column in zip(self.types, description)]
        return processors if any(processors) else []

    def driver_parameters(self, values: dict | None):
        base = self.compiled.construct_params(values or {})
        key = tuple(len(base[name]) for name in self.expanding)
        variant = self.variants.get(key)
        if variant is None:
            variant = self.variants[key] = _Variant(self.compiled, base, self.expanding)
        return variant.sql, variant.parameters(base)

    def rows(self, cursor) -> list:
        if self.row is None or cursor.description is None:
            return []
        fetched = cursor.fetchall()
        make = self.row._make
        processors = self.result_processors
        if processors is None:
            processors = self.result_processors = self._result_processors(cursor.description)
        if not processors:
            return [make(row) for row in fetched]
        return [make([value if processor is None or value is None else processor(value)
                      for processor, value in zip(processors, row)]) for row in fetched]


_prepared: dict[tuple[int, str], tuple[object, _Prepared]] = {}
_prepared_lock = threading.Lock()


def _prepare(statement, dialect) -> _Prepared:
    key = (id(statement), dialect.name)
    found = _prepared.get(key)
    if found is None or found[0] is not statement:
        with _prepared_lock:
            # The statement is kept with its compiled form: its id stays its own.
            found = _prepared[key] = (statement, _Prepared(statement, dialect))
    return found[1]


def execute(connection, statement, values: dict | None = None) -> Rows:
    """Run `statement` (built once, at import: module-level statements only) with `values` on
    `connection`'s driver connection, in its current transaction; its rows and rowcount."""
    dialect = connection.dialect
    prepared = _prepare(statement, dialect)
    if not connection.in_transaction():
        connection.begin()  # as SQLAlchemy's execute begins one ("autobegin"): one snapshot per connection
    sql, parameters = prepared.driver_parameters(values)
    driver_connection = connection.connection.dbapi_connection
    cursor = driver_connection.cursor()
    try:
        cursor.execute(sql, parameters)
        return Rows(prepared.rows(cursor), cursor.rowcount)
    except dialect.loaded_dbapi.Error as error:
        lost = dialect.is_disconnect(error, driver_connection, cursor)
        if lost:
            connection.invalidate(error)
        raise exc.DBAPIError.instance(sql, parameters, error, dialect.loaded_dbapi.Error,
                                      connection_invalidated=lost, dialect=dialect) from error
    finally:
        cursor.close()
