"""The worker registry: registration, heartbeats, and taking prompts back from lost workers.

A worker whose heartbeat is older than `worker_timeout_seconds` is dead: its dispatched or
running prompts go back to `queued` at their place in the order (the next dispatch raises their
attempt, so a late message or result of the old attempt is refused), or end in `error` once
they have used `max_attempts` attempts. A prompt dispatched but not claimed within
`dispatch_timeout_seconds` is taken back the same way.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import threading
import time

from sqlalchemy import delete, select, update

from farm.db.models import Prompt, PromptState, Worker
from farm.graph.executor import now_ms
from farm.queue.dispatch import utcnow

log = logging.getLogger(__name__)


@dataclasses.dataclass
class WorkerInfo:
    """What a worker reports about itself at registration and with every heartbeat."""

    name: str
    session: str
    queue: str
    host: str
    pid: int
    gpu_index: int | None
    device_name: str
    device_type: str
    version: str
    python_version: str = ""
    torch_version: str = ""
    vram_total: int = 0
    vram_free: int = 0
    ram_total: int = 0
    ram_free: int = 0
    loaded_models: list = dataclasses.field(default_factory=list)
    model_files: dict = dataclasses.field(default_factory=dict)
    current_prompt: str | None = None


@dataclasses.dataclass(frozen=True)
class LostPrompt:
    """A prompt that ended in error because the workers running it kept getting lost."""

    prompt_id: str
    client_id: str | None
    error: dict  # the execution_error of its history entry


@dataclasses.dataclass
class Reaped:
    """What a reap did: prompts taken back, those of them that failed, the dead workers removed."""

    taken: int = 0
    failed: list[LostPrompt] = dataclasses.field(default_factory=list)
    dead: list[str] = dataclasses.field(default_factory=list)


def register(database, info: WorkerInfo, settings) -> list[LostPrompt]:
    """Insert or replace this worker's row; prompts held by its previous session are taken back
    (the ones out of attempts are returned: they ended in error)."""
    now = utcnow()
    failed: list[LostPrompt] = []
    with database.write() as session:
        _take_back(session, settings, [info.name], f"worker {info.name} restarted while holding this prompt", failed)
        session.execute(delete(Worker).where(Worker.name == info.name))
        session.add(Worker(**dataclasses.asdict(info), started_at=now, last_seen=now))
    return failed


def heartbeat(database, info: WorkerInfo, settings) -> list[LostPrompt]:
    """Refresh this worker's row; a worker presumed dead registers again (see `register`)."""
    with database.write() as session:
        values = dataclasses.asdict(info)
        found = session.execute(
            update(Worker).where(Worker.name == info.name, Worker.session == info.session)
            .values(**values, last_seen=utcnow())
        ).rowcount
    if found:
        return []
    log.warning("worker %s was presumed dead; registering again", info.name)
    return register(database, info, settings)


def deregister(database, info: WorkerInfo) -> None:
    """Clean exit: unclaimed prompts go back to the queue without counting an attempt."""
    with database.write() as session:
        session.execute(
            update(Prompt)
            .where(Prompt.worker == info.name, Prompt.state.in_([s.value for s in PromptState.active()]))
            .values(state=PromptState.QUEUED.value, worker=None, dispatched_at=None, started_at=None,
                    attempt=Prompt.attempt - 1)
        )
        session.execute(delete(Worker).where(Worker.name == info.name, Worker.session == info.session))


def reap(database, settings) -> Reaped:
    """Take prompts back from dead workers and from dispatches never claimed."""
    now = utcnow()
    with database.reading() as session:
        dead = session.scalars(
            select(Worker.name).where(Worker.last_seen < now - dt.timedelta(seconds=settings.worker_timeout_seconds))
        ).all()
        unclaimed = session.scalar(
            select(Prompt.prompt_id).where(
                Prompt.state == PromptState.DISPATCHED.value,
                Prompt.dispatched_at < now - dt.timedelta(seconds=settings.dispatch_timeout_seconds),
            ).limit(1)
        )
    reaped = Reaped(dead=list(dead))
    if not dead and unclaimed is None:
        return reaped
    with database.write() as session:
        reaped.taken = _take_back(session, settings, dead, "the worker running this prompt stopped responding",
                                  reaped.failed)
        reaped.taken += _take_back_unclaimed(session, settings, now, reaped.failed)
        if dead:
            session.execute(delete(Worker).where(Worker.name.in_(dead)))
    if reaped.taken:
        log.warning("took back %d prompt(s) from lost workers", reaped.taken)
    return reaped


def _take_back(session, settings, workers: list[str], reason: str, failed: list[LostPrompt]) -> int:
    if not workers:
        return 0
    rows = session.execute(
        select(Prompt).where(Prompt.worker.in_(workers), Prompt.state.in_([s.value for s in PromptState.active()]))
        .with_for_update()
    ).scalars().all()
    for row in rows:
        _requeue_or_fail(row, settings, reason, failed)
    return len(rows)


def _take_back_unclaimed(session, settings, now, failed: list[LostPrompt]) -> int:
    rows = session.execute(
        select(Prompt).where(
            Prompt.state == PromptState.DISPATCHED.value,
            Prompt.dispatched_at < now - dt.timedelta(seconds=settings.dispatch_timeout_seconds),
        ).with_for_update(skip_locked=True)
    ).scalars().all()
    for row in rows:
        _requeue_or_fail(row, settings, f"worker {row.worker} did not start this prompt in time", failed)
    return len(rows)


def _requeue_or_fail(row: Prompt, settings, reason: str, failed: list[LostPrompt]) -> None:
    if row.attempt < settings.max_attempts:
        row.state = PromptState.QUEUED.value
        row.worker = None
        row.dispatched_at = None
        row.started_at = None
        return
    message = f"{reason}; giving up after {row.attempt} attempts"
    error = {
        "prompt_id": row.prompt_id, "node_id": None, "node_type": None, "executed": [],
        "exception_message": message + "\n", "exception_type": "WorkerLost", "traceback": [],
        "current_inputs": {}, "current_outputs": [], "timestamp": now_ms(),
    }
    row.state = PromptState.ERROR.value
    row.finished_at = utcnow()
    row.outputs = {}
    row.messages = [["execution_error", error]]
    row.execution_error = error
    failed.append(LostPrompt(row.prompt_id, row.client_id, error))


def live_workers(database, settings) -> list[Worker]:
    since = utcnow() - dt.timedelta(seconds=settings.worker_timeout_seconds)
    with database.reading() as session:
        return session.scalars(select(Worker).where(Worker.last_seen >= since).order_by(Worker.name)).all()


class WorkerModelInventory:
    """The model files the live workers can load, merged per folder type (the web's view).

    Web hosts need not mount the models folder: what can be validated and listed is what the
    workers report. With no live worker the web falls back to its own models folder. Reads are
    cached for `ttl` seconds, so validating a burst of prompts costs one query.
    """

    def __init__(self, database, settings, ttl: float = 2.0):
        from farm.models import LocalModelInventory

        self.database = database
        self.settings = settings
        self.ttl = ttl
        self.local = LocalModelInventory(settings.models_dir)
        self._cache: tuple[float, dict[str, list[str]] | None] | None = None
        self._lock = threading.Lock()

    def files(self, folder: str) -> list[str]:
        merged = self._merged()
        return self.local.files(folder) if merged is None else merged.get(folder, [])

    def _merged(self) -> dict[str, list[str]] | None:
        with self._lock:
            if self._cache is None or time.monotonic() - self._cache[0] > self.ttl:
                self._cache = (time.monotonic(), self._load())
            return self._cache[1]

    def _load(self) -> dict[str, list[str]] | None:
        since = utcnow() - dt.timedelta(seconds=self.settings.worker_timeout_seconds)
        with self.database.engine.connect() as connection:
            reports = connection.execute(
                select(Worker.__table__.c.model_files).where(Worker.__table__.c.last_seen >= since)
            ).scalars().all()
        if not reports:
            return None
        merged: dict[str, set[str]] = {}
        for report in reports:
            for folder, files in (report or {}).items():
                merged.setdefault(folder, set()).update(files)
        return {folder: sorted(files) for folder, files in merged.items()}
