"""How many prompts are in which states, per team, in O(1): read from the counts the triggers on
`prompts` keep (migration 0011), never counted over the rows.

On PostgreSQL the triggers append deltas rather than update a count row (updating one row from
every submission would make concurrent submissions wait for each other's commits, and could
deadlock). A read adds the deltas not yet folded in; `compact` folds them into prompt_counts, run
by every process's reaper loop, one process at a time. A read sees counts and deltas in one
snapshot, so it is exact whether or not a compaction committed meanwhile.
"""

from __future__ import annotations

from typing import Iterable

from sqlalchemy import Integer, bindparam, func, literal_column, select, text, union_all

from farm.db.models import PromptCount, PromptCountDelta

_counts, _deltas = PromptCount.__table__, PromptCountDelta.__table__
# An arbitrary constant naming the compaction's advisory lock.
_COMPACTION_LOCK = 0x6661726D  # "farm"
_COMPACT = text(
    "WITH moved AS (DELETE FROM prompt_count_deltas RETURNING team, state, n) "
    "INSERT INTO prompt_counts (team, state, n) "
    "SELECT team, state, sum(n) FROM moved GROUP BY team, state ORDER BY team, state "
    "ON CONFLICT (team, state) DO UPDATE SET n = prompt_counts.n + EXCLUDED.n"
)


def _statement(by_team: bool, scoped: bool):
    parts = []
    for table in (_counts, _deltas):
        part = select(table.c.team, table.c.state, table.c.n).where(table.c.state.in_(bindparam("states", expanding=True)))
        if scoped:
            part = part.where(table.c.team == bindparam("team"))
        parts.append(part)
    rows = union_all(*parts).subquery()
    total = func.coalesce(func.sum(rows.c.n), 0).cast(Integer)
    if by_team:
        return select(rows.c.team, total).group_by(rows.c.team)
    return select(total)


# Built once: the queue length is read on every status broadcast and GET /prompt.
_TOTAL, _TOTAL_OF_TEAM, _PER_TEAM = _statement(False, False), _statement(False, True), _statement(True, False)


def count(connection, states: Iterable[str], team: str | None = None) -> int:
    """Prompts in any of `states`, of `team` (None: every team's). `connection`: a Connection or Session."""
    parameters = {"states": list(states)}
    if team is None:
        return int(connection.execute(_TOTAL, parameters).scalar_one())
    return int(connection.execute(_TOTAL_OF_TEAM, {**parameters, "team": team}).scalar_one())


def per_team(connection, states: Iterable[str]) -> dict[str, int]:
    """Prompts in any of `states`, per team (teams with none left out)."""
    rows = connection.execute(_PER_TEAM, {"states": list(states)}).all()
    return {team: int(n) for team, n in rows if n}


def compact(database) -> bool:
    """Fold PostgreSQL's count deltas into the counts (nothing to do on SQLite). Another process
    compacting at the same moment makes this one skip: True when this call compacted."""
    if database.is_sqlite:
        return False
    with database.write_connection() as connection:
        if not connection.execute(select(func.pg_try_advisory_xact_lock(literal_column(str(_COMPACTION_LOCK))))).scalar():
            return False
        connection.execute(_COMPACT)
    return True
