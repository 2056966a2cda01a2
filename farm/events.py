"""The event bus: workers publish every execution event; web processes relay them to sockets.

Events travel as JSON on one Redis pub/sub channel: {"type", "data", "prompt_id", "client_id"}.
Without a Redis events URL (a RabbitMQ-only cluster) events are not published.
"""

from __future__ import annotations

import json
import logging

log = logging.getLogger(__name__)

CHANNEL = "farm:events"


def redis_client_url(url: str) -> str:
    """kombu's `redis+socket:///path` is redis-py's `unix:///path`."""
    return "unix://" + url[len("redis+socket://"):] if url.startswith("redis+socket://") else url


class EventBus:
    def __init__(self, url: str | None):
        self.url = url
        self._client = None

    def _redis(self):
        if self._client is None:
            import redis

            self._client = redis.Redis.from_url(redis_client_url(self.url), socket_timeout=5)
        return self._client

    def publish(self, event_type: str, data: dict, *, prompt_id: str | None = None, client_id: str | None = None) -> None:
        if not self.url:
            return
        message = json.dumps({"type": event_type, "data": data, "prompt_id": prompt_id, "client_id": client_id})
        try:
            self._redis().publish(CHANNEL, message)
        except Exception:  # noqa: BLE001 - live events are best effort; history is the record
            log.exception("could not publish %s event", event_type)
