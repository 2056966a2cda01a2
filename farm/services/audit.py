"""The audit log: who changed someone else's work or the farm, what, and when (GET /api/audit)."""

from __future__ import annotations

from sqlalchemy import insert, select

from farm.db.clock import db_now
from farm.db.models import AuditEntry
from farm.services.principal import Principal

_INSERT = insert(AuditEntry.__table__).values(at=db_now())
MAX_PAGE = 500


def record(connection, actor: Principal, action: str, target: str, detail: dict | None = None) -> None:
    """One entry, written in the caller's transaction: the change and its record commit together."""
    connection.execute(_INSERT, {"actor": actor.actor, "actor_team": actor.team, "role": actor.role,
                                 "action": action, "target": target, "detail": detail or {}})


def record_alone(database, actor: Principal, action: str, target: str, detail: dict | None = None) -> None:
    """`record` in a transaction of its own (for actions whose change was committed already)."""
    with database.write_connection() as connection:
        record(connection, actor, action, target, detail)


def entries(database, *, before: int | None = None, limit: int = 100, action: str | None = None,
            team: str | None = None) -> dict:
    """Newest first, keyset-paged by id: {"entries": [...], "next": id to pass as `before`, or None}."""
    limit = max(1, min(limit, MAX_PAGE))
    query = select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit + 1)
    if before is not None:
        query = query.where(AuditEntry.id < before)
    if action:
        query = query.where(AuditEntry.action.startswith(action))
    if team:
        query = query.where(AuditEntry.actor_team == team)
    with database.reading() as session:
        rows = session.execute(query).scalars().all()
    page = rows[:limit]
    return {
        "entries": [{"id": row.id, "at": row.at.isoformat(), "actor": row.actor, "actor_team": row.actor_team,
                     "role": row.role, "action": row.action, "target": row.target, "detail": row.detail}
                    for row in page],
        "next": page[-1].id if len(rows) > limit else None,
    }
