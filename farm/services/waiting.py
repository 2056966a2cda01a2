"""Why a pending prompt waits, when it is not simply its turn: no live worker, none with the model
files or tags it needs, every capable worker draining or locked, dispatch paused, or its batch
paused. Shown in /queue items (extra_data["farm_waiting_for"]) and the jobs API (`waiting_for`);
a prompt never fails for these reasons, it waits until a worker that can run it is there.
"""

from __future__ import annotations

from sqlalchemy import select

from farm.db.models import ModelNeeds, Prompt, PromptState, Worker
from farm.queue import placement
from farm.services import steering
from farm.services.workers import is_live


def waiting_reasons(database, settings, rows: list[Prompt]) -> dict[str, str]:
    """prompt_id -> the reason, for those of the queued `rows` that wait for something."""
    paused = {row.prompt_id: "its batch is paused" for row in rows if row.state == PromptState.PAUSED.value}
    queued = [row for row in rows if row.state == PromptState.QUEUED.value]
    if not queued:
        return paused
    if steering.dispatch_paused(database):
        return {**paused, **{row.prompt_id: "dispatch is paused farm-wide by an operator" for row in queued}}
    needs_ids = {row.needs_id for row in queued if row.needs_id is not None}
    with database.reading() as session:
        live = session.execute(
            select(Worker.model_files, Worker.tags, Worker.draining, Worker.locked).where(is_live()),
            {"timeout": settings.worker_timeout_seconds},
        ).all()
        needs = {row.id: frozenset(row.files) for row in session.execute(
            select(ModelNeeds.id, ModelNeeds.files).where(ModelNeeds.id.in_(needs_ids)))} if needs_ids else {}
    workers = [(placement.capabilities(files, tags), not (draining or locked)) for files, tags, draining, locked in live]
    reasons = dict(paused)
    for row in queued:
        wanted = needs.get(row.needs_id, frozenset())
        capable = [steerable for files, steerable in workers if wanted <= files]
        if not workers:
            reasons[row.prompt_id] = "no worker is live"
        elif not capable:
            missing = placement.missing_files(wanted, [files for files, _ in workers])
            reasons[row.prompt_id] = f"no live worker has {', '.join(placement.describe_need(m) for m in missing)}"
        elif not any(capable):
            reasons[row.prompt_id] = "every live worker that can run it is draining or locked"
    return reasons
