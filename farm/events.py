"""The event bus: workers publish every execution event; web processes relay them to sockets.

Events travel as JSON on one Redis pub/sub channel: {"type", "data", "prompt_id", "client_id"}.
Publishing never blocks the executor: events go through an in-process queue to a sender thread
that publishes them in order, in batches (one round trip for a burst). Without a Redis events
URL (a RabbitMQ-only cluster) events are not published.
"""

from __future__ import annotations

import json
import logging
import queue
import threading

log = logging.getLogger(__name__)

CHANNEL = "farm:events"


def redis_client_url(url: str) -> str:
    """kombu's `redis+socket:///path` is redis-py's `unix:///path`."""
    return "unix://" + url[len("redis+socket://"):] if url.startswith("redis+socket://") else url


class EventBus:
    def __init__(self, url: str | None, max_batch: int = 256):
        self.url = url
        self.max_batch = max_batch
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def publish(self, event_type: str, data: dict, *, prompt_id: str | None = None, client_id: str | None = None) -> None:
        if not self.url:
            return
        self._start()
        self._queue.put(json.dumps({"type": event_type, "data": data, "prompt_id": prompt_id, "client_id": client_id}))

    def close(self, timeout: float = 5) -> None:
        """Send what is queued, then stop the sender thread."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout)

    def _start(self) -> None:
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._send_loop, name="farm-events", daemon=True)
                    self._thread.start()

    def _send_loop(self) -> None:
        import redis

        client = redis.Redis.from_url(redis_client_url(self.url), socket_timeout=5)
        while True:
            batch = [self._queue.get()]
            while len(batch) < self.max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            stop = None in batch
            messages = [message for message in batch if message is not None]
            try:
                pipeline = client.pipeline(transaction=False)
                for message in messages:
                    pipeline.publish(CHANNEL, message)
                pipeline.execute()
            except Exception:  # noqa: BLE001 - live events are best effort; history is the record
                log.exception("could not publish %d event(s)", len(messages))
            if stop:
                return
