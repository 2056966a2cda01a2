"""Fair share between teams (OpenCue's subscriptions, in worker slots): which team a free worker serves.

Each team has a `share` (slots it is guaranteed) and a `burst` (the most it may hold; None: no
cap), and may have `max_running` (a hard quota, the same kind of cap). When a worker frees up,
the teams that have work it can run and are below their caps are ranked by slots in use / share,
most starved first (a team running nothing ranks first; a share of 0 gets only what no other team
wants), then by how long their first prompt has waited. Within the chosen team the dispatcher
keeps the queue order and affinity. Capacity comes back only at prompt boundaries: nothing is
preempted. A farm with one team and no caps never asks: its order is the queue order.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import threading
import time

TEAMS_CACHE_SECONDS = 5.0


@dataclasses.dataclass(frozen=True)
class TeamLimits:
    share: float = 1.0
    burst: int | None = None
    max_running: int | None = None
    max_queued: int | None = None  # checked at submission (429 beyond it), not by dispatch
    webhook: str | None = None  # not a limit: the team's webhook URL, cached with the rest

    @property
    def cap(self) -> int | None:
        """The most slots the team may hold at once (None: no cap)."""
        caps = [value for value in (self.burst, self.max_running) if value is not None]
        return min(caps) if caps else None


@dataclasses.dataclass(frozen=True)
class TeamLoad:
    name: str
    limits: TeamLimits
    in_use: int  # prompts of the team dispatched or running now
    head: dt.datetime | None  # when the team's first prompt this worker can run was accepted; None: none

    @property
    def tier(self) -> float:
        if self.limits.share > 0:
            return self.in_use / self.limits.share
        return math.inf


def ranked(loads: list[TeamLoad]) -> list[TeamLoad]:
    """The teams a free worker may serve, best first: work it can run, below every cap, most
    starved (lowest in use / share), then the longest waiting."""
    eligible = [load for load in loads if load.head is not None
                and (load.limits.cap is None or load.in_use < load.limits.cap)]
    return sorted(eligible, key=lambda load: (load.tier, load.head, load.name))


class TeamBook:
    """Every team's share and caps, read at most every TEAMS_CACHE_SECONDS per process (they change
    when an admin changes them; a few seconds late is as good as at once)."""

    def __init__(self, read, ttl: float = TEAMS_CACHE_SECONDS):
        self._read = read  # () -> {name: TeamLimits}
        self._ttl = ttl
        self._teams: dict[str, TeamLimits] = {}
        self._at = -math.inf
        self._lock = threading.Lock()

    def teams(self) -> dict[str, TeamLimits]:
        if time.monotonic() - self._at > self._ttl:
            with self._lock:
                if time.monotonic() - self._at > self._ttl:
                    self._teams = self._read()
                    self._at = time.monotonic()
        return self._teams

    def limits(self, team: str) -> TeamLimits:
        return self.teams().get(team) or TeamLimits()

    def trivial(self) -> bool:
        """One team without caps: the queue order alone decides, no team needs ranking."""
        teams = self.teams()
        return len(teams) <= 1 and all(limits.cap is None for limits in teams.values())
