"""Receiving the event bus in a web process, while its sockets want events."""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Callable

from farm.events.wire import BusEvent, channel_for, decode_events, redis_client_url

log = logging.getLogger(__name__)


class EventListener:
    """Receives every event of the bus in a thread of its own and hands each to `deliver`, while
    someone wants them.

    Each socket of the web process holds the listener (`acquire`, which returns once Redis has
    confirmed the subscription, so nothing published afterwards is missed; `release` when the
    socket goes). `idle_seconds` after the last release it unsubscribes: a web process without
    sockets receives nothing, where it would otherwise read and decode every event of the farm.

    Reconnects (with a short back-off) after any Redis error: a web process outlives Redis
    restarts. Events published while it is disconnected are lost, as live events are best effort.
    """

    def __init__(self, url: str, deliver: Callable[[BusEvent], None], idle_seconds: float = 30.0,
                 confirm_seconds: float = 5.0):
        self.url = url
        self.channel = channel_for(url)
        self.deliver = deliver
        self.idle_seconds = idle_seconds
        self.confirm_seconds = confirm_seconds
        self._stop = threading.Event()
        self._wanted = threading.Event()  # subscribe (again) when set
        self._subscribed = threading.Event()  # Redis confirmed the subscription
        self._holders = 0
        self._idle_since = time.monotonic()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def acquire(self) -> bool:
        """One more holder; True once subscribed, False if Redis did not confirm in time."""
        with self._lock:
            self._holders += 1
            self._wanted.set()
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="farm-events-listener", daemon=True)
                self._thread.start()
        return self._subscribed.wait(self.confirm_seconds)

    def release(self) -> None:
        with self._lock:
            self._holders -= 1
            if self._holders == 0:
                self._idle_since = time.monotonic()

    @property
    def subscribed(self) -> bool:
        return self._subscribed.is_set()

    def stop(self) -> None:
        self._stop.set()
        self._wanted.set()

    def _idle(self) -> bool:
        """True when nobody has held the listener for `idle_seconds`: time to unsubscribe."""
        with self._lock:
            if self._holders or time.monotonic() - self._idle_since < self.idle_seconds:
                return False
            # Both under the lock: an acquire from now on waits for the next subscription.
            self._wanted.clear()
            self._subscribed.clear()
            return True

    def _run(self) -> None:
        delay = 0.1
        while not self._stop.is_set():
            if not self._wanted.wait(1.0):
                continue
            pubsub = None
            try:
                # The client must outlive the loop: redis-py closes its pool (the subscribed
                # connection too) when the client object is collected.
                client, pubsub = self._subscribe()
                delay = 0.1
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=1.0)
                    if message is not None:
                        if message["type"] == "message":
                            self._deliver(message["data"])
                    elif self._idle():
                        break
            except Exception as exception:  # noqa: BLE001 - reconnect after any Redis failure
                self._subscribed.clear()
                log.warning("event bus connection lost (%s); reconnecting in %.1f s", exception, delay)
                self._stop.wait(delay)
                delay = min(delay * 2, 5.0)
            finally:
                if pubsub is not None:
                    try:
                        pubsub.close()
                    except Exception:  # noqa: BLE001
                        pass

    def _subscribe(self):
        import redis

        # Named, so an operator (or a test) can tell the relays among Redis's clients; the health
        # checks find a connection that died silently. RESP2: its pub/sub replies parse in half the
        # time of RESP3's in redis-py, and this thread parses every event of the farm.
        client = redis.Redis.from_url(redis_client_url(self.url), health_check_interval=30, protocol=2,
                                      client_name=f"farm-events-{os.getpid()}")
        pubsub = client.pubsub()
        pubsub.subscribe(self.channel)
        deadline = time.monotonic() + self.confirm_seconds
        while True:  # the confirmation is the first reply; events follow it
            message = pubsub.get_message(timeout=max(0.0, deadline - time.monotonic()))
            if message is not None and message["type"] == "subscribe":
                self._subscribed.set()
                return client, pubsub
            if message is None and time.monotonic() >= deadline:
                pubsub.close()
                raise TimeoutError("Redis did not confirm the events subscription")

    def _deliver(self, raw: bytes) -> None:
        try:
            events = decode_events(raw)
        except ValueError:
            log.warning("ignoring a malformed message on %s", self.channel)
            return
        for event in events:
            try:
                self.deliver(event)
            except Exception:  # noqa: BLE001 - one bad event must not stop the relay
                log.exception("could not relay a %s event", event.type)
