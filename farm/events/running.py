"""Reading which node each worker runs now (the RUNNING hash farm.events.bus keeps)."""

from __future__ import annotations

import json
import logging
import time

from farm.events.wire import RUNNING, redis_client_url

log = logging.getLogger(__name__)


class RunningNodes:
    """A web process's reader of the RUNNING hash (one Redis round trip per question).

    After a failure it does not ask again for `retry_after` seconds: while Redis is down, new
    sockets connect without waiting on it.
    """

    def __init__(self, url: str | None, retry_after: float = 5.0):
        self.url = url
        self.retry_after = retry_after
        self._client = None
        self._failed_at = float("-inf")

    def for_client(self, client_id: str) -> str | None:
        """The display id of the node running now in a prompt of `client_id`, if any."""
        for entry in self.by_worker().values():
            if entry.get("client_id") == client_id and entry.get("node") is not None:
                return str(entry["node"])
        return None

    def by_worker(self) -> dict[str, dict]:
        """worker name -> {"prompt_id", "client_id", "node"[, "value", "max"]} of what it runs now."""
        if not self.url or time.monotonic() - self._failed_at < self.retry_after:
            return {}
        try:
            if self._client is None:
                import redis

                self._client = redis.Redis.from_url(redis_client_url(self.url), socket_timeout=2,
                                                    socket_connect_timeout=2)
            entries = self._client.hgetall(RUNNING)
        except Exception as exception:  # noqa: BLE001 - a Redis outage costs the hint, not the request
            self._failed_at = time.monotonic()
            log.warning("could not read the running nodes from the event bus (%s)", exception)
            return {}
        found = {}
        for worker, raw in entries.items():
            try:
                entry = json.loads(raw)
            except ValueError:
                continue
            if isinstance(entry, dict):
                found[worker.decode() if isinstance(worker, bytes) else worker] = entry
        return found
