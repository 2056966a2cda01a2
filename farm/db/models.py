"""The tables: prompts (queue and history in one row per prompt), workers, model needs, counters,
teams, their API keys and the audit log."""

from __future__ import annotations

import datetime as dt
import enum

from sqlalchemy import (JSON, BigInteger, Boolean, DateTime, Float, ForeignKey, Index, Integer, LargeBinary, String,
                        Text, TypeDecorator, text)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# JSONB on PostgreSQL (indexable, compact), plain JSON text elsewhere.
JSONType = JSON().with_variant(JSONB(), "postgresql")


class UTCDateTime(TypeDecorator):
    """Timestamps stored in UTC and always read back timezone-aware (SQLite drops the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is not None and value.tzinfo is not None:
            value = value.astimezone(dt.timezone.utc)
            if dialect.name == "sqlite":
                value = value.replace(tzinfo=None)
        return value

    def process_result_value(self, value, dialect):
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=dt.timezone.utc)
        return value


class Base(DeclarativeBase):
    pass


class PromptState(str, enum.Enum):
    QUEUED = "queued"          # accepted, waiting in SQL order
    DISPATCHED = "dispatched"  # sent to one worker's queue, not yet claimed
    RUNNING = "running"        # claimed by that worker
    SUCCESS = "success"
    ERROR = "error"
    INTERRUPTED = "interrupted"
    CANCELLED = "cancelled"    # removed from the queue before it ran
    PAUSED = "paused"          # a cell of a paused batch: pending, but not dispatched until resumed

    @classmethod
    def finished(cls) -> tuple["PromptState", ...]:
        return (cls.SUCCESS, cls.ERROR, cls.INTERRUPTED)

    @classmethod
    def active(cls) -> tuple["PromptState", ...]:
        return (cls.DISPATCHED, cls.RUNNING)


def _where_set(column: str) -> dict:
    """Index options for a partial index of the rows where `column` is not NULL."""
    condition = f"{column} IS NOT NULL"
    return {"postgresql_where": text(condition), "sqlite_where": text(condition)}


class Prompt(Base):
    """One submitted prompt, from acceptance to its history entry."""

    __tablename__ = "prompts"

    prompt_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    number: Mapped[float] = mapped_column(Float, nullable=False)
    front: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    client_id: Mapped[str | None] = mapped_column(String(255))
    prompt: Mapped[dict] = mapped_column(JSONType, nullable=False)
    extra_data: Mapped[dict] = mapped_column(JSONType, nullable=False)
    outputs_to_execute: Mapped[list] = mapped_column(JSONType, nullable=False)
    partial_execution_targets: Mapped[list | None] = mapped_column(JSONType)
    # sha256 of the canonical request body: a retry with the same id and body is idempotent.
    request_hash: Mapped[str] = mapped_column(String(64), nullable=False)
    # The node_errors answered at submission (partial success keeps the failing outputs' errors).
    node_errors: Mapped[dict] = mapped_column(JSONType, nullable=False, default=dict)
    state: Mapped[str] = mapped_column(String(16), nullable=False, default=PromptState.QUEUED.value)
    attempt: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    worker: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, nullable=False)
    dispatched_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    started_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    outputs: Mapped[dict | None] = mapped_column(JSONType)
    # The history status messages: [[event, data], ...] as ComfyUI records them.
    messages: Mapped[list | None] = mapped_column(JSONType)
    # The execution_error payload when a node failed (node id, class, exception, traceback...).
    execution_error: Mapped[dict | None] = mapped_column(JSONType)
    # The model files this prompt loads (a model_needs row); None when it loads none.
    needs_id: Mapped[int | None] = mapped_column(Integer)
    # Workers that lost this prompt (presumed dead, or past the prompt timeout): it is retried
    # on another worker when one can run it.
    lost_on: Mapped[list | None] = mapped_column(JSONType)
    # When model affinity first let an idle worker pass this prompt over (database time): the
    # bound on how long affinity may keep it waiting counts from here.
    passed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    # The team that submitted it (its key's team; "default" with auth off): what it is seen by.
    team: Mapped[str] = mapped_column(String(64), nullable=False, default="default", server_default="default")
    # A batch's cell: the batch, the cell's index in it and its sweep values (None: a plain prompt).
    batch_id: Mapped[str | None] = mapped_column(String(36))
    cell_index: Mapped[int | None] = mapped_column(Integer)
    cell_values: Mapped[dict | None] = mapped_column(JSONType)
    # Its batch's priority (0-100, 50 for plain prompts): higher runs first within the team.
    priority: Mapped[int] = mapped_column(Integer, nullable=False, default=50, server_default="50")
    # Worker tags it needs (its batch's); None: any worker.
    tags: Mapped[list | None] = mapped_column(JSONType)
    # The first key of the queue order: 0 for `front`, else 101 - priority (plain prompts 51), so
    # one ascending index gives "front first, then higher priority, then ComfyUI's number order".
    queue_rank: Mapped[int] = mapped_column(Integer, nullable=False, default=51, server_default="51")
    # A batch cell's retries after failures not of its own making (out of memory, timeout).
    retries: Mapped[int] = mapped_column(Integer, nullable=False, default=0, server_default="0")
    # Prompts with the same key may be sampled together in one batch (farm.graph.coalesce); None:
    # it runs alone.
    coalesce_key: Mapped[str | None] = mapped_column(String(48))
    # The editor's workflow id (extra_pnginfo.workflow.id), for GET /api/jobs?workflow_id=.
    workflow_id: Mapped[str | None] = mapped_column(String(64))

    __table_args__ = (
        # The queue order: front, then priority (queue_rank), then number and prompt_id (ComfyUI's
        # heap order; with no batches every prompt has rank 51 or 0, and this is ComfyUI's order).
        Index("ix_prompts_queue", "state", "queue_rank", "number", "prompt_id"),
        # Each team's queue in order (fair share reads every team's first eligible prompt).
        Index("ix_prompts_team", "team", "state", "queue_rank", "number", "prompt_id"),
        # The indexes on a column that is NULL when a prompt is accepted (no batch, worker, end or
        # coalescing key yet) hold only the rows where it is set: a submission writes 5 B-trees,
        # not 11 (each one a page per commit). Their queries compare the column (or say IS NOT
        # NULL), which both databases take as implying the index's condition.
        Index("ix_prompts_batch", "batch_id", "cell_index", **_where_set("batch_id")),
        Index("ix_prompts_batch_state", "batch_id", "state", **_where_set("batch_id")),
        # History paging: finished prompts in completion order.
        Index("ix_prompts_history", "finished_at", "prompt_id", **_where_set("finished_at")),
        Index("ix_prompts_worker", "worker", "state", **_where_set("worker")),
        # A worker's companions for a group: the queued prompts of one key, in queue order.
        Index("ix_prompts_coalesce", "coalesce_key", "state", "queue_rank", "number", "prompt_id",
              **_where_set("coalesce_key")),
        # GET /api/jobs, newest first: per state (a list over several states merges each state's
        # first rows), per team and state, and per workflow id.
        Index("ix_prompts_state_created", "state", "created_at", "prompt_id"),
        Index("ix_prompts_team_created", "team", "state", "created_at", "prompt_id"),
        Index("ix_prompts_workflow", "workflow_id", "created_at", "prompt_id", **_where_set("workflow_id")),
        # A team's history in completion order.
        Index("ix_prompts_team_history", "team", "finished_at", "prompt_id", **_where_set("finished_at")),
    )


class Worker(Base):
    """A live worker process (one GPU), kept fresh by its heartbeat."""

    __tablename__ = "workers"

    name: Mapped[str] = mapped_column(String(255), primary_key=True)
    # A new value per process start: prompts held by an older session of this name are stale.
    # Empty once the worker stopped or was presumed dead (the row stays for its counters).
    session: Mapped[str] = mapped_column(String(64), nullable=False)
    queue: Mapped[str] = mapped_column(String(255), nullable=False)
    host: Mapped[str] = mapped_column(String(255), nullable=False)
    pid: Mapped[int] = mapped_column(Integer, nullable=False)
    gpu_index: Mapped[int | None] = mapped_column(Integer)
    device_name: Mapped[str] = mapped_column(String(255), nullable=False)
    device_type: Mapped[str] = mapped_column(String(32), nullable=False)
    vram_total: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    vram_free: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    ram_total: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    ram_free: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    loaded_models: Mapped[list] = mapped_column(JSONType, nullable=False, default=list)
    # {folder type: [relative paths]}: the model files this worker can load (validation combos).
    model_files: Mapped[dict] = mapped_column(JSONType, nullable=False, default=dict, server_default="{}")
    current_prompt: Mapped[str | None] = mapped_column(String(255))
    tags: Mapped[list] = mapped_column(JSONType, nullable=False, default=list, server_default="[]")
    # Operator states: a draining worker finishes its prompt and takes no more; a locked one takes
    # none until unlocked (set by an operator, or by the worker after losing prompts in a row).
    draining: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False, server_default="0")
    locked: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False, server_default="0")
    lock_reason: Mapped[str | None] = mapped_column(Text)
    # Prompts lost or timed out in a row (reset by any prompt that ends normally).
    failures_in_row: Mapped[int] = mapped_column(Integer, nullable=False, default=0, server_default="0")
    prompts_done: Mapped[int] = mapped_column(Integer, nullable=False, default=0, server_default="0")
    prompts_failed: Mapped[int] = mapped_column(Integer, nullable=False, default=0, server_default="0")
    version: Mapped[str] = mapped_column(String(64), nullable=False)
    python_version: Mapped[str] = mapped_column(Text, nullable=False, default="")
    torch_version: Mapped[str] = mapped_column(String(64), nullable=False, default="")
    started_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, nullable=False)
    last_seen: Mapped[dt.datetime] = mapped_column(UTCDateTime, nullable=False)


class ModelNeeds(Base):
    """A set of model files some prompts need ("checkpoints/a.safetensors", ...), stored once.

    Sets are few and never change, so a dispatcher keeps them in memory and asks SQL only for
    prompts whose set the worker at hand has every file of.
    """

    __tablename__ = "model_needs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    # sha256 of the sorted file list: the same set submitted anywhere maps to one row.
    key: Mapped[str] = mapped_column(String(64), nullable=False, unique=True)
    files: Mapped[list] = mapped_column(JSONType, nullable=False)


class Counter(Base):
    """Server-wide counters shared by every web process (the prompt number, dispatch paused)."""

    __tablename__ = "counters"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[int] = mapped_column(Integer, nullable=False, default=0)


class PromptCount(Base):
    """How many prompts a team has in a state, kept by triggers on prompts (migration 0011);
    on PostgreSQL plus the rows of prompt_count_deltas not yet folded in (farm.db.prompt_counts)."""

    __tablename__ = "prompt_counts"

    team: Mapped[str] = mapped_column(String(64), primary_key=True)
    state: Mapped[str] = mapped_column(String(16), primary_key=True)
    n: Mapped[int] = mapped_column(BigInteger, nullable=False)


class PromptCountDelta(Base):
    """A change to a PromptCount, appended by the triggers on PostgreSQL (no row lock taken)."""

    __tablename__ = "prompt_count_deltas"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    team: Mapped[str] = mapped_column(String(64), nullable=False)
    state: Mapped[str] = mapped_column(String(16), nullable=False)
    n: Mapped[int] = mapped_column(BigInteger, nullable=False)


class Team(Base):
    """A team (a show, in OpenCue's words): whose work a prompt is, and its share of the workers."""

    __tablename__ = "teams"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    # Worker slots the team is guaranteed (fair share), and the most it may hold (None: no cap).
    share: Mapped[float] = mapped_column(Float, nullable=False, default=1.0, server_default="1")
    burst: Mapped[int | None] = mapped_column(Integer)
    max_queued: Mapped[int | None] = mapped_column(Integer)
    max_running: Mapped[int | None] = mapped_column(Integer)
    # Priorities above this (and `front`) need the operator role.
    max_priority: Mapped[int] = mapped_column(Integer, nullable=False, default=50, server_default="50")
    # Where every one of the team's prompt and batch events is posted (None: nowhere), and the
    # secret all its webhooks are signed with ("whsec_" + base64, the Standard Webhooks form).
    webhook: Mapped[str | None] = mapped_column(Text)
    webhook_secret: Mapped[str] = mapped_column(String(64), nullable=False, default="", server_default="")
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, nullable=False)


class ApiKey(Base):
    """An API key of a team with a role; only the SHA-256 of its secret is kept."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    team: Mapped[str] = mapped_column(String(64), ForeignKey("teams.name"), nullable=False)
    role: Mapped[str] = mapped_column(String(16), nullable=False)
    label: Mapped[str] = mapped_column(Text, nullable=False, default="", server_default="")
    prefix: Mapped[str] = mapped_column(String(16), nullable=False)  # shown in lists and the audit log
    secret_hash: Mapped[str] = mapped_column(String(64), nullable=False, unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, nullable=False)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class AuditEntry(Base):
    """One change to someone else's work or to the farm: who (key prefix, team, role), what, when."""

    __tablename__ = "audit"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime, nullable=False)
    actor: Mapped[str] = mapped_column(String(64), nullable=False)
    actor_team: Mapped[str] = mapped_column(String(64), nullable=False)
    role: Mapped[str] = mapped_column(String(16), nullable=False)
    action: Mapped[str] = mapped_column(String(64), nullable=False)
    target: Mapped[str] = mapped_column(Text, nullable=False)
    detail: Mapped[dict] = mapped_column(JSONType, nullable=False, default=dict)


class Batch(Base):
    """A studio batch: cells (prompts) made from one workflow and a sweep, or from a list of
    workflows, with a priority, caps and required worker tags. Its state comes from its cells'."""

    __tablename__ = "batches"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    team: Mapped[str] = mapped_column(String(64), nullable=False)
    name: Mapped[str] = mapped_column(Text, nullable=False, default="", server_default="")
    priority: Mapped[int] = mapped_column(Integer, nullable=False, default=50, server_default="50")
    paused: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False, server_default="0")
    cancelled: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False, server_default="0")
    max_workers: Mapped[int | None] = mapped_column(Integer)
    tags: Mapped[list] = mapped_column(JSONType, nullable=False, default=list, server_default="[]")
    webhook: Mapped[str | None] = mapped_column(Text)
    sweep: Mapped[dict] = mapped_column(JSONType, nullable=False)
    cells: Mapped[int] = mapped_column(Integer, nullable=False)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, nullable=False)
    created_by: Mapped[str] = mapped_column(String(64), nullable=False, default="", server_default="")
    # When batch.completed was queued for its webhooks (None: not yet, or reopened by a retry).
    notified_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (
        Index("ix_batches_team_created", "team", "created_at", "id"),
        Index("ix_batches_created", "created_at", "id"),
    )


class BatchBlock(Base):
    """A worker's failures on one batch's cells; at BLOCK_AFTER it takes none of them any more
    (Flamenco's per-job blocklist), until an operator removes the entry."""

    __tablename__ = "batch_blocks"

    batch_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    worker: Mapped[str] = mapped_column(String(255), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer, nullable=False, default=0, server_default="0")
    blocked: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False, server_default="0")


class WebhookDelivery(Base):
    """One webhook message (the outbox): written in the transaction of what it tells, then posted
    at least once, with exponential backoff, until the receiver answers 2xx or it is given up."""

    __tablename__ = "webhook_deliveries"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # webhook-id: the receiver's idempotency key
    team: Mapped[str] = mapped_column(String(64), nullable=False)
    url: Mapped[str] = mapped_column(Text, nullable=False)
    event: Mapped[str] = mapped_column(String(32), nullable=False)
    payload: Mapped[dict] = mapped_column(JSONType, nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False)  # pending | delivered | failed
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0, server_default="0")
    next_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, nullable=False)
    last_status: Mapped[str | None] = mapped_column(Text)  # the last answer: an HTTP status or the error
    last_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, nullable=False)
    batch_id: Mapped[str | None] = mapped_column(String(36))
    prompt_id: Mapped[str | None] = mapped_column(String(255))

    __table_args__ = (
        Index("ix_webhook_deliveries_due", "status", "next_at"),
        Index("ix_webhook_deliveries_batch", "batch_id"),
    )


class UserFile(Base):
    """A file of ComfyUI's user folder (the editor's settings, saved workflows, subgraphs,
    templates), one folder per team: in the database, so every web host serves the same files."""

    __tablename__ = "user_files"

    team: Mapped[str] = mapped_column(String(64), primary_key=True)
    path: Mapped[str] = mapped_column(String(1024), primary_key=True)  # "workflows/a.json"
    content: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)
    size: Mapped[int] = mapped_column(Integer, nullable=False)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, nullable=False)
    modified_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, nullable=False)
