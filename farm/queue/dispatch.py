"""The dispatcher: hands queued prompts, in SQL order, to idle workers that can run them.

Invariants:
- The order of pending prompts is `ORDER BY queue_rank, number, prompt_id` in SQL (front first,
  then batch priority, then ComfyUI's number order; without batches, exactly ComfyUI's order); a
  paused batch's cells are `paused`, not queued, so no pass sees them. With several teams (or a
  team with caps), a free worker first picks the team by fair share (`farm.queue.fair_share`),
  then the prompt in that order within the team; a team at its burst or max_running gets none
  (its row is locked while its slots are counted). The broker never holds a
  backlog: a worker has at most one outstanding (dispatched or running) prompt. (A deeper
  per-worker queue would leave prompts waiting behind a long one where no other worker can take
  them, and an unclaimed one would look lost.)
- A worker is offered only prompts it can run: every model file the prompt needs is in the
  worker's report, and every tag its batch requires is among the worker's tags. Among those,
  `farm.queue.placement.choose` decides (retries elsewhere, bounded checkpoint affinity). A
  batch with `max_workers` gets no more workers than that (its row is locked while one of its
  cells is taken). Draining and locked workers get nothing; nor does anyone while dispatch is
  paused farm-wide.
- A pass serves every idle worker in one transaction. Each assignment first locks the worker's
  row (`FOR UPDATE` on PostgreSQL, in name order; `BEGIN IMMEDIATE` serializes writers on
  SQLite), re-checks that it is live, idle and steerable, then moves the chosen prompt
  `queued -> dispatched` with a conditional UPDATE that skips a row another dispatcher holds (a
  prompt taken or being taken meanwhile is not taken twice, nor waited for: the pick moves to the
  next candidate), so any number of dispatchers in any number of processes can run at once.
- The messages (ids only) are sent after the commit. If sending fails, the assignments not sent
  are undone (queued again, attempt restored) and the next dispatch retries them.
- A busy worker takes its next prompt itself (`take_next`) in the transaction that records its
  last one, claimed at once: between two prompts of a busy worker there is one commit and no
  broker round trip. Messages only wake idle workers.
"""

from __future__ import annotations

import dataclasses
import logging

from sqlalchemy import and_, bindparam, exists, func, not_, or_, select, update

from farm.db import prepared
from farm.db.clock import ago, db_now
from farm.db.models import Batch, BatchBlock, Counter, ModelNeeds, Prompt, PromptState, Team, Worker
from farm.queue import fair_share, placement
from farm.queue.sender import Assignment

log = logging.getLogger(__name__)

PAUSED = "dispatch_paused"  # the counters row that pauses dispatch farm-wide when 1

_prompts, _workers, _needs, _counters = Prompt.__table__, Worker.__table__, ModelNeeds.__table__, Counter.__table__
_batches, _teams, _blocks = Batch.__table__, Team.__table__, BatchBlock.__table__
_ACTIVE = [state.value for state in PromptState.active()]
_QUEUED = PromptState.QUEUED.value
_LIVE = (_workers.c.session != "") & (_workers.c.last_seen >= ago("timeout"))
_STEERABLE = _LIVE & not_(_workers.c.draining) & not_(_workers.c.locked)
_busy = exists().where(_prompts.c.worker == _workers.c.name, _prompts.c.state.in_(_ACTIVE))

# Statements built once: dispatch runs after every prompt and every submission.
_PASS = select(
    select(_counters.c.value).where(_counters.c.name == PAUSED).scalar_subquery(),
    exists().where(_prompts.c.state == _QUEUED),
    select(func.count(_needs.c.id)).scalar_subquery(),
)
_WORKERS = select(_workers.c.name, _workers.c.model_files, _workers.c.tags, _workers.c.loaded_models,
                  _busy.label("busy")).where(
    _STEERABLE).order_by(_workers.c.name)
_ALL_NEEDS = select(_needs.c.id, _needs.c.files)
# The worker's row, locked, if it is live and steerable, and whether it holds a prompt.
_LOCK_WORKER = (
    select(_workers.c.name, exists().where(_prompts.c.worker == _workers.c.name, _prompts.c.state.in_(_ACTIVE)))
    .where(_workers.c.name == bindparam("worker"), _STEERABLE).with_for_update(of=_workers)
)
# take_next's first statement: the same lock and check, with _PASS's answers in one round trip
# (this runs between every two prompts of a busy worker, where round trips are the cost).
_LOCK_FOR_NEXT = (
    select(_workers.c.name, exists().where(_prompts.c.worker == _workers.c.name, _prompts.c.state.in_(_ACTIVE)),
           *_PASS.selected_columns)
    .where(_workers.c.name == bindparam("worker"), _STEERABLE).with_for_update(of=_workers)
)
# Batches with a `max_workers` cap that have that many cells dispatched or running: their cells
# are not candidates (computed once per statement; only capped batches with active cells count).
_active_cells = _prompts.alias("active_cells")
_FULL_BATCHES = (
    select(_active_cells.c.batch_id)
    .join(_batches, _batches.c.id == _active_cells.c.batch_id)
    .where(_active_cells.c.state.in_(_ACTIVE), _batches.c.max_workers.is_not(None))
    .group_by(_active_cells.c.batch_id, _batches.c.max_workers)
    .having(func.count() >= _batches.c.max_workers)
)

# The batches this worker (`worker`) is blocked from after failing their cells.
_BLOCKED = select(_blocks.c.batch_id).where(_blocks.c.worker == bindparam("worker"), _blocks.c.blocked.is_(True))


def _eligible(table):
    """Queued prompts of `table` (the prompts table or an alias) this worker may take: its model
    files and tags hold the prompt's needs (`needs`: the eligible needs ids), its batch is below
    max_workers and has not blocked this worker (`worker`)."""
    return and_(table.c.state == _QUEUED,
                or_(table.c.needs_id.is_(None), table.c.needs_id.in_(bindparam("needs", expanding=True))),
                or_(table.c.batch_id.is_(None),
                    and_(table.c.batch_id.not_in(_FULL_BATCHES), table.c.batch_id.not_in(_BLOCKED))))


_CANDIDATES = (
    select(_prompts.c.prompt_id, _prompts.c.attempt, _prompts.c.front, _prompts.c.needs_id, _prompts.c.lost_on,
           and_(_prompts.c.passed_at.is_not(None), _prompts.c.passed_at < ago("max_wait")).label("overdue"),
           _prompts.c.batch_id,
           select(_batches.c.max_workers).where(_batches.c.id == _prompts.c.batch_id).scalar_subquery()
           .label("max_workers"))
    .where(_eligible(_prompts))
    .order_by(_prompts.c.queue_rank, _prompts.c.number, _prompts.c.prompt_id)
    .limit(bindparam("window"))
)
_TEAM_CANDIDATES = _CANDIDATES.where(_prompts.c.team == bindparam("team"))
# Fair share's view of every team: slots in use, and when its first prompt this worker can run
# was accepted (None: it has none). Each subquery walks one team's index entries only.
_in_use, _heads = _prompts.alias("in_use"), _prompts.alias("heads")
_TEAM_LOADS = select(
    _teams.c.name,
    select(func.count()).select_from(_in_use)
    .where(_in_use.c.team == _teams.c.name, _in_use.c.state.in_(_ACTIVE)).scalar_subquery().label("in_use"),
    select(_heads.c.created_at).where(_heads.c.team == _teams.c.name, _eligible(_heads))
    .order_by(_heads.c.queue_rank, _heads.c.number, _heads.c.prompt_id).limit(1).scalar_subquery().label("head"),
)
_LOCK_TEAM = select(_teams.c.name).where(_teams.c.name == bindparam("team")).with_for_update()
_TEAM_IN_USE = select(func.count()).select_from(_prompts).where(
    _prompts.c.team == bindparam("team"), _prompts.c.state.in_(_ACTIVE))
_TEAM_LIMITS = select(_teams.c.name, _teams.c.share, _teams.c.burst, _teams.c.max_running, _teams.c.max_queued,
                      _teams.c.webhook)


def team_book(database) -> fair_share.TeamBook:
    """Every team's share and caps from `database`, cached (fair_share.TeamBook)."""

    def read() -> dict[str, fair_share.TeamLimits]:
        with database.engine.connect() as connection:
            return {row.name: fair_share.TeamLimits(float(row.share), row.burst, row.max_running, row.max_queued,
                                                    row.webhook)
                    for row in prepared.execute(connection, _TEAM_LIMITS)}

    return fair_share.TeamBook(read)
# The chosen prompt, if still queued and not being taken by another dispatcher right now: a row
# another transaction has locked is skipped (the pick moves on), never waited for, so workers
# finishing together do not queue up behind one head-of-queue row.
_free = _prompts.alias("free")
_FREE_CHOICE = (
    select(_free.c.prompt_id).where(_free.c.prompt_id == bindparam("p_id"), _free.c.state == _QUEUED)
    .with_for_update(skip_locked=True).scalar_subquery()
)
_ASSIGN = (
    update(_prompts).where(_prompts.c.prompt_id == _FREE_CHOICE)
    .values(state=PromptState.DISPATCHED.value, worker=bindparam("worker"), attempt=_prompts.c.attempt + 1,
            dispatched_at=db_now())
    .returning(_prompts.c.prompt_id, _prompts.c.attempt, _prompts.c.front)
)
# A busy worker's next prompt, taken as it records the last one: claimed (running) at once.
_CLAIM_NEXT = (
    update(_prompts).where(_prompts.c.prompt_id == _FREE_CHOICE)
    .values(state=PromptState.RUNNING.value, worker=bindparam("worker"), attempt=_prompts.c.attempt + 1,
            dispatched_at=db_now(), started_at=db_now())
    .returning(_prompts.c.prompt_id, _prompts.c.attempt, _prompts.c.prompt, _prompts.c.extra_data,
               _prompts.c.outputs_to_execute, _prompts.c.client_id, _prompts.c.team, _prompts.c.batch_id,
               _prompts.c.created_at, _prompts.c.started_at, _prompts.c.coalesce_key)
)
# Coalescing: the queued prompts of the group's team and key this worker may take, in queue
# order; and whether a front prompt of another key waits (a group never goes before it).
_COMPANIONS = _CANDIDATES.where(_prompts.c.team == bindparam("team"), _prompts.c.coalesce_key == bindparam("key"))
_FRONT_WAITING = select(_prompts.c.prompt_id).where(
    _eligible(_prompts), _prompts.c.queue_rank == 0,
    or_(_prompts.c.coalesce_key.is_(None), _prompts.c.coalesce_key != bindparam("key"))).limit(1)
# A capped batch's row, locked while one of its cells is taken (concurrent dispatchers count its
# active cells one after the other), and that count.
_LOCK_BATCH = select(_batches.c.id).where(_batches.c.id == bindparam("batch_id")).with_for_update()
_ACTIVE_CELLS = select(func.count()).select_from(_prompts).where(
    _prompts.c.batch_id == bindparam("batch_id"), _prompts.c.state.in_(_ACTIVE))
_FEW = 3  # rows read first by a worker that has no checkpoint loaded (Dispatcher._pick)
_MARK_PASSED = (
    update(_prompts).where(_prompts.c.prompt_id.in_(bindparam("passed", expanding=True)),
                           _prompts.c.passed_at.is_(None))
    .values(passed_at=db_now())
)
_UNASSIGN = (
    update(_prompts)
    .where(_prompts.c.prompt_id == bindparam("p_id"), _prompts.c.attempt == bindparam("p_attempt"),
           _prompts.c.state == PromptState.DISPATCHED.value)
    .values(state=_QUEUED, worker=None, dispatched_at=None, attempt=_prompts.c.attempt - 1)
)


@dataclasses.dataclass(frozen=True)
class _Worker:
    name: str
    files: frozenset[str]
    loaded: frozenset[str]
    busy: bool


class Dispatcher:
    def __init__(self, database, sender, settings, teams: fair_share.TeamBook | None = None):
        self.database = database
        self.sender = sender
        self.settings = settings
        self.window = max(settings.affinity_lookahead, 8)
        # model_needs rows never change: each process keeps the ones it has seen. Replaced, never
        # changed in place: dispatch runs in several threads (a worker's prompt thread and its
        # reporter, a web process's trigger).
        self._needs: dict[int, frozenset[str]] = {}
        self.teams = teams or team_book(database)
        self.on_decision = None  # called with "assigned" or "none" for every decision (metrics)

    def dispatch(self, only: str | None = None, loaded: frozenset[str] | None = None) -> list[Assignment]:
        """Give every idle worker (or just `only`, whose loaded checkpoints may be passed in as
        `loaded`) a prompt it can run; return what was sent. Every worker is served in one
        transaction, so that a burst reaches all idle workers at once."""
        with self.database.engine.connect() as connection:
            live = self._live_workers(connection) if self._ready(connection) else []
        idle = [worker for worker in live if not worker.busy and (only is None or worker.name == only)]
        if only is not None and loaded is not None:
            idle = [dataclasses.replace(worker, loaded=loaded) for worker in idle]
        if not idle:
            return []
        assignments = []
        with self.database.write_connection() as connection:
            for worker in idle:  # in name order: concurrent dispatchers lock worker rows alike
                taken = self._assign(connection, worker, lambda: live, _ASSIGN)
                if taken is not None:
                    assignments.append(Assignment(taken.prompt_id, taken.attempt, worker.name, taken.front))
        for index, assignment in enumerate(assignments):
            if not self._send(assignment):
                self._undo(assignments[index:])
                return assignments[:index]
        return assignments

    def take_next(self, connection, worker_name: str, files: frozenset[str], loaded: frozenset[str]):
        """In the transaction that records a worker's last prompt, give that worker its next one,
        claimed at once (no broker round trip between two prompts of a busy worker). `files` and
        `loaded` are the worker's model files and loaded checkpoints as it knows them now. Returns
        the claimed row (prompt_id, attempt, prompt, extra_data, outputs_to_execute, client_id, team,
        batch_id, created_at, started_at), or
        None when the worker should take none now."""
        params = {"timeout": self.settings.worker_timeout_seconds, "worker": worker_name}
        locked = prepared.execute(connection, _LOCK_FOR_NEXT, params).first()
        if locked is None or locked[1] or not self._has_work(connection, *locked[2:]):
            return None  # not steerable, holding a prompt, paused, or nothing queued
        worker = _Worker(worker_name, files, loaded, busy=False)
        return self._assign(connection, worker, lambda: self._live_workers(connection), _CLAIM_NEXT, locked=True)

    def take_companions(self, connection, worker_name: str, files: frozenset[str], loaded: frozenset[str],
                        head, count: int) -> list:
        """Coalescing: up to `count` more prompts with `head`'s key, claimed (running) for this
        worker, which holds `head` already, in the transaction the caller commits. They are what
        this worker would take next anyway, while they are compatible: eligible for it, in queue
        order, of head's team only, and only while fair share would still give that team the
        next slot (its caps included); never while a front prompt of another kind waits."""
        if count <= 0 or head.coalesce_key is None:
            return []
        needs = [needs_id for needs_id, needed in self._needs.items() if needed <= files]
        params = {"timeout": self.settings.worker_timeout_seconds, "worker": worker_name, "needs": needs,
                  "window": self.window, "max_wait": float(self.settings.affinity_max_wait_seconds),
                  "team": head.team, "key": head.coalesce_key}
        if prepared.execute(connection, _FRONT_WAITING, params).first() is not None:
            return []
        worker = _Worker(worker_name, files, loaded, busy=True)
        taken = []
        for _ in range(count):
            if not self.teams.trivial() and not self._team_goes_next(connection, head.team, params):
                break
            row = self._pick(connection, worker, lambda: self._live_workers(connection), _CLAIM_NEXT, _COMPANIONS,
                             params)
            if row is None:
                break
            taken.append(row)
        return taken

    def _team_goes_next(self, connection, team: str, params) -> bool:
        """Whether fair share ranks `team` first for this worker's next slot (below its caps)."""
        limits = self.teams.teams()
        loads = [fair_share.TeamLoad(row.name, limits.get(row.name, fair_share.TeamLimits()), row.in_use, row.head)
                 for row in prepared.execute(connection, _TEAM_LOADS, params)]
        ranked = fair_share.ranked(loads)
        if not ranked or ranked[0].name != team:
            return False
        cap = ranked[0].limits.cap
        return cap is None or self._team_below_cap(connection, team, cap)

    def _ready(self, connection) -> bool:
        """Whether a pass has anything to do (dispatch not paused, some prompt queued); refreshes
        the known model needs."""
        return self._has_work(connection, *prepared.execute(connection, _PASS).one())

    def _has_work(self, connection, paused, any_queued, needs_count) -> bool:
        """_PASS's answers: whether a pass has anything to do; refreshes the known model needs."""
        if paused or not any_queued:
            return False
        if needs_count != len(self._needs):
            # Read them all again, not only ids above the highest known: ids are handed out
            # before their transactions commit, so a lower one can appear later.
            self._needs = {row.id: frozenset(row.files) for row in prepared.execute(connection, _ALL_NEEDS)}
        return True

    def _live_workers(self, connection) -> list[_Worker]:
        """The steerable live workers, in name order."""
        return [_Worker(row.name, placement.capabilities(row.model_files, row.tags),
                        placement.loaded_checkpoints(row.loaded_models),
                        bool(row.busy))
                for row in prepared.execute(connection, _WORKERS, {"timeout": self.settings.worker_timeout_seconds})]

    def _assign(self, connection, worker: _Worker, live, statement, locked: bool = False):
        """Move the prompt `worker` should take out of the queue with `statement` (to dispatched, or
        straight to running); the row it returns, or None. `live()` gives the live workers, asked
        only when a candidate was lost by this worker before. `locked`: the caller has locked and
        checked the worker's row already. With several teams (or caps), the teams are ranked by
        fair share first and served in that order."""
        needs = self._needs
        eligible = [needs_id for needs_id, files in needs.items() if files <= worker.files]
        params = {"timeout": self.settings.worker_timeout_seconds, "worker": worker.name, "needs": eligible,
                  "window": self.window, "max_wait": float(self.settings.affinity_max_wait_seconds)}
        if not locked:
            row = prepared.execute(connection, _LOCK_WORKER, params).first()
            if row is None or row[1]:
                return None  # dead, draining or locked since the pass began, or given a prompt meanwhile
        taken = self._decide(connection, worker, live, statement, params)
        if self.on_decision is not None:
            self.on_decision("assigned" if taken is not None else "none")
        return taken

    def _decide(self, connection, worker: _Worker, live, statement, params):
        if self.teams.trivial():
            return self._pick(connection, worker, live, statement, _CANDIDATES, params)
        limits = self.teams.teams()
        loads = [fair_share.TeamLoad(row.name, limits.get(row.name, fair_share.TeamLimits()),
                                     row.in_use, row.head)
                 for row in prepared.execute(connection, _TEAM_LOADS, params)]
        for load in fair_share.ranked(loads):
            if load.limits.cap is not None and not self._team_below_cap(connection, load.name, load.limits.cap):
                continue  # reached its cap meanwhile (another dispatcher)
            taken = self._pick(connection, worker, live, statement, _TEAM_CANDIDATES, {**params, "team": load.name})
            if taken is not None:
                return taken
        return None

    def _pick(self, connection, worker: _Worker, live, statement, query, params):
        """The candidate loop: read the first `window` eligible prompts of `query`, let placement
        choose, take the choice (skipping rows other dispatchers hold)."""
        needs = self._needs

        def runs_elsewhere(candidate: placement.Candidate) -> bool:
            return any(candidate.needs <= other.files and other.name not in candidate.lost_on
                       for other in live() if other.name != worker.name)

        # Placement looks past the first prompt this worker may run only for one whose checkpoint
        # it has loaded: a worker with none loaded reads a few rows first, the window only when
        # those few are all left to others.
        few = _FEW < self.window and (not worker.loaded or self.settings.affinity_lookahead <= 0)
        for attempt in range(5):  # the candidates again: other dispatchers took or hold all we saw
            window = _FEW if few and attempt == 0 else self.window
            rows = prepared.execute(connection, query, {**params, "window": window}).all()
            caps = {row.prompt_id: (row.batch_id, row.max_workers) for row in rows if row.max_workers is not None}
            candidates = [
                placement.Candidate(row.prompt_id, row.attempt, bool(row.front),
                                    needs.get(row.needs_id, frozenset()) if row.needs_id else frozenset(),
                                    tuple(row.lost_on or ()), bool(row.overdue))
                for row in rows
            ]
            while candidates:
                choice = placement.choose(candidates, worker.name, worker.loaded, self.settings.affinity_lookahead,
                                          runs_elsewhere)
                if choice is None:
                    if len(rows) == window < self.window:
                        break  # the few were all left to others: read the window
                    return None
                chosen = candidates[choice.index]
                if chosen.prompt_id in caps and not self._below_cap(connection, *caps[chosen.prompt_id]):
                    candidates.remove(chosen)  # its batch reached max_workers meanwhile
                    continue
                taken = prepared.execute(connection, statement,
                                         {"p_id": chosen.prompt_id, "worker": worker.name}).first()
                if taken is not None:
                    if choice.passed:
                        prepared.execute(connection, _MARK_PASSED,
                                         {"passed": [candidates[i].prompt_id for i in choice.passed]})
                    return taken
                candidates.remove(chosen)  # taken or held by another dispatcher: the next pick
        return None

    @staticmethod
    def _team_below_cap(connection, team: str, cap: int) -> bool:
        """Lock the team (until this transaction ends) and check it holds fewer slots than `cap`."""
        prepared.execute(connection, _LOCK_TEAM, {"team": team})
        return prepared.execute(connection, _TEAM_IN_USE, {"team": team}).scalar() < cap

    @staticmethod
    def _below_cap(connection, batch_id: str, max_workers: int) -> bool:
        """Lock the batch (until this transaction ends) and check it runs fewer than its cap."""
        prepared.execute(connection, _LOCK_BATCH, {"batch_id": batch_id})
        return prepared.execute(connection, _ACTIVE_CELLS, {"batch_id": batch_id}).scalar() < max_workers

    def _undo(self, assignments: list[Assignment]) -> None:
        with self.database.write_connection() as connection:
            for assignment in assignments:
                prepared.execute(connection, _UNASSIGN, {"p_id": assignment.prompt_id, "p_attempt": assignment.attempt})

    def _send(self, assignment: Assignment) -> bool:
        try:
            self.sender.send(assignment)
            return True
        except Exception:  # noqa: BLE001 - broker trouble must not lose the prompt
            log.exception("could not send prompt %s to %s; it stays queued", assignment.prompt_id, assignment.worker)
            return False


def set_paused(database, paused: bool) -> None:
    """Pause or resume dispatch farm-wide (running prompts go on; queued ones wait)."""
    from farm.db.upsert import upsert_counter

    with database.write_connection() as connection:
        upsert_counter(connection, PAUSED, 1 if paused else 0)
