"""What an operator sees of the workers and does to them: list, drain, lock, unlock, and pausing
dispatch farm-wide (GET /api/workers, POST /api/workers/<name>/..., POST /api/dispatch/...).

A worker's state is derived, never stored: dead (no beat within the timeout, or stopped), locked,
draining, busy (holds a prompt) or idle, in that order of precedence. Drain and lock both stop
new prompts from reaching the worker; a running prompt always finishes. Unlock clears both, and
the loss streak that may have locked the worker.
"""

from __future__ import annotations

from sqlalchemy import exists, select, update

from farm.db.clock import db_now
from farm.db.models import Prompt, PromptState, Worker
from farm.queue.dispatch import PAUSED, set_paused
from farm.services import audit
from farm.services.principal import LOCAL, Principal

_ACTIVE = [s.value for s in PromptState.active()]
OPERATOR_LOCK = "locked by an operator"


class UnknownWorker(LookupError):
    """No worker of that name ever registered."""


def worker_state(row: Worker, live: bool, busy: bool) -> str:
    if not live:
        return "dead"
    if row.locked:
        return "locked"
    if row.draining:
        return "draining"
    return "busy" if busy else "idle"


def list_workers(database, settings, running: dict | None = None, name: str | None = None) -> list[dict]:
    """Every worker the farm has seen (dead ones too), as the API shows them. `running` maps a
    worker name to what the event bus says it runs now ({"prompt_id", "node", "value", "max"})."""
    busy = exists().where(Prompt.worker == Worker.name, Prompt.state.in_(_ACTIVE))
    query = select(Worker, busy.label("busy"), db_now().label("now")).order_by(Worker.name)
    if name is not None:
        query = query.where(Worker.name == name)
    with database.reading() as session:
        rows = session.execute(query).all()
    timeout = settings.worker_timeout_seconds
    listed = []
    for worker, is_busy, now in rows:
        age = max((now - worker.last_seen).total_seconds(), 0.0)
        live = bool(worker.session) and age <= timeout
        listed.append(_view(worker, live, bool(is_busy), age, (running or {}).get(worker.name)))
    return listed


def _view(worker: Worker, live: bool, busy: bool, heartbeat_age: float, running: dict | None) -> dict:
    current = None
    if live and worker.current_prompt:
        current = {"prompt_id": worker.current_prompt, "node": None, "progress": None}
    if live and running and running.get("prompt_id"):
        current = {"prompt_id": running["prompt_id"], "node": running.get("node"),
                   "progress": ({"value": running["value"], "max": running["max"]}
                                if running.get("max") is not None else None)}
    return {
        "name": worker.name,
        "host": worker.host,
        "state": worker_state(worker, live, busy),
        "lock_reason": worker.lock_reason if worker.locked else None,
        "gpu_index": worker.gpu_index,
        "device": worker.device_name,
        "device_type": worker.device_type,
        "vram_total": worker.vram_total,
        "vram_free": worker.vram_free,
        "loaded_models": worker.loaded_models or [],
        "model_files": sum(len(files) for files in (worker.model_files or {}).values()),
        "tags": worker.tags or [],
        "current_prompt": current,
        "prompts_done": worker.prompts_done,
        "prompts_failed": worker.prompts_failed,
        "failures_in_row": worker.failures_in_row,
        "version": worker.version,
        "pid": worker.pid,
        "started_at": worker.started_at.isoformat(),
        "last_heartbeat_age": round(heartbeat_age, 3),
    }


def _change(database, name: str, actor: Principal, action: str, **values) -> None:
    with database.write() as session:
        if not session.execute(update(Worker).where(Worker.name == name).values(**values)).rowcount:
            raise UnknownWorker(name)
        audit.record(session.connection(), actor, f"worker.{action}", f"worker:{name}",
                     {"reason": values["lock_reason"]} if values.get("lock_reason") else None)


def drain(database, name: str, actor: Principal = LOCAL) -> None:
    """The worker finishes what it runs and takes nothing new (until unlocked)."""
    actor.require("admin", "draining a worker")
    _change(database, name, actor, "drain", draining=True)


def lock(database, name: str, reason: str | None = None, actor: Principal = LOCAL) -> None:
    actor.require("admin", "locking a worker")
    _change(database, name, actor, "lock", locked=True, lock_reason=reason or OPERATOR_LOCK)


def unlock(database, name: str, actor: Principal = LOCAL) -> None:
    actor.require("admin", "unlocking a worker")
    _change(database, name, actor, "unlock", locked=False, draining=False, lock_reason=None, failures_in_row=0)


def dispatch_paused(database) -> bool:
    from farm.db.upsert import read_counter

    with database.engine.connect() as connection:
        return bool(read_counter(connection, PAUSED))


def pause_dispatch(database, paused: bool, actor: Principal = LOCAL) -> None:
    actor.require("admin", "pausing or resuming dispatch")
    set_paused(database, paused)
    with database.write_connection() as connection:
        audit.record(connection, actor, "dispatch.pause" if paused else "dispatch.resume", "farm")
