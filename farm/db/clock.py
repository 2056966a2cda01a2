"""The database's clock in SQL: liveness and timeouts are judged by one clock, not each host's.

`db_now()` is the current UTC time on the database server; `seconds_ago(s)` is that time minus
`s` seconds (a bound parameter), `seconds_from_now(s)` plus. Both compare with the UTCDateTime columns: a timestamp with time
zone on PostgreSQL, and on SQLite the same text layout SQLAlchemy writes ("YYYY-MM-DD
HH:MM:SS.ffffff", UTC), so text comparison orders them correctly.
"""

from __future__ import annotations

from sqlalchemy import bindparam
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.expression import FunctionElement

from farm.db.models import UTCDateTime

# strftime's %f gives milliseconds ("SS.SSS"); three zeros make SQLAlchemy's microsecond layout.
_SQLITE_NOW = "strftime('%Y-%m-%d %H:%M:%f000', 'now'{shift})"


class db_now(FunctionElement):
    type = UTCDateTime()
    inherit_cache = True


class seconds_ago(FunctionElement):
    """The database's now minus a number of seconds given as the only argument."""

    type = UTCDateTime()
    inherit_cache = True
    sign = "-"


@compiles(db_now)
def _now_default(element, compiler, **kw):
    return "CURRENT_TIMESTAMP"


@compiles(db_now, "postgresql")
def _now_postgresql(element, compiler, **kw):
    # statement_timestamp(): a long transaction must not see an old now() on its later statements.
    return "statement_timestamp()"


@compiles(db_now, "sqlite")
def _now_sqlite(element, compiler, **kw):
    return _SQLITE_NOW.format(shift="")


class seconds_from_now(seconds_ago):
    """The database's now plus a number of seconds given as the only argument."""

    inherit_cache = True
    sign = "+"


# One compilation for both directions: `sign` says which.
@compiles(seconds_ago, "postgresql")
def _shifted_postgresql(element, compiler, **kw):
    return f"(statement_timestamp() {element.sign} make_interval(secs => {compiler.process(element.clauses, **kw)}))"


@compiles(seconds_ago, "sqlite")
def _shifted_sqlite(element, compiler, **kw):
    return _SQLITE_NOW.format(shift=f", '{element.sign}' || ({compiler.process(element.clauses, **kw)}) || ' seconds'")


def later(seconds: float):
    """`seconds_from_now` of a float value."""
    from sqlalchemy import Float

    return seconds_from_now(bindparam(None, seconds, type_=Float))


def ago(name: str):
    """`seconds_ago` of a float bound parameter called `name` (for prebuilt statements)."""
    from sqlalchemy import Float

    return seconds_ago(bindparam(name, type_=Float))
