"""The worker registry: registration, the liveness beat, reports, and the operator's states.

Liveness is one small write, `last_seen = <database now>`, made by a worker's heartbeat thread
on its own connection: nothing a prompt does (a checkpoint load, a long node) can delay it, and
every host is judged by the database's clock. Everything else a worker tells (memory, loaded
models, model files) is a report, written by another thread, only when it changed.

A worker's row outlives the process: it keeps the operator's states (draining, locked), the
counters and the loss streak across restarts. `session` is the running process's id, or empty
once the worker stopped or was presumed dead.
"""

from __future__ import annotations

import dataclasses
import logging

from sqlalchemy import bindparam, select, update

from farm.db.clock import ago, db_now
from farm.db.models import Prompt, PromptState, Worker

log = logging.getLogger(__name__)

_workers = Worker.__table__
_ACTIVE = [s.value for s in PromptState.active()]
_BEAT = (
    update(_workers).where(_workers.c.name == bindparam("w_name"), _workers.c.session == bindparam("w_session"))
    .values(last_seen=db_now())
)


def is_live():
    """The SQL condition of a live worker (bind `timeout` to the worker timeout in seconds)."""
    return (_workers.c.session != "") & (_workers.c.last_seen >= ago("timeout"))


@dataclasses.dataclass
class WorkerInfo:
    """What a worker reports about itself at registration and in its reports."""

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
    tags: list = dataclasses.field(default_factory=list)


REPORTED = ("vram_total", "vram_free", "ram_total", "ram_free", "loaded_models", "model_files", "current_prompt",
            "device_name", "device_type", "torch_version")


def register(database, info: WorkerInfo, settings) -> list:
    """A worker process starts: its row gets the new session (operator states and counters kept);
    prompts its previous process held are lost, and taken back (those out of attempts are
    returned: they ended in error)."""
    from farm.services.reaping import take_back

    failed: list = []
    with database.write() as session:
        row = session.get(Worker, info.name, with_for_update=True)
        held = session.scalars(
            select(Prompt).where(Prompt.worker == info.name, Prompt.state.in_(_ACTIVE)).with_for_update()
        ).all()
        values = dataclasses.asdict(info)
        if row is None:
            row = Worker(**values, started_at=db_now(), last_seen=db_now())
            session.add(row)
        else:
            for key, value in values.items():
                setattr(row, key, value)
            row.started_at = row.last_seen = db_now()
        take_back(session, settings, row, held, f"worker {info.name} restarted while holding this prompt", failed)
    return failed


def rejoin(database, info: WorkerInfo) -> None:
    """The beat found this worker presumed dead (its prompt was already taken back): be live again.
    Nothing is taken back here: what it held went back to the queue when it was reaped."""
    with database.write() as session:
        row = session.get(Worker, info.name, with_for_update=True)
        values = dataclasses.asdict(info)
        if row is None:
            session.add(Worker(**values, started_at=db_now(), last_seen=db_now()))
            return
        for key, value in values.items():
            setattr(row, key, value)
        row.last_seen = db_now()


def beat(database, name: str, session: str) -> bool:
    """The liveness write; False when this process no longer owns the row (presumed dead)."""
    with database.write_connection() as connection:
        return bool(connection.execute(_BEAT, {"w_name": name, "w_session": session}).rowcount)


def report(database, info: WorkerInfo, changed: dict) -> bool:
    """Write the reported fields that changed; False when this process no longer owns the row."""
    if not changed:
        return True
    with database.write_connection() as connection:
        return bool(connection.execute(
            update(_workers).where(_workers.c.name == info.name, _workers.c.session == info.session).values(**changed)
        ).rowcount)


def deregister(database, info: WorkerInfo) -> None:
    """Clean exit: prompts it had not started go back to the queue without counting an attempt."""
    with database.write() as session:
        session.execute(
            update(Prompt)
            .where(Prompt.worker == info.name, Prompt.state == PromptState.DISPATCHED.value)
            .values(state=PromptState.QUEUED.value, worker=None, dispatched_at=None, attempt=Prompt.attempt - 1)
        )
        session.execute(
            update(Worker).where(Worker.name == info.name, Worker.session == info.session)
            .values(session="", current_prompt=None)
        )


def live_workers(database, settings) -> list[Worker]:
    with database.reading() as session:
        return session.scalars(
            select(Worker).where(is_live()).order_by(Worker.name), {"timeout": settings.worker_timeout_seconds}
        ).all()
