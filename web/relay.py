"""Live events in a web process: one bus listener fanning every event out to this process's sockets.

Invariants: the listener thread never waits on a socket. It hands each frame to the socket's
outbox, which writes it at once only if the kernel takes it without waiting; otherwise the frame
waits, bounded, for the socket's own handler thread. A socket whose outbox overflows (a client
that stopped reading, or a dead peer) is dropped with a log line, so it costs the others nothing.
Routing is ComfyUI's (spec 4.2, `route`), plus the farm's observers: sockets subscribed to a
prompt, or to everything, get every event of the prompts they watch.

Each socket holds the bus listener from `new_client` to `detach`, so a process without sockets is
not subscribed. The relay keeps no prompt state: what a worker runs now comes from Redis
(farm.events.RunningNodes), so any web process answers a reconnect.
"""

from __future__ import annotations

import base64
import collections
import dataclasses
import logging
import socket
import threading
import time
from typing import Callable

from farm.events import BusEvent, EventListener, RunningNodes
from farm.graph.progress import PREVIEW_EVENT
from web.outbox import PREVIEW_IMAGE, PREVIEW_IMAGE_WITH_METADATA, Outbox, binary_frame, preview_frame, text_frame

log = logging.getLogger(__name__)

# Sent only to the prompt's client, and not at all when the prompt has none (spec 4.2).
CLIENT_ONLY = frozenset({
    "execution_start", "execution_cached", "executing", "executed", "execution_success", "execution_error",
})
BROADCAST = frozenset({"status"})
# `status` broadcasts fanned out per second beyond a burst (see StatusGate).
STATUS_RATE, STATUS_BURST = 20.0, 20


@dataclasses.dataclass(frozen=True)
class Route:
    """Who gets an event: every socket, or the socket of `client_id` (nobody when None)."""

    everyone: bool
    client_id: str | None = None


def _blocked(event_type: str, data) -> bool:
    """An ExecutionBlocker's message: an execution_error that does not end the prompt."""
    return event_type == "execution_error" and isinstance(data, dict) \
        and data.get("exception_type") == "ExecutionBlocked"


def route(event_type: str, data, client_id: str | None) -> Route:
    """ComfyUI's routing: "all", "client" or "client-or-all" (spec 4.2)."""
    if event_type in BROADCAST:
        return Route(True)
    if event_type in CLIENT_ONLY and not _blocked(event_type, data):
        return Route(False, client_id or None)
    # progress, progress_state, previews, execution_interrupted, blocked errors, custom events.
    return Route(not client_id, client_id or None)


def _final_executing(event: BusEvent) -> bool:
    """`executing {node: null}`: the prompt is over and its history written."""
    return event.type == "executing" and isinstance(event.data, dict) and event.data.get("node") is None


def snapshot_key(event: BusEvent):
    """For events that a newer one of the same key makes useless: a lagging socket gets the latest."""
    if event.type == "progress_state":
        return ("progress_state", event.prompt_id)  # cumulative: the newest holds everything
    if event.type == "status":
        return ("status",)  # the queue length now
    return None


class Client:
    """One connected socket as the relay sees it."""

    def __init__(self, sid: str, outbox: Outbox, kill: Callable[[], None] = lambda: None,
                 prompts: set[str] | None = None, everything: bool = False, team: str | None = None):
        self.sid = sid
        # The team whose prompts' events this socket may get; None: every team's (admins, auth off).
        self.team = team
        self.outbox = outbox
        self.kill = kill  # tears the connection down under a handler blocked in a send
        self.prompts = set(prompts or ())
        self.everything = everything
        self.flags: dict = {}
        self.dropped = False
        # A type-1 preview waiting for the step's `progress`: ComfyUI sends it after (spec 4.3).
        self.deferred_preview: bytes | None = None
        self.holds_listener = False  # until detached: the relay keeps its bus subscription


class Frames:
    """One event's encoded frames, built at most once each whatever the number of sockets."""

    def __init__(self, event: BusEvent):
        self.event = event
        self._text: bytes | None = None
        self._previews: dict[int, bytes] = {}

    def for_client(self, client: Client | None, broadcast: bool) -> tuple[int | None, bytes]:
        """(preview kind or None, frame) of this event for `client` (None: text events only)."""
        if self.event.type != PREVIEW_EVENT:
            if self._text is None:
                self._text = text_frame(self.event.message)  # the worker's JSON, as it is
            return None, self._text
        # Metadata frames only for sockets that asked; a broadcast preview is always type 1 (spec 4.4).
        kind = PREVIEW_IMAGE_WITH_METADATA if client.flags.get("supports_preview_metadata") and not broadcast \
            else PREVIEW_IMAGE
        if kind not in self._previews:
            self._previews[kind] = binary_frame(preview_frame(kind, self.event.data))
        return kind, self._previews[kind]


class LatestPreviews:
    """The newest preview event of the last `size` prompts that sent one (decoded only when asked)."""

    def __init__(self, size: int = 256):
        self.size = size
        self._events: collections.OrderedDict[str, BusEvent] = collections.OrderedDict()
        self._lock = threading.Lock()

    def remember(self, event: BusEvent) -> None:
        with self._lock:
            self._events[event.prompt_id] = event
            self._events.move_to_end(event.prompt_id)
            while len(self._events) > self.size:
                self._events.popitem(last=False)

    def latest(self, prompt_id: str) -> tuple[str | None, bytes, str] | None:
        """(team, image bytes, MIME type) of the prompt's latest preview, or None."""
        with self._lock:
            event = self._events.get(prompt_id)
        if event is None:
            return None
        data = event.data
        return event.team, base64.b64decode(data["image"]), data.get("image_type") or "image/jpeg"


class StatusGate:
    """Thins a flood of `status` broadcasts: bursts pass at once, beyond `rate` a second the latest
    waits for the next slot and older ones are dropped (each carries the whole queue length).

    Every web process and worker broadcasts on queue changes, and each broadcast costs one send per
    socket: under a heavy submission load this keeps that cost bounded. Under a light load nothing
    waits, so ComfyUI's order (status, then the final executing) is kept.
    """

    def __init__(self, release: Callable[[BusEvent], None], rate: float = STATUS_RATE, burst: int = STATUS_BURST):
        self.release = release
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._at = time.monotonic()
        self._held: BusEvent | None = None
        self._lock = threading.Lock()

    @property
    def held(self) -> BusEvent | None:
        """The latest `status` waiting for its slot, if any."""
        return self._held

    def admit(self, event: BusEvent) -> bool:
        """True: send `event` now; False: it is held (or replaced a held one)."""
        with self._lock:
            self._refill()
            if self._held is None and self._tokens >= 1:
                self._tokens -= 1
                return True
            if self._held is None:
                timer = threading.Timer((1 - self._tokens) / self.rate, self._release_held)
                timer.daemon = True
                timer.start()
            self._held = event
            return False

    def _refill(self) -> None:
        now = time.monotonic()
        self._tokens = min(float(self.burst), self._tokens + (now - self._at) * self.rate)
        self._at = now

    def _release_held(self) -> None:
        with self._lock:
            self._refill()
            self._tokens = max(0.0, self._tokens - 1)
            event, self._held = self._held, None
        if event is not None:
            self.release(event)


class Relay:
    """This web process's sockets, and the thread that relays the bus to them."""

    def __init__(self, events_url: str | None, *, max_sockets: int = 1000, outbox_frames: int = 4096,
                 outbox_bytes: int = 16 * 1024 * 1024):
        self.max_sockets = max_sockets
        self.outbox_frames = outbox_frames
        self.outbox_bytes = outbox_bytes
        self.listener = EventListener(events_url, self.dispatch) if events_url else None
        self.closing = False  # the server is stopping: no new sockets
        self._status_gate = StatusGate(self._release_status)
        self._dispatch_lock = threading.Lock()
        self._lock = threading.Lock()
        self._clients: set[Client] = set()
        # (team, sid) -> socket: a socket of another team naming itself with the same client id
        # neither replaces nor receives the first one's events (team None: admins, auth off).
        self._by_sid: dict[tuple[str | None, str], Client] = {}
        self._watchers: dict[str, set[Client]] = {}
        self._everything: set[Client] = set()
        self.running_nodes = RunningNodes(events_url)  # what the workers run now, for reconnects
        self.previews = LatestPreviews()  # each running prompt's latest sampling preview (the dashboard)

    # sockets ------------------------------------------------------------------------------------
    def new_client(self, sid: str, wake: threading.Event, sock: socket.socket | None = None, **options) -> Client:
        """A socket's relay state; it holds the bus listener (subscribed on return) until `detach`."""
        client = Client(sid, Outbox(wake, self.outbox_frames, self.outbox_bytes, sock), **options)
        if self.listener is not None:
            client.holds_listener = True
            if not self.listener.acquire():
                log.warning("WebSocket %s connects without live events: the event bus is unreachable", sid)
        return client

    def full(self) -> bool:
        return len(self._clients) >= self.max_sockets

    def attach(self, client: Client) -> bool:
        """Start relaying to `client`; False when this process is full or stopping."""
        with self._lock:
            if self.closing or len(self._clients) >= self.max_sockets:
                return False
            self._clients.add(client)
            # A new socket with the same sid replaces the old one for routing (spec 4.1).
            self._by_sid[(client.team, client.sid)] = client
            for prompt_id in client.prompts:
                self._watchers.setdefault(prompt_id, set()).add(client)
            if client.everything:
                self._everything.add(client)
        return True

    def detach(self, client: Client) -> None:
        with self._lock:
            if client.holds_listener:
                client.holds_listener = False
                self.listener.release()
            self._clients.discard(client)
            if self._by_sid.get((client.team, client.sid)) is client:
                del self._by_sid[(client.team, client.sid)]
            for prompt_id in client.prompts:
                watchers = self._watchers.get(prompt_id)
                if watchers is not None:
                    watchers.discard(client)
                    if not watchers:
                        del self._watchers[prompt_id]
            self._everything.discard(client)

    def subscribe(self, client: Client, prompt_ids: list[str], everything: bool = False) -> None:
        """Follow more prompts, or every event of every prompt."""
        with self._lock:
            if client not in self._clients:
                return
            if everything:
                client.everything = True
                self._everything.add(client)
            for prompt_id in prompt_ids:
                client.prompts.add(prompt_id)
                self._watchers.setdefault(prompt_id, set()).add(client)

    def executing_node(self, sid: str) -> str | None:
        """The node running now in a prompt of `sid`, as its worker reported it."""
        return self.running_nodes.for_client(sid)

    def close_all(self) -> None:
        """The server is stopping: every socket sends what it has queued, then closes."""
        with self._lock:
            self.closing = True
            clients = list(self._clients)
        for client in clients:
            client.outbox.close()

    def __len__(self) -> int:
        return len(self._clients)

    # events -------------------------------------------------------------------------------------
    def dispatch(self, event: BusEvent) -> None:
        """Hand one bus event to the outboxes of the sockets that should get it."""
        if event.type == PREVIEW_EVENT and event.prompt_id is not None:
            self.previews.remember(event)
        if event.type == "status" and not self._status_gate.admit(event):
            return  # held back; the gate fans the latest out a moment later
        with self._dispatch_lock:  # the gate's thread dispatches too: keep one order per socket
            self._dispatch(event)

    def _dispatch(self, event: BusEvent) -> None:
        prompt_id = event.prompt_id
        # Only errors need their data to be routed: every other event goes on unparsed.
        target = route(event.type, event.data if event.type == "execution_error" else None, event.client_id)
        with self._lock:
            if target.everyone:
                clients = list(self._clients)
            else:
                clients = []
                if target.client_id is not None:
                    for team in {event.team, None}:
                        if (team, target.client_id) in self._by_sid:
                            clients.append(self._by_sid[(team, target.client_id)])
                if prompt_id is not None and prompt_id in self._watchers:
                    clients.extend(self._watchers[prompt_id])
                clients.extend(self._everything)
                if len(clients) > 1:
                    clients = list(dict.fromkeys(clients))
        if event.team is not None:
            # A prompt's events reach its own team only, whatever a socket subscribed to or
            # named itself (a guessed client id or prompt id gets another team nothing).
            clients = [client for client in clients if client.team is None or client.team == event.team]
        if not clients:
            return
        frames = Frames(event)
        key = snapshot_key(event)
        # A status that a flood holds back still reaches the client before its prompt's end (spec 4.3).
        held = self._status_gate.held if _final_executing(event) else None
        held_frame = Frames(held).for_client(None, True)[1] if held is not None else None
        for client in clients:
            if held_frame is not None and not client.outbox.put(held_frame, key=snapshot_key(held)):
                self._drop(client)
                continue
            kind, frame = frames.for_client(client, target.everyone)
            if kind == PREVIEW_IMAGE:  # goes out after the step's `progress` (spec 4.3)
                sent = client.deferred_preview is None or self._send_deferred(client)
                client.deferred_preview = frame
            elif event.type == "progress":
                sent = client.outbox.put(frame) and (client.deferred_preview is None or self._send_deferred(client))
            else:
                sent = (client.deferred_preview is None or self._send_deferred(client)) \
                    and client.outbox.put(frame, key=key)
            if not sent:
                self._drop(client)

    @staticmethod
    def _send_deferred(client: Client) -> bool:
        frame, client.deferred_preview = client.deferred_preview, None
        return client.outbox.put(frame)

    def _release_status(self, event: BusEvent) -> None:
        with self._dispatch_lock:
            self._dispatch(event)

    def _drop(self, client: Client) -> None:
        if client.dropped:
            return
        client.dropped = True
        log.warning("dropping WebSocket %s: %d frames waiting, the client does not keep up",
                    client.sid, len(client.outbox))
        self.detach(client)
        try:
            client.kill()
        except OSError:
            pass
