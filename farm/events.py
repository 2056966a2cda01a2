"""The event bus: workers publish every execution event; web processes relay them to sockets.

Each event travels on one Redis pub/sub channel as two JSON lines: the routing
{"type", "prompt_id", "client_id"}, then the message exactly as sockets get it, {"type", "data"}.
A relay reads the small first line and forwards the second as it is: it never parses or
re-encodes a large event (a cumulative progress_state of a big graph). Publishing never blocks
the executor: events go through an in-process queue to a sender thread that publishes them in
order, a burst as one pub/sub message (every web process pays per message it receives). Without a Redis events URL (a RabbitMQ-only
cluster) events are not published. Pub/sub ignores Redis database numbers, so the channel name
carries the URL's database number: farms sharing one Redis server on different databases do not
see each other's events.

Beside the events, each worker keeps the node it is running in one Redis hash (RUNNING, field =
worker name), so that any web process, one started after the prompt began included, can tell a
reconnecting client its running node (spec 4.1). A worker clears its field when its prompt ends,
when it starts and when it stops; the worker that reaps a dead one clears the dead one's.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
from typing import Callable

log = logging.getLogger(__name__)

CHANNEL = "farm:events"
RUNNING = "farm:running"  # hash: worker name -> {"prompt_id", "client_id", "node"} it runs now


def redis_client_url(url: str) -> str:
    """kombu's `redis+socket:///path` is redis-py's `unix:///path`."""
    return "unix://" + url[len("redis+socket://"):] if url.startswith("redis+socket://") else url


def channel_for(url: str | None) -> str:
    """The events channel of the farm whose events URL is `url` (its database number appended)."""
    if not url:
        return CHANNEL
    import redis

    db = int(redis.ConnectionPool.from_url(redis_client_url(url)).connection_kwargs.get("db") or 0)
    return CHANNEL if db == 0 else f"{CHANNEL}:{db}"


class BusEvent:
    """One event as a relay receives it; `data` is parsed only when asked for."""

    __slots__ = ("type", "prompt_id", "client_id", "team", "message", "_data")

    def __init__(self, event_type: str, prompt_id: str | None, client_id: str | None, message: bytes,
                 team: str | None = None):
        self.type = event_type
        self.prompt_id = prompt_id
        self.client_id = client_id
        self.team = team  # the prompt's team: only its sockets (and admins') get the event
        self.message = message  # {"type", "data"} as UTF-8 JSON: a socket's text frame as it is
        self._data = None

    @property
    def data(self):
        if self._data is None:
            self._data = json.loads(self.message)["data"]
        return self._data


class EncodedDict(dict):
    """Event data that carries its own compact JSON encoding, built by its producer from cached
    parts (a cumulative progress_state re-encodes only the node that changed)."""

    __slots__ = ("json",)

    def __init__(self, value: dict, encoded: str):
        super().__init__(value)
        self.json = encoded


def encode_json(value) -> str:
    return value.json if type(value) is EncodedDict else json.dumps(value, separators=(",", ":"))


def encode_event(event_type: str, data, prompt_id: str | None = None, client_id: str | None = None,
                 team: str | None = None) -> str:
    header = {"type": event_type, "prompt_id": prompt_id, "client_id": client_id}
    if team is not None:
        header["team"] = team
    routing = json.dumps(header, separators=(",", ":"))
    return f'{routing}\n{{"type":{json.dumps(event_type)},"data":{encode_json(data)}}}'


def decode_events(raw: bytes | str) -> list[BusEvent]:
    """The events in a bus message, in order; ValueError when it holds something else."""
    raw = raw.encode() if isinstance(raw, str) else raw
    lines = raw.split(b"\n")  # JSON text holds no raw newline
    if len(lines) % 2:
        raise ValueError("not farm events")
    events = []
    for routing, message in zip(lines[::2], lines[1::2]):
        header = json.loads(routing)
        if not isinstance(header, dict) or not isinstance(header.get("type"), str):
            raise ValueError("not a farm event")
        events.append(BusEvent(header["type"], header.get("prompt_id"), header.get("client_id"), message,
                               header.get("team")))
    return events


def status_data(queue_remaining: int) -> dict:
    """The `status` broadcast's data (spec 4.2)."""
    return {"status": {"exec_info": {"queue_remaining": queue_remaining}}}


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
