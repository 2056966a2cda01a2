"""Publishing on the event bus: workers' execution events, status broadcasts, running nodes.

Publishing never blocks the executor: events go through an in-process queue to a sender thread
that publishes them in order, a burst as one pub/sub message (every web process pays per message
it receives). Without a Redis events URL (a RabbitMQ-only cluster) events are not published.

Beside the events, each worker keeps the node it is running in one Redis hash (RUNNING, field =
worker name), so that any web process, one started after the prompt began included, can tell a
reconnecting client its running node (spec 4.1). A worker clears its field when its prompt ends,
when it starts and when it stops; the worker that reaps a dead one clears the dead one's.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from typing import Callable

from farm.events.wire import RUNNING, channel_for, encode_event, redis_client_url, status_data

log = logging.getLogger(__name__)


class _RunningNode:
    """A change to the RUNNING hash: `worker` runs `value` now (JSON), or nothing (None)."""

    __slots__ = ("worker", "value")

    def __init__(self, worker: str, value: str | None):
        self.worker = worker
        self.value = value


class EventBus:
    """A process's publisher: events queued without waiting, sent in order by one sender thread."""

    def __init__(self, url: str | None, max_batch: int = 256, max_message_bytes: int = 1 << 20,
                 worker: str | None = None):
        self.url = url
        self.channel = channel_for(url)
        self.max_batch = max_batch
        self.max_message_bytes = max_message_bytes
        self.worker = worker  # a worker's name: its `executing` events keep its RUNNING field
        # Encoded events, functions that encode one when its turn comes, RUNNING changes, flush
        # markers (set once what came before them is sent), or None (stop).
        self._queue: queue.Queue[str | Callable[[], str] | _RunningNode | threading.Event | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def publish(self, event_type: str, data: dict, *, prompt_id: str | None = None, client_id: str | None = None,
                own: bool = True, team: str | None = None) -> None:
        """Queue one event of `team`'s prompt; `own=False` for a prompt this worker does not run (a
        lost one it ends)."""
        if not self.url:
            return
        self._start()
        self._queue.put(encode_event(event_type, data, prompt_id, client_id, team))
        if own and self.worker is not None and isinstance(data, dict):
            if event_type == "executing":
                node = data.get("display_node") or data.get("node")
                self._queue.put(_RunningNode(self.worker, None if node is None else json.dumps(
                    {"prompt_id": prompt_id, "client_id": client_id, "node": node})))
            elif event_type == "progress" and data.get("node") is not None:
                # The step too, for the operator's view of what each worker does now.
                self._queue.put(_RunningNode(self.worker, json.dumps(
                    {"prompt_id": prompt_id, "client_id": client_id, "node": data["node"],
                     "value": data.get("value"), "max": data.get("max")})))

    def forget_running(self, workers: list[str]) -> None:
        """These workers run nothing (this one starting or stopping, dead ones reaped)."""
        if not self.url:
            return
        self._start()
        for name in workers:
            self._queue.put(_RunningNode(name, None))

    def publish_status(self, count: Callable[[], int]) -> None:
        """A `status` broadcast in its place among the events, counted by the sender thread when
        its turn comes: the executor does not wait for the count."""
        if not self.url:
            return
        self._start()
        self._queue.put(lambda: encode_event("status", status_data(count())))

    def flush(self, timeout: float = 5) -> bool:
        """Wait until everything queued before now was sent (or failed to be); False on timeout."""
        if self._thread is None:
            return True
        done = threading.Event()
        self._queue.put(done)
        return done.wait(timeout)

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

        client = redis.Redis.from_url(redis_client_url(self.url), socket_timeout=5, protocol=2)
        while True:
            batch = [self._queue.get()]
            while len(batch) < self.max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            events, changes, flushes, stop = [], [], [], False
            listening = None  # asked of Redis once per batch, when a status would need counting
            for item in batch:
                if item is None:
                    stop = True
                elif isinstance(item, _RunningNode):
                    changes.append(item)
                elif isinstance(item, threading.Event):
                    flushes.append(item)
                elif isinstance(item, str):
                    events.append(item)
                else:  # a status: counting the queue is SQL work, wasted when no relay listens
                    listening = self._listening(client) if listening is None else listening
                    if listening and (event := self._resolve(item)) is not None:
                        events.append(event)
            try:
                pipeline = client.pipeline(transaction=False)
                for message in self._messages(events):
                    pipeline.publish(self.channel, message)
                for change in changes:  # in order: a node, then the prompt's end, is nothing running
                    if change.value is None:
                        pipeline.hdel(RUNNING, change.worker)
                    else:
                        pipeline.hset(RUNNING, change.worker, change.value)
                pipeline.execute()
            except Exception:  # noqa: BLE001 - live events are best effort; history is the record
                log.exception("could not publish %d event(s)", len(events))
            for done in flushes:
                done.set()
            if stop:
                return

    def _listening(self, client) -> bool:
        """Whether any relay is subscribed now (relays subscribe only while they hold sockets)."""
        try:
            return bool(client.pubsub_numsub(self.channel)[0][1])
        except Exception:  # noqa: BLE001 - unknown: count, and let the publish find out
            return True

    @staticmethod
    def _resolve(item: Callable[[], str]) -> str | None:
        try:
            return item()
        except Exception:  # noqa: BLE001 - a database hiccup costs one status broadcast
            log.exception("could not count the queue for a status broadcast")
            return None

    def _messages(self, events: list[str]):
        """The events joined into as few pub/sub messages as the size limit allows."""
        group, size = [], 0
        for event in events:
            if group and size + len(event) > self.max_message_bytes:
                yield "\n".join(group)
                group, size = [], 0
            group.append(event)
            size += len(event) + 1
        if group:
            yield "\n".join(group)


class StatusPublisher:
    """Turns "the queue changed" notifications into `status` broadcasts, off the request thread.

    `notify()` only sets a flag; a background thread hands a status to the bus, whose sender
    counts the queue in SQL when its turn comes (and only when some relay listens). Calls that
    arrive meanwhile are coalesced into one more broadcast, so a burst of submissions costs a few
    counts, and the last broadcast always follows the last change.
    """

    def __init__(self, bus: EventBus, count: Callable[[], int], min_interval: float = 0.05, delay: float = 0.005):
        self.bus = bus
        self.count = count
        self.min_interval = min_interval
        self.delay = delay
        self._pending = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def notify(self) -> None:
        if not self.bus.url:
            return
        self._pending.set()
        if self._thread is None:
            with self._lock:
                if self._thread is None:  # started on first use: after the web server forked
                    self._thread = threading.Thread(target=self._loop, name="farm-status", daemon=True)
                    self._thread.start()

    def _loop(self) -> None:
        while True:
            self._pending.wait()
            # A moment's delay: the request that notified finishes first, and a burst shares a count.
            time.sleep(self.delay)
            self._pending.clear()
            self.bus.publish_status(self.count)  # counted by the bus's thread, if any relay listens
            time.sleep(max(0.0, self.min_interval - self.delay))
