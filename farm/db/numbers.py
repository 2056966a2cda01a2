"""Prompt numbers (ComfyUI's queue counter, shared by every web process), as few or as many as asked.

PostgreSQL takes them from a sequence: nextval takes no row lock, so concurrent submissions from
every web process never wait for one another (an UPDATE of one counter row made them commit one
at a time). A sequence may skip numbers (a rolled-back submission's), which ComfyUI's clients
never notice: numbers order the queue, nothing counts on them being consecutive. SQLite writes one
transaction at a time anyway and keeps the counter row.
"""

from __future__ import annotations

from sqlalchemy import Connection, bindparam, func, select, text, update

from farm.db.direct_insert import DirectStatement
from farm.db.models import Counter

_counters = Counter.__table__
# Built once: submission is the hot path, and building statements costs more than running them.
_COUNTER_TAKE = (
    update(_counters).where(_counters.c.name == "prompt_number")
    .values(value=_counters.c.value + bindparam("count")).returning(_counters.c.value)
)
_SEQUENCE_ONE = text("SELECT nextval('prompt_number_seq')")
_SEQUENCE_MANY = select(func.nextval("prompt_number_seq")).select_from(
    func.generate_series(1, bindparam("count"))).order_by(text("1"))


def take(connection: Connection, count: int = 1) -> list[int]:
    """`count` new numbers in ascending order, in `connection`'s transaction."""
    if connection.dialect.name == "postgresql":
        if count == 1:
            return [connection.execute(_SEQUENCE_ONE).scalar_one()]
        return list(connection.execute(_SEQUENCE_MANY, {"count": count}).scalars())
    last = connection.execute(_COUNTER_TAKE, {"count": count}).scalar_one()
    return list(range(last - count, last))


class DirectNumbers:
    """`take` for a DirectWriter's cursor: the same statements, compiled once for `dialect`."""

    def __init__(self, dialect):
        self.sequence = dialect.name == "postgresql"
        if self.sequence:
            self._one, self._many = DirectStatement(dialect, _SEQUENCE_ONE), DirectStatement(dialect, _SEQUENCE_MANY)
        else:
            self._counter = DirectStatement(dialect, _COUNTER_TAKE)

    def take(self, cursor, count: int = 1) -> list[int]:
        if self.sequence:
            if count == 1:
                return [cursor.execute(self._one.sql, self._one.parameters()).fetchone()[0]]
            return [row[0] for row in cursor.execute(self._many.sql, self._many.parameters({"count": count})).fetchall()]
        last = cursor.execute(self._counter.sql, self._counter.parameters({"count": count})).fetchone()[0]
        return list(range(last - count, last))
