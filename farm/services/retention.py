"""History retention (FARM_HISTORY_RETENTION_DAYS): deleting ended prompts older than the setting.

Deleted a batch of rows per transaction, oldest first along the history index, so a first prune of
years of history never holds locks or grows a transaction for long, and the farm serves meanwhile.
A batch's cells go only with their whole batch, once every cell of it ended before the cutoff (a
batch half pruned would report wrong progress). Output files are left in storage: they may be
referenced from elsewhere (shots, reviews), and a bucket lifecycle rule or a cron job ages them
better than the farm could. Any process may prune; on PostgreSQL one at a time (an advisory lock).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import time

from sqlalchemy import bindparam, delete, exists, func, literal_column, select

from farm.db.clock import db_now
from farm.db.models import Batch, BatchBlock, Prompt, PromptState, WebhookDelivery

_prompts, _batches = Prompt.__table__, Batch.__table__
_ENDED = [*(s.value for s in PromptState.finished()), PromptState.CANCELLED.value]
_LOCK = 0x66726D72  # names the pruning's advisory lock
BATCH_ROWS = 1000

_OLD_PROMPTS = (
    select(_prompts.c.prompt_id)
    .where(_prompts.c.finished_at < bindparam("cutoff"), _prompts.c.finished_at.is_not(None),
           _prompts.c.batch_id.is_(None), _prompts.c.state.in_(_ENDED))
    .order_by(_prompts.c.finished_at).limit(bindparam("rows"))
)
_OPEN_OR_RECENT_CELL = exists().where(
    _prompts.c.batch_id == _batches.c.id,
    (_prompts.c.finished_at.is_(None)) | (_prompts.c.finished_at >= bindparam("cutoff")),
)
_OLD_BATCHES = (
    select(_batches.c.id).where(_batches.c.created_at < bindparam("cutoff"), ~_OPEN_OR_RECENT_CELL)
    .order_by(_batches.c.created_at).limit(10)
)


@dataclasses.dataclass
class Pruned:
    prompts: int = 0
    batches: int = 0

    def __bool__(self) -> bool:
        return bool(self.prompts or self.batches)


def prune(database, days: float, *, max_rows: int = 20 * BATCH_ROWS, rows_per_batch: int = BATCH_ROWS,
          now: dt.datetime | None = None) -> Pruned:
    """Delete up to about `max_rows` ended prompts (and ended batches with their cells) that ended
    more than `days` ago, `rows_per_batch` per transaction. Call again for more."""
    if now is None:
        with database.engine.connect() as connection:
            now = connection.execute(select(db_now())).scalar_one()
            if now.tzinfo is None:
                now = now.replace(tzinfo=dt.timezone.utc)
    cutoff = now - dt.timedelta(days=days)
    pruned = Pruned()
    while pruned.prompts < max_rows:
        with database.write_connection() as connection:
            if not _turn(connection):
                return pruned
            ids = list(connection.execute(_OLD_PROMPTS, {"cutoff": cutoff, "rows": rows_per_batch}).scalars())
            if ids:
                connection.execute(delete(_prompts).where(_prompts.c.prompt_id.in_(ids)))
        pruned.prompts += len(ids)
        if len(ids) < rows_per_batch:
            break
    while pruned.prompts < max_rows:
        with database.write_connection() as connection:
            if not _turn(connection):
                return pruned
            batch_ids = list(connection.execute(_OLD_BATCHES, {"cutoff": cutoff}).scalars())
            if not batch_ids:
                break
            batch_id = batch_ids[0]
            cells = list(connection.execute(select(_prompts.c.prompt_id).where(_prompts.c.batch_id == batch_id)
                                            .limit(rows_per_batch)).scalars())
            if cells:  # a large batch goes over several transactions, its row last
                connection.execute(delete(_prompts).where(_prompts.c.prompt_id.in_(cells)))
                pruned.prompts += len(cells)
                continue
            connection.execute(delete(BatchBlock.__table__).where(BatchBlock.__table__.c.batch_id == batch_id))
            connection.execute(delete(WebhookDelivery.__table__).where(
                WebhookDelivery.__table__.c.batch_id == batch_id, WebhookDelivery.__table__.c.status != "pending"))
            connection.execute(delete(_batches).where(_batches.c.id == batch_id))
            pruned.batches += 1
    return pruned


def _turn(connection) -> bool:
    """PostgreSQL: whether no other process is pruning now (held to the end of the transaction)."""
    if connection.dialect.name != "postgresql":
        return True
    return bool(connection.execute(select(func.pg_try_advisory_xact_lock(literal_column(str(_LOCK))))).scalar())


class RetentionClock:
    """Prunes at most every `every` seconds from a loop that runs more often (the reaper's)."""

    def __init__(self, database, settings, every: float = 60.0):
        self.database = database
        self.settings = settings
        self.every = every
        self._last = float("-inf")

    def tick(self) -> Pruned | None:
        days = self.settings.history_retention_days
        if days is None or time.monotonic() - self._last < self.every:
            return None
        self._last = time.monotonic()
        return prune(self.database, days)
