"""The jobs API of newer ComfyUI (spec §10): prompts as jobs, listed, filtered, paged, cancelled."""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import json
import uuid

from sqlalchemy import String, func, literal, select, tuple_, union_all

from farm.db import prompt_counts

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


# A page holds DEFAULT_LIMIT jobs when the request names no limit, and never more than MAX_LIMIT
# (ComfyUI lists every job when no limit is given; a farm's history holds millions).
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MAX_OFFSET = 2**62  # what the database can skip (past 2**63 it cannot even bind the number)


@dataclasses.dataclass
class JobQuery:
    statuses: list[str] | None = None
    workflow_id: str | None = None
    sort_by: str = "created_at"
    descending: bool = True
    limit: int = DEFAULT_LIMIT
    offset: int = 0
    # Keyset paging (the farm's addition): the (created_at, id) of the last job of the previous
    # page, from its pagination.next_cursor; a deep page costs what the first one does.
    after: tuple[dt.datetime, str] | None = None

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
            query.limit = min(query.limit, MAX_LIMIT)
        if args.get("offset") is not None:
            try:
                query.offset = max(int(args["offset"]), 0)
                if query.offset > MAX_OFFSET:
                    raise ValueError(args["offset"])
            except ValueError:
                raise JobQueryError("offset must be an integer") from None
        if args.get("cursor"):
            if query.sort_by != "created_at":
                raise JobQueryError("cursor paging needs sort_by=created_at")
            query.after = decode_cursor(args["cursor"])
        return query


def encode_cursor(created_at: dt.datetime, job_id: str) -> str:
    text = json.dumps([created_at.isoformat(), job_id], separators=(",", ":"))
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[dt.datetime, str]:
    try:
        if len(cursor) > 400:  # a real one is about 120 characters
            raise ValueError(cursor[:20])
        moment, job_id = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        when = dt.datetime.fromisoformat(moment)
        if when.tzinfo is None or not isinstance(job_id, str):
            raise ValueError(cursor)
        return when, job_id
    except (ValueError, TypeError, UnicodeDecodeError, RecursionError):
        raise JobQueryError("cursor must be a pagination.next_cursor of an earlier page") from None


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
        "workflow_id": row.workflow_id,
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


# What a list shows of each job: never the graphs (a detail's `workflow` has them).
_table = Prompt.__table__
_SUMMARY_COLUMNS = [_table.c[name] for name in (
    "prompt_id", "state", "number", "created_at", "started_at", "finished_at", "messages", "execution_error",
    "outputs", "workflow_id", "needs_id")]
_EVERY_STATE = [state for states in JOB_STATUSES.values() for state in states]


def list_jobs(database, query: JobQuery, settings=None, team: str | None = None) -> dict:
    """`team`'s jobs (None: every team's), a page at a time.

    Newest (or oldest) first, each state's jobs are read along its own index and the pages merged,
    so a page costs the same at the top of a million jobs as deep in them (with `cursor`; `offset`
    costs the jobs it skips). The total comes from the kept counts (farm.db.prompt_counts), or with
    `workflow_id` from that workflow's index."""
    states = [s for status in query.statuses for s in JOB_STATUSES[status]] if query.statuses else _EVERY_STATE
    base = [] if team is None else [_table.c.team == team]
    wanted = query.offset + query.limit + 1  # each state's share of the page, and one more: is there more?
    if query.sort_by == "execution_duration":
        if database.is_sqlite:
            key = func.julianday(_table.c.finished_at) - func.julianday(_table.c.started_at)
        else:
            key = func.extract("epoch", _table.c.finished_at - _table.c.started_at)
    else:
        key = _table.c.created_at

    def ordered(statement, columns):
        sort_key, tie = columns
        return statement.order_by(sort_key.desc() if query.descending else sort_key.asc(),
                                  tie.desc() if query.descending else tie.asc())

    def page_of(conditions, columns=(*_SUMMARY_COLUMNS, key.label("sort_key"))):
        if query.after is not None:
            position = tuple_(_table.c.created_at, _table.c.prompt_id)
            after = tuple_(literal(query.after[0], _table.c.created_at.type), literal(query.after[1], String()))
            conditions = [*conditions, position < after if query.descending else position > after]
        return ordered(select(*columns).where(*conditions), (key, _table.c.prompt_id))

    if query.workflow_id is not None:
        # One workflow's jobs are few: its own index, filtered by state.
        statement = page_of([*base, _table.c.workflow_id == query.workflow_id, _table.c.state.in_(states)])
    elif query.sort_by == "created_at":
        # Each state's first ids from its index alone (an index-only scan), then the page's rows.
        keys = (_table.c.created_at, _table.c.prompt_id)
        merged = union_all(*[select(page_of([*base, _table.c.state == state], keys).limit(wanted).subquery())
                             for state in states]).subquery()
        statement = ordered(
            select(*_SUMMARY_COLUMNS).join_from(merged, _table, _table.c.prompt_id == merged.c.prompt_id),
            (merged.c.created_at, merged.c.prompt_id))
    else:
        statement = page_of([*base, _table.c.state.in_(states)])
    with database.reading() as session:
        rows = session.execute(statement.offset(query.offset).limit(query.limit + 1)).all()
        if query.workflow_id is not None:
            total = session.scalar(select(func.count()).select_from(_table).where(
                *base, _table.c.workflow_id == query.workflow_id, _table.c.state.in_(states)))
        else:
            total = prompt_counts.count(session, states, team)
    has_more = len(rows) > query.limit
    rows = rows[:query.limit]
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
            "has_more": has_more,
            "next_cursor": (encode_cursor(rows[-1].created_at, rows[-1].prompt_id)
                            if has_more and query.sort_by == "created_at" else None),
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
