"""Waking idle workers to claim a new prompt for themselves, before the web's dispatch pass.

The dispatch pass of a web process (farm.queue.trigger) gives an idle worker its prompt with a
write transaction, a broker message and the worker's own claim transaction: milliseconds before
the prompt starts. A worker whose events URL is set also listens on the farm's wake channel, and
when woken while idle it takes its next prompt itself: the dispatcher's `take_next`, the path a
busy worker takes between two prompts (one transaction, the same placement, fair share and
locking, claimed at once, no broker message). The web publishes one wake per trigger, before its
pass; PUBLISH answers how many workers listen, and when some do, the pass waits WAKE_GRACE first,
so that it finds those workers busy and only serves what they did not take (a prompt they cannot
run, a worker whose wake was lost). Wakes are best effort: without Redis, or without listeners,
the pass runs at once, as before.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Callable

from farm.events.wire import channel_for, redis_client_url

log = logging.getLogger(__name__)

WAKE = "farm:wake"
WAKE_GRACE = 0.05  # seconds the web's pass waits after workers were woken


class WakeSender:
    """The web's side: `publish()` wakes the listening workers; how many there were (0 on any
    Redis failure: the pass then runs at once)."""

    def __init__(self, url: str):
        self.url = url
        self.channel = channel_for(url, WAKE)
        self._client = None

    def publish(self) -> int:
        try:
            if self._client is None:
                import redis

                self._client = redis.Redis.from_url(redis_client_url(self.url), socket_timeout=2,
                                                    socket_connect_timeout=2)
            return int(self._client.publish(self.channel, b"1"))
        except Exception as exception:  # noqa: BLE001 - a wake is an optimisation; the pass remains
            log.debug("could not wake the workers (%s)", exception)
            self._client = None
            return 0


class WakeListener:
    """A worker's side: a thread subscribed to the wake channel that sets `wanted` on each wake
    (the worker's claiming thread waits on it: a long prompt never holds the subscription up).
    Reconnects with a short back-off after any Redis error."""

    def __init__(self, url: str, wanted: threading.Event):
        self.url = url
        self.channel = channel_for(url, WAKE)
        self.wanted = wanted
        self._stop = threading.Event()
        self._subscribed = threading.Event()  # Redis confirmed the subscription
        self._thread: threading.Thread | None = None

    def start(self, wait: float = 5.0) -> bool:
        """Subscribe in a thread of its own; True once Redis confirmed it (within `wait` seconds),
        so that the worker, registered after this, is woken by every submission."""
        self._thread = threading.Thread(target=self._run, name="farm-wake", daemon=True)
        self._thread.start()
        return self._subscribed.wait(wait)

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        import redis

        delay = 0.1
        while not self._stop.is_set():
            pubsub = None
            try:
                client = redis.Redis.from_url(redis_client_url(self.url), health_check_interval=30,
                                              client_name=f"farm-wake-{os.getpid()}")
                pubsub = client.pubsub()
                pubsub.subscribe(self.channel)
                delay = 0.1
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=1.0)
                    if message is None:
                        continue
                    if message["type"] == "subscribe":
                        self._subscribed.set()
                    elif message["type"] == "message":
                        self.wanted.set()
            except Exception as exception:  # noqa: BLE001 - reconnect after any Redis failure
                self._subscribed.clear()
                log.warning("wake channel connection lost (%s); reconnecting in %.1f s", exception, delay)
                self._stop.wait(delay)
                delay = min(delay * 2, 5.0)
            finally:
                if pubsub is not None:
                    try:
                        pubsub.close()
                    except Exception:  # noqa: BLE001
                        pass


def claiming_loop(wanted: threading.Event, stopping: threading.Event, claim: Callable[[], None]) -> threading.Thread:
    """The worker's thread that runs `claim()` each time `wanted` is set, until `stopping`."""

    def run() -> None:
        while not stopping.is_set():
            if not wanted.wait(1.0):
                continue
            wanted.clear()
            try:
                claim()
            except Exception:  # noqa: BLE001 - the web's pass still serves this worker
                log.exception("claiming a prompt on a wake failed")
                time.sleep(0.5)

    thread = threading.Thread(target=run, name="farm-claim-on-wake", daemon=True)
    thread.start()
    return thread
