"""Webhooks, signed as the Standard Webhooks scheme does, delivered at least once from an outbox.

A prompt's end (`prompt.completed`, `prompt.failed`) is written to the outbox in the transaction
that records the end, for every URL that wants it: the prompt's own (`extra_data.webhook`), its
batch's and its team's. `batch.completed` is queued once a batch with a webhook (its own or its
team's) has no cell left to run, by a sweep that any web process runs (so it does not matter which
path ended the last cell). A deliverer thread in each web process posts what is due, with the
headers `webhook-id` (the receiver's idempotency key), `webhook-timestamp` and
`webhook-signature` (`v1,` + base64 HMAC-SHA256 of "{id}.{timestamp}.{body}" with the team's
secret), and retries with exponential backoff until a 2xx, giving up after MAX_ATTEMPTS.
Requests are written here with `requests` and the backoff is one formula: the outbox row, not a
retry loop, is what survives restarts.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import logging
import secrets
import threading
import time
import uuid

from sqlalchemy import bindparam, exists, func, insert, not_, or_, select, update

from farm.db.clock import db_now, later
from farm.db.models import Batch, Prompt, PromptState, Team, WebhookDelivery

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 15  # about a day and a half of backoff
FIRST_DELAY_SECONDS = 5.0
MAX_DELAY_SECONDS = 3 * 3600.0
LEASE_SECONDS = 60.0  # a delivery being posted is not taken by another deliverer meanwhile
TIMEOUT_SECONDS = 10.0
_UNKNOWN = object()

_deliveries, _batches, _teams, _prompts = (WebhookDelivery.__table__, Batch.__table__, Team.__table__,
                                           Prompt.__table__)
_INSERT = insert(_deliveries).values(created_at=db_now(), next_at=db_now(), status="pending", attempts=0)
_BATCH_WEBHOOK = select(_batches.c.webhook).where(_batches.c.id == bindparam("batch_id"))
_TEAM_WEBHOOK = select(_teams.c.webhook).where(_teams.c.name == bindparam("team"))
_PENDING_OR_ACTIVE = [PromptState.QUEUED.value, PromptState.PAUSED.value, PromptState.DISPATCHED.value,
                      PromptState.RUNNING.value]


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` header value for this message."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    digest = hmac.new(key, f"{message_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def prompt_event(state: str) -> str | None:
    if state == PromptState.SUCCESS.value:
        return "prompt.completed"
    if state in (PromptState.ERROR.value, PromptState.INTERRUPTED.value):
        return "prompt.failed"
    return None


def enqueue(connection, team: str, urls, event: str, payload: dict, batch_id: str | None = None,
            prompt_id: str | None = None) -> int:
    """One outbox row per distinct URL, in the caller's transaction."""
    rows = [{"id": f"msg_{uuid.uuid4().hex}", "team": team, "url": url, "event": event,
             "payload": {"type": event, "timestamp": _now_iso(), "data": payload},
             "batch_id": batch_id, "prompt_id": prompt_id} for url in dict.fromkeys(u for u in urls if u)]
    if rows:
        connection.execute(_INSERT, rows)
    return len(rows)


def _now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class PromptHooks:
    """Which URLs want a prompt's end, asking the database as little as possible: team webhooks
    come from the cached team settings, a batch's webhook (it never changes) is remembered."""

    def __init__(self, teams=None):
        self.teams = teams  # farm.queue.fair_share.TeamBook, or None: ask the database
        self._batch_webhooks: dict[str, str | None] = {}

    def urls(self, connection, team: str, batch_id: str | None, extra_data: dict | None) -> list[str]:
        urls = []
        own = (extra_data or {}).get("webhook")
        if isinstance(own, str) and own.startswith(("http://", "https://")):
            urls.append(own)
        if batch_id is not None:
            if batch_id not in self._batch_webhooks:
                if len(self._batch_webhooks) > 10000:
                    self._batch_webhooks = {}
                self._batch_webhooks[batch_id] = connection.execute(_BATCH_WEBHOOK, {"batch_id": batch_id}).scalar()
            urls.append(self._batch_webhooks[batch_id])
        if self.teams is not None:
            urls.append(self.teams.limits(team).webhook)
        else:
            urls.append(connection.execute(_TEAM_WEBHOOK, {"team": team}).scalar())
        return [url for url in urls if url]

    def prompt_ended(self, connection, prompt_id: str, team: str, batch_id: str | None, extra_data: dict | None,
                     state: str, outputs: dict | None, error: dict | None) -> int:
        event = prompt_event(state)
        if event is None:
            return 0
        urls = self.urls(connection, team, batch_id, extra_data)
        if not urls:
            return 0
        payload = {"prompt_id": prompt_id, "team": team, "status": state, "outputs": outputs or {}}
        if batch_id is not None:
            batch = (extra_data or {}).get("farm_batch") or {}
            payload["batch"] = {"id": batch_id, "cell": batch.get("cell"), "values": batch.get("values")}
        if error:
            payload["error"] = {key: error.get(key) for key in ("exception_type", "exception_message", "node_id",
                                                                "node_type")}
        return enqueue(connection, team, urls, event, payload, batch_id, prompt_id)


def notify_finished_batches(database, limit: int = 50) -> int:
    """Queue batch.completed for batches with a webhook (theirs or their team's) that have no cell
    left to run and were not told yet; return how many."""
    has_webhook = or_(_batches.c.webhook.is_not(None),
                      exists().where(_teams.c.name == _batches.c.team, _teams.c.webhook.is_not(None)))
    unfinished = exists().where(_prompts.c.batch_id == _batches.c.id, _prompts.c.state.in_(_PENDING_OR_ACTIVE))
    told = 0
    with database.write_connection() as connection:
        batches = connection.execute(
            select(_batches).where(_batches.c.notified_at.is_(None), has_webhook, not_(unfinished))
            .limit(limit).with_for_update(skip_locked=True)
        ).all()
        for batch in batches:
            counts = dict(connection.execute(
                select(_prompts.c.state, func.count()).where(_prompts.c.batch_id == batch.id).group_by(_prompts.c.state)
            ).all())
            team_webhook = connection.execute(_TEAM_WEBHOOK, {"team": batch.team}).scalar()
            failed = counts.get(PromptState.ERROR.value, 0) + counts.get(PromptState.INTERRUPTED.value, 0)
            state = "cancelled" if batch.cancelled else ("failed" if failed else "done")
            told += enqueue(connection, batch.team, [batch.webhook, team_webhook], "batch.completed",
                            {"batch_id": batch.id, "name": batch.name, "team": batch.team, "state": state,
                             "cells": batch.cells, "counts": counts}, batch_id=batch.id)
            connection.execute(update(_batches).where(_batches.c.id == batch.id).values(notified_at=db_now()))
    return told


def deliveries_of(database, batch_id: str, limit: int = 100) -> list[dict]:
    """The batch's webhook messages, newest first, with their last status (the batch view)."""
    with database.reading() as session:
        rows = session.execute(
            select(WebhookDelivery).where(WebhookDelivery.batch_id == batch_id)
            .order_by(WebhookDelivery.created_at.desc()).limit(limit)
        ).scalars().all()
    return [{"id": row.id, "event": row.event, "url": row.url, "status": row.status, "attempts": row.attempts,
             "last_status": row.last_status, "prompt_id": row.prompt_id,
             "last_at": row.last_at.isoformat() if row.last_at else None} for row in rows]


def backoff(attempts: int) -> float:
    """Seconds before the next try after `attempts` failed ones: 5 s, 10 s, 20 s ... at most 3 h."""
    return min(FIRST_DELAY_SECONDS * 2 ** max(attempts - 1, 0), MAX_DELAY_SECONDS)


class Deliverer:
    """Posts due outbox rows; several (one per web process) share the work through row leases."""

    def __init__(self, database, session=None, timeout: float = TIMEOUT_SECONDS, on_outcome=None):
        import requests

        self.database = database
        self.http = session or requests.Session()
        self.timeout = timeout
        self.on_outcome = on_outcome  # (event, "delivered" | "retry" | "failed"): metrics

    def run_once(self, limit: int = 20) -> int:
        """Deliver what is due now; return how many were posted (whatever the answer)."""
        due = self._lease(limit)
        for row in due:
            self._deliver(row)
        return len(due)

    def _lease(self, limit: int) -> list:
        with self.database.write_connection() as connection:
            rows = connection.execute(
                select(_deliveries, _teams.c.webhook_secret)
                .join(_teams, _teams.c.name == _deliveries.c.team)
                .where(_deliveries.c.status == "pending", _deliveries.c.next_at <= db_now())
                .order_by(_deliveries.c.next_at).limit(limit).with_for_update(of=_deliveries, skip_locked=True)
            ).all()
            if rows:
                connection.execute(update(_deliveries).where(_deliveries.c.id.in_([row.id for row in rows]))
                                   .values(next_at=later(LEASE_SECONDS)))
        return rows

    def _deliver(self, row) -> None:
        body = json.dumps(row.payload, separators=(",", ":")).encode()
        timestamp = int(time.time())
        headers = {"Content-Type": "application/json", "webhook-id": row.id,
                   "webhook-timestamp": str(timestamp),
                   "webhook-signature": sign(row.webhook_secret, row.id, timestamp, body)}
        try:
            answer = self.http.post(row.url, data=body, headers=headers, timeout=self.timeout, allow_redirects=False)
            ok, status = 200 <= answer.status_code < 300, str(answer.status_code)
        except Exception as error:  # noqa: BLE001 - any failure to post is a failed attempt, retried later
            ok, status = False, f"{type(error).__name__}: {error}"[:500]
        attempts = row.attempts + 1
        with self.database.write_connection() as connection:
            if ok:
                values, outcome = {"status": "delivered"}, "delivered"
            elif attempts >= MAX_ATTEMPTS:
                values, outcome = {"status": "failed"}, "failed"
                log.warning("webhook %s to %s given up after %d attempts: %s", row.id, row.url, attempts, status)
            else:
                values, outcome = {"next_at": later(backoff(attempts))}, "retry"
            connection.execute(update(_deliveries).where(_deliveries.c.id == row.id).values(
                attempts=attempts, last_status=status, last_at=db_now(), **values))
        if self.on_outcome is not None:
            self.on_outcome(row.event, outcome)


class WebhookLoop:
    """A daemon thread per web process: the batch sweep and the deliveries, every `interval` seconds."""

    def __init__(self, database, interval: float = 1.0, on_outcome=None):
        self.database = database
        self.interval = interval
        self.deliverer = Deliverer(database, on_outcome=on_outcome)

    def start(self) -> None:
        threading.Thread(target=self._run, name="farm-webhooks", daemon=True).start()

    def _run(self) -> None:
        while True:
            try:
                notify_finished_batches(self.database)
                while self.deliverer.run_once():
                    pass
            except Exception:  # noqa: BLE001 - a database hiccup: try again next round
                log.exception("webhook round failed")
            time.sleep(self.interval)

