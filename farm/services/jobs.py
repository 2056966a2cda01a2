"""The jobs API of newer ComfyUI (spec §10): prompts as jobs, listed, filtered, paged, cancelled."""

from __future__ import annotations

import dataclasses
import uuid

from sqlalchemy import func, select

from farm.db.models import Prompt, PromptState
from farm.services import queue_control
from farm.services.history import history_entry
from farm.services.submit import number_json
from farm.services.waiting import waiting_reasons

JOB_STATUSES = {
    "pending": [PromptState.QUEUED.value, PromptState.PAUSED.value],
    "in_progress": [s.value for s in PromptState.active()],
    "completed": [PromptState.SUCCESS.value],
    "failed": [PromptState.ERROR.value],
    "cancelled": [PromptState.INTERRUPTED.value, PromptState.CANCELLED.value],
}
STATUS_OF_STATE = {state: status for status, states in JOB_STATUSES.items() for state in states}
PREVIEWABLE = ("images", "video", "animated", "audio", "3d")


class JobQueryError(ValueError):
    """A jobs list parameter that is not valid (answered as 400 {"error": text})."""


@dataclasses.dataclass
class JobQuery:
    statuses: list[str] | None = None
    workflow_id: str | None = None
    sort_by: str = "created_at"
    descending: bool = True
    limit: int | None = None
    offset: int = 0

    @classmethod
    def parse(cls, args) -> "JobQuery":
        query = cls()
        if args.get("status"):
            query.statuses = [s.strip() for s in args["status"].split(",") if s.strip()]
            unknown = [s for s in query.statuses if s not in JOB_STATUSES]
            if unknown:
                raise JobQueryError(f"Invalid status value(s): {', '.join(unknown)}; "
                                    f"use {', '.join(JOB_STATUSES)}")
        query.workflow_id = args.get("workflow_id") or None
        query.sort_by = args.get("sort_by", "created_at")
        if query.sort_by not in ("created_at", "execution_duration"):
            raise JobQueryError("sort_by must be 'created_at' or 'execution_duration'")
        order = args.get("sort_order", "desc")
        if order not in ("asc", "desc"):
            raise JobQueryError("sort_order must be 'asc' or 'desc'")
        query.descending = order == "desc"
        if args.get("limit") is not None:
            try:
                query.limit = int(args["limit"])
            except ValueError:
                raise JobQueryError("limit must be a positive integer") from None
            if query.limit <= 0:
                raise JobQueryError("limit must be a positive integer")
        if args.get("offset") is not None:
            try:
                query.offset = max(int(args["offset"]), 0)
            except ValueError:
                raise JobQueryError("offset must be an integer") from None
        return query


def _ms(moment) -> int | None:
    return None if moment is None else int(moment.timestamp() * 1000)


def _message_time(row: Prompt, events: tuple[str, ...]) -> int | None:
    for event, data in row.messages or []:
        if event in events:
            return data.get("timestamp")
    return None


def _output_items(outputs: dict):
    for node_id, ui in (outputs or {}).items():
        for media, items in ui.items():
            if isinstance(items, list):
                for item in items:
                    if isinstance(item, dict) and "filename" in item:
                        yield node_id, media, item


def job_summary(row: Prompt) -> dict:
    items = list(_output_items(row.outputs))
    previewable = [(node, media, item) for node, media, item in items if media in PREVIEWABLE]
    workflow = (row.extra_data.get("extra_pnginfo") or {}).get("workflow") if isinstance(row.extra_data, dict) else None
    job = {
        "id": row.prompt_id,
        "status": STATUS_OF_STATE[row.state],
        "priority": number_json(row.number),
        "create_time": _ms(row.created_at),
        "execution_start_time": _message_time(row, ("execution_start",)) or _ms(row.started_at),
        "execution_end_time": _message_time(row, ("execution_success", "execution_error", "execution_interrupted"))
        or _ms(row.finished_at),
        "execution_error": row.execution_error,
        "outputs_count": len(items),
        "previewable_outputs_count": len(previewable),
        "preview_output": ({**previewable[0][2], "nodeId": previewable[0][0], "mediaType": previewable[0][1]}
                           if previewable else None),
        "workflow_id": workflow.get("id") if isinstance(workflow, dict) else None,
    }
    return {key: value for key, value in job.items() if value is not None}


def job_detail(row: Prompt) -> dict:
    entry = history_entry(row)
    return {
        **job_summary(row),
        "outputs": row.outputs or {},
        "execution_status": entry["status"] if row.state in STATUS_OF_STATE and row.messages else None,
        "workflow": {"prompt": row.prompt, "extra_data": row.extra_data},
    }


def list_jobs(database, query: JobQuery, settings=None, team: str | None = None) -> dict:
    """`team`'s jobs (None: every team's)."""
    table = Prompt.__table__
    conditions = [] if team is None else [table.c.team == team]
    if query.statuses:
        conditions.append(table.c.state.in_([s for status in query.statuses for s in JOB_STATUSES[status]]))
    if query.workflow_id:
        conditions.append(
            table.c.extra_data["extra_pnginfo"]["workflow"]["id"].as_string() == query.workflow_id
        )
    if query.sort_by == "execution_duration":
        if database.is_sqlite:
            key = func.julianday(table.c.finished_at) - func.julianday(table.c.started_at)
        else:
            key = func.extract("epoch", table.c.finished_at - table.c.started_at)
    else:
        key = table.c.created_at
    order = [key.desc() if query.descending else key.asc(), table.c.prompt_id]
    with database.reading() as session:
        total = session.scalar(select(func.count()).select_from(table).where(*conditions))
        statement = select(Prompt).where(*conditions).order_by(*order).offset(query.offset)
        if query.limit is not None:
            statement = statement.limit(query.limit)
        rows = session.scalars(statement).all()
    reasons = {} if settings is None else waiting_reasons(database, settings, rows)
    jobs = [job_summary(row) for row in rows]
    for job in jobs:
        if job["id"] in reasons:
            job["waiting_for"] = reasons[job["id"]]
    return {
        "jobs": jobs,
        "pagination": {
            "offset": query.offset,
            "limit": query.limit,
            "total": total,
            "has_more": query.offset + len(rows) < total,
        },
    }


def get_job(database, job_id: str, settings=None, team: str | None = None) -> dict | None:
    with database.reading() as session:
        row = session.get(Prompt, job_id)
    if row is None or (team is not None and row.team != team):
        return None
    job = job_detail(row)
    reason = {} if settings is None else waiting_reasons(database, settings, [row])
    if row.prompt_id in reason:
        job["waiting_for"] = reason[row.prompt_id]
    return job


def is_job_id(value) -> bool:
    try:
        return isinstance(value, str) and str(uuid.UUID(value)) == value
    except ValueError:
        return False


def cancel(context, job_ids: list[str], team: str | None = None) -> bool:
    """Dequeue `team`'s pending jobs and interrupt its running ones; False when nothing could be
    cancelled."""
    dequeued = queue_control.cancel_pending(context.database, job_ids, team=team)
    if dequeued:
        context.queue_changed()
    rest = [job_id for job_id in job_ids if job_id not in dequeued]
    interrupted = [job_id for job_id in rest if queue_control.interrupt(context, job_id, team=team)]
    return bool(dequeued or interrupted)
