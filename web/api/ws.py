"""GET /ws and /api/ws: ComfyUI's WebSocket (spec 4.1), fed by this process's relay (web/relay.py).

The handshake is an ordinary GET route, so web/security.py's origin checks apply to it. The
handler thread sleeps on the connection's wake event, which its reader sets for a client message
or a close, and the relay for a frame the kernel could not take at once; it then writes those
with blocking sends. Beyond ComfyUI, `?subscribe=<prompt_id>[,<prompt_id>...]` or
`?subscribe=all`, or a `{"type": "subscribe", "data": {"prompt_id": ...}}` message, follows
prompts of other clients.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import uuid

from flask import Blueprint, current_app, request
from flask_sock import Sock

from farm.events import status_data
from farm.services import history
from web.api.system import feature_flags
from web.auth import principal
from web.context import farm
from web.errors import error_response
from web.outbox import text_frame
from web.relay import Client, Relay

log = logging.getLogger(__name__)

blueprint = Blueprint("ws", __name__)
sock = Sock()
# A safety net only: every wake-up that matters sets the event.
IDLE_WAIT_SECONDS = 10.0
GOING_AWAY, TRY_AGAIN_LATER = 1001, 1013


def _daemon_thread(target) -> threading.Thread:
    # A connection's reader thread blocks in recv until the peer speaks: it must not hold the
    # process open at shutdown.
    return threading.Thread(target=target, daemon=True)


# flask-sock's options for simple_websocket (app.config["SOCK_SERVER_OPTIONS"]).
SERVER_OPTIONS = {"max_message_size": 1024 * 1024, "thread_class": _daemon_thread}


def relay() -> Relay:
    return current_app.extensions["farm_relay"]


def subscription(value) -> tuple[list[str], bool]:
    """(prompt ids, everything) from `?subscribe=` or a subscribe message's prompt_id."""
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",")]
    if not isinstance(value, list):
        return [], False
    ids = [str(item) for item in value if isinstance(item, (str, int)) and str(item)]
    return [i for i in ids if i != "all"], "all" in ids


@blueprint.before_request
def refuse_when_full():
    if relay().full():
        return error_response(503, "service_unavailable", "This web process holds all the WebSockets it may",
                              "connect again, or to another web process")
    return None


@sock.route("/ws", bp=blueprint)
def websocket(ws):
    sid = request.args.get("clientId") or uuid.uuid4().hex
    prompts, everything = subscription(request.args.get("subscribe", ""))
    hub, raw = relay(), ws.sock
    client = hub.new_client(sid, ws.event, sock=raw, kill=lambda: raw.shutdown(socket.SHUT_RDWR),
                            prompts=set(prompts), everything=everything, team=principal().scope)
    try:
        # Every write, the connection's own pongs and close frames too, goes through the outbox: one order.
        ws.sock = _OrderedSocket(raw, client.outbox)
        remaining, node = _queue_remaining(), hub.executing_node(sid)
        client.outbox.put(_text("status", {**status_data(remaining), "sid": sid}), bounded=False)
        if node is not None:  # a reconnect during its prompt (spec 4.1)
            client.outbox.put(_text("executing", {"node": node}), bounded=False)
        # Right after the connect messages, which come first; the bus subscription is already
        # confirmed, so the events of anything the client does once it has them reach it.
        if hub.attach(client):
            _serve(ws, raw, client, hub)
        elif hub.closing:
            ws.close(GOING_AWAY, "server shutting down")
        else:
            ws.close(TRY_AGAIN_LATER, "this web process holds all the WebSockets it may")
        _flush(client, raw)
    except OSError:
        pass  # the peer went away, or the relay dropped this socket
    finally:
        hub.detach(client)
        _shutdown(raw)


def _shutdown(raw) -> None:
    # Ends the reader thread's recv when the peer does not answer our close. A socket the reader
    # already closed has no descriptor any more, so this cannot touch another connection.
    try:
        raw.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def _serve(ws, raw, client: Client, hub: Relay) -> None:
    first_text = True
    while True:
        ws.event.wait(IDLE_WAIT_SECONDS)
        ws.event.clear()
        while (message := ws.receive(timeout=0)) is not None:
            if isinstance(message, str):
                _handle(client, hub, message, first_text)
                first_text = False
        _flush(client, raw)
        if client.dropped:
            return
        if client.outbox.closing:
            ws.close(GOING_AWAY, "server shutting down")
            return


def _flush(client: Client, raw) -> None:
    while (frame := client.outbox.pop()) is not None:
        raw.sendall(frame)


class _OrderedSocket:
    """The connection's socket as simple_websocket sees it: its writes join the outbox."""

    def __init__(self, sock, outbox):
        self._sock = sock
        self._outbox = outbox

    def send(self, data) -> int:
        self._outbox.put(bytes(data), bounded=False)
        return len(data)

    def __getattr__(self, name):
        return getattr(self._sock, name)


def _handle(client: Client, hub: Relay, message: str, first_text: bool) -> None:
    try:
        body = json.loads(message)
    except ValueError:
        return
    if not isinstance(body, dict) or not isinstance(body.get("data"), dict):
        return
    kind, data = body.get("type"), body["data"]
    if kind == "feature_flags" and first_text:
        client.flags = data
        client.outbox.put(_text("feature_flags", feature_flags(farm().settings)), bounded=False)
    elif kind == "subscribe":
        prompts, everything = subscription(data.get("prompt_id"))
        hub.subscribe(client, prompts, everything)


def _text(event_type: str, data: dict) -> bytes:
    return text_frame(json.dumps({"type": event_type, "data": data}, separators=(",", ":")))


def _queue_remaining() -> int:
    try:
        return history.queue_remaining(farm().database)
    except Exception:  # noqa: BLE001 - a database outage must not refuse live events
        log.exception("could not count the queue for a new WebSocket")
        return 0
