"""INSERT ... ON CONFLICT for the two databases the farm runs on (both spell it the same way)."""

from __future__ import annotations

from sqlalchemy.dialects import postgresql, sqlite

from farm.db.models import Counter


def insert_for(connection, table):
    """The dialect's INSERT construct for `table`, which has on_conflict_do_nothing / _do_update."""
    dialect = postgresql if connection.dialect.name == "postgresql" else sqlite
    return dialect.insert(table)


def upsert_counter(connection, name: str, value: int) -> None:
    statement = insert_for(connection, Counter.__table__).values(name=name, value=value)
    connection.execute(statement.on_conflict_do_update(index_elements=["name"], set_={"value": value}))


def read_counter(connection, name: str) -> int:
    from sqlalchemy import select

    table = Counter.__table__
    return connection.execute(select(table.c.value).where(table.c.name == name)).scalar() or 0
