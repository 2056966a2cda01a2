"""Schema changes that keep a running farm serving while `farm db upgrade` applies them.

On PostgreSQL, `CREATE INDEX` blocks every write to its table until the index is built, so indexes
on live tables are built CONCURRENTLY (outside the migration's transaction; writes go on). A build
that failed half-way leaves an invalid index of that name, which is dropped and built again. Other
databases (SQLite, one host) build them plainly. Every migration also runs in a transaction of its
own under a short lock_timeout (migrations/env.py), so a migration waiting for a lock fails and is
retried instead of queueing every submission behind it.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


def _postgresql() -> bool:
    return op.get_bind().dialect.name == "postgresql"


def create_index(name: str, table: str, columns: list[str], **options) -> None:
    if not _postgresql():
        op.create_index(name, table, columns, **options)
        return
    with op.get_context().autocommit_block():
        valid = op.get_bind().execute(sa.text(
            "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid WHERE c.relname = :name"),
            {"name": name}).scalar()
        if valid is False:  # a concurrent build that was interrupted: start again
            op.drop_index(name, table_name=table, postgresql_concurrently=True)
        if valid is not True:
            op.create_index(name, table, columns, postgresql_concurrently=True, **options)


def drop_index(name: str, table: str) -> None:
    if not _postgresql():
        op.drop_index(name, table_name=table)
        return
    with op.get_context().autocommit_block():
        op.drop_index(name, table_name=table, postgresql_concurrently=True, if_exists=True)
