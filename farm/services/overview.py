"""The farm at a glance (the dashboard's overview), for one team or for all: workers by state, queue
depth and running prompts per team, each team's share / burst / slots in use, the last hour's
images per minute, queue wait p50 / p95 and failures by error type."""

from __future__ import annotations

import collections
import datetime as dt
import statistics

from sqlalchemy import func, select

from farm.db.clock import ago
from farm.db.models import Prompt, PromptState, Team
from farm.services import steering
from farm.services.principal import Principal

HOUR_SAMPLE = 20000  # the most finished prompts of the last hour read for its figures


def overview(database, settings, principal: Principal) -> dict:
    scope = principal.scope
    active = [s.value for s in PromptState.active()]
    pending = [PromptState.QUEUED.value, PromptState.PAUSED.value]

    def scoped(query):
        return query if scope is None else query.where(Prompt.team == scope)

    with database.reading() as session:
        by_team = collections.defaultdict(lambda: {"queued": 0, "paused": 0, "running": 0})
        for team, state, count in session.execute(scoped(
                select(Prompt.team, Prompt.state, func.count()).where(Prompt.state.in_([*pending, *active]))
                .group_by(Prompt.team, Prompt.state))):
            key = "running" if state in active else state
            by_team[team][key] += count
        teams = session.execute(select(Team).order_by(Team.name)).scalars().all()
        finished = session.execute(scoped(
            select(Prompt.state, Prompt.created_at, Prompt.started_at, Prompt.finished_at, Prompt.execution_error)
            .where(Prompt.finished_at >= ago("hour"), Prompt.state.in_([s.value for s in PromptState.finished()]))
            .order_by(Prompt.finished_at.desc()).limit(HOUR_SAMPLE)), {"hour": 3600.0}).all()
    shares = [{"name": team.name, "share": team.share, "burst": team.burst, "max_running": team.max_running,
               **by_team.get(team.name, {"queued": 0, "paused": 0, "running": 0})}
              for team in teams if principal.sees(team.name)]
    waits = sorted((row.started_at - row.created_at).total_seconds() for row in finished
                   if row.started_at is not None and row.created_at is not None)
    failures = collections.Counter(
        (row.execution_error or {}).get("exception_type") or row.state for row in finished
        if row.state != PromptState.SUCCESS.value)
    worker_states = collections.Counter()
    if principal.is_admin:
        for worker in steering.list_workers(database, settings, {}):
            worker_states[worker["state"]] += 1
    return {
        "series": _series(finished),
        "teams": shares,
        "workers": dict(worker_states),
        "images_per_minute": round(sum(1 for row in finished if row.state == PromptState.SUCCESS.value) / 60, 2),
        "queue_wait_p50": round(statistics.median(waits), 2) if waits else None,
        "queue_wait_p95": round(waits[min(len(waits) - 1, int(0.95 * len(waits)))], 2) if waits else None,
        "failures": dict(failures.most_common()),
        "sampled": len(finished),
    }


def _series(finished) -> dict:
    """The last hour for the charts: images per minute (60 points) and queue wait p50 / p95 per
    five minutes (12 points), as unix seconds and values (uPlot's columns)."""
    now = dt.datetime.now(dt.timezone.utc).replace(second=0, microsecond=0)
    start = now - dt.timedelta(minutes=59)
    images = [0] * 60
    waits: list[list[float]] = [[] for _ in range(12)]
    for row in finished:
        if row.finished_at is None:
            continue
        minute = int((row.finished_at - start).total_seconds() // 60)
        if 0 <= minute < 60:
            if row.state == PromptState.SUCCESS.value:
                images[minute] += 1
            if row.started_at is not None and row.created_at is not None:
                waits[minute // 5].append((row.started_at - row.created_at).total_seconds())

    def quantile(values: list[float], q: float):
        if not values:
            return None
        ordered = sorted(values)
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)

    base = int(start.timestamp())
    return {"minutes": [base + 60 * index for index in range(60)], "images": images,
            "wait_at": [base + 300 * index for index in range(12)],
            "wait_p50": [quantile(values, 0.5) for values in waits],
            "wait_p95": [quantile(values, 0.95) for values in waits]}
