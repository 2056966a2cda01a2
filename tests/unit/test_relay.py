"""The web relay's routing (ComfyUI's spec 4.2 plus observers), bounded outboxes, previews, status."""

from __future__ import annotations

import base64
import json
import logging
import socket
import struct
import threading
import time

import pytest

from farm.events import CHANNEL, StatusPublisher, channel_for, decode_events, encode_event, status_data
from web.outbox import Outbox, binary_frame, text_frame
from web.relay import Relay, Route, StatusGate, route

CLIENT_ONLY = ["execution_start", "execution_cached", "executing", "executed", "execution_success", "execution_error"]
CLIENT_OR_ALL = ["progress", "progress_state", "execution_interrupted", "preview_image", "some_custom_event"]


@pytest.mark.parametrize("event_type", CLIENT_ONLY)
def test_client_only_events_go_to_their_client_and_nowhere_without_one(event_type):
    assert route(event_type, {}, "c1") == Route(False, "c1")
    assert route(event_type, {}, None) == Route(False, None)
    assert route(event_type, {}, "") == Route(False, None)


@pytest.mark.parametrize("event_type", CLIENT_OR_ALL)
def test_client_or_all_events_go_to_everyone_without_a_client(event_type):
    assert route(event_type, {}, "c1") == Route(False, "c1")
    assert route(event_type, {}, None) == Route(True, None)


def test_status_goes_to_everyone_and_a_blocked_error_is_client_or_all():
    assert route("status", status_data(3), None) == Route(True, None)
    assert route("status", status_data(3), "c1") == Route(True, None)
    blocked = {"exception_type": "ExecutionBlocked", "exception_message": "Execution Blocked: no"}
    assert route("execution_error", blocked, None) == Route(True, None)
    assert route("execution_error", blocked, "c1") == Route(False, "c1")


def test_outbox_is_bounded_by_frames_and_by_bytes_and_keeps_order():
    wake = threading.Event()
    box = Outbox(wake, max_frames=3, max_bytes=100)
    assert box.put(b"a") and wake.is_set()
    assert box.put(b"b") and box.put(b"c")
    assert not box.put(b"d")  # a fourth frame
    assert box.put(b"control", bounded=False)  # the connection's own frames always go
    assert [box.pop(), box.pop()] == [b"a", b"b"]
    assert box.put(b"x" * 80)
    assert not box.put(b"y" * 20)  # 1 + 7 + 80 + 20 bytes
    assert [box.pop(), box.pop(), box.pop(), box.pop()] == [b"c", b"control", b"x" * 80, None]


def test_outbox_writes_at_once_while_the_kernel_takes_it_and_queues_the_rest_in_order():
    ours, theirs = socket.socketpair()
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    wake = threading.Event()
    box = Outbox(wake, max_frames=10_000, max_bytes=1 << 30, sock=ours)
    assert box.put(b"first") and not wake.is_set() and len(box) == 0
    assert theirs.recv(100) == b"first"
    frames = [bytes([i % 251]) * 1000 for i in range(2000)]  # far more than the socket buffers hold
    for frame in frames:
        assert box.put(frame)
    assert wake.is_set() and 0 < len(box) < len(frames)
    received = bytearray()

    def read():
        while len(received) < sum(map(len, frames)):
            received.extend(theirs.recv(1 << 16))

    reader = threading.Thread(target=read)
    reader.start()
    while (frame := box.pop()) is not None:  # what the handler thread does
        ours.sendall(frame)
    reader.join(10)
    assert bytes(received) == b"".join(frames)  # a frame cut by the kernel was finished before the next
    assert box.put(b"again") and theirs.recv(100) == b"again"  # idle again: written at once
    ours.close(), theirs.close()


def test_frames_are_unmasked_server_frames_of_every_length_class():
    from wsproto.frame_protocol import FrameProtocol, Opcode

    for payload in ("", "a" * 125, "é" * 63, "b" * 126, "c" * 65535, "d" * 65536, b"\x01\x02", b"z" * 70000):
        parser = FrameProtocol(client=True, extensions=[])
        parser.receive_bytes(text_frame(payload) if isinstance(payload, str) else binary_frame(payload))
        (frame,) = parser.received_frames()
        assert frame.opcode == (Opcode.TEXT if isinstance(payload, str) else Opcode.BINARY)
        assert frame.payload == payload and frame.message_finished


class Socket:
    """A client as the relay sees it, and what reached it.

    Connected (the default), frames go to a real socket, as they do for a client that keeps up;
    otherwise they wait in the outbox, as for one whose kernel buffers are full.
    """

    def __init__(self, relay: Relay, sid: str, max_frames: int = 100, connected: bool = True, **options):
        self.wake = threading.Event()
        self.killed = False
        self.ours, self.theirs = socket.socketpair() if connected else (None, None)
        self.client = relay.new_client(sid, self.wake, sock=self.ours, kill=self._kill, **options)
        self.client.outbox.max_frames = max_frames
        assert relay.attach(self.client)

    def _kill(self):
        self.killed = True

    def frames(self) -> list:
        """The payloads received or queued: str for text frames, bytes for binary ones."""
        received = bytearray()
        while self.theirs is not None:
            try:
                received.extend(self.theirs.recv(1 << 20, socket.MSG_DONTWAIT))
            except BlockingIOError:
                break
        while (frame := self.client.outbox.pop()) is not None:
            received.extend(frame)
        out = []
        while received:
            frame = decode(bytes(received))
            out.append(frame[0])
            del received[:frame[1]]
        return out

    def types(self) -> list[str]:
        return [json.loads(frame)["type"] if isinstance(frame, str) else "binary" for frame in self.frames()]


def decode(data: bytes):
    """(payload of the first frame in `data`, its length on the wire)."""
    size, offset = data[1] & 0x7F, 2
    if size == 126:
        size, offset = struct.unpack("!H", data[2:4])[0], 4
    elif size == 127:
        size, offset = struct.unpack("!Q", data[2:10])[0], 10
    payload = data[offset:offset + size]
    return (payload.decode() if data[0] & 0x0F == 1 else payload), offset + size


def bus(event_type, data, prompt_id=None, client_id=None):
    """An event as the relay receives it from the bus."""
    (decoded,) = decode_events(encode_event(event_type, data, prompt_id, client_id))
    return decoded


def event(event_type, client_id=None, prompt_id="p1", **data):
    return bus(event_type, {"prompt_id": prompt_id, **data}, prompt_id, client_id)


def test_bus_messages_carry_the_routing_then_the_socket_message_as_it_is():
    raw = encode_event("executed", {"node": "9", "output": {"text": ["a\nb"]}}, "p1", "c1")
    routing, message = raw.split("\n")
    assert json.loads(routing) == {"type": "executed", "prompt_id": "p1", "client_id": "c1"}
    assert json.loads(message) == {"type": "executed", "data": {"node": "9", "output": {"text": ["a\nb"]}}}
    (received,) = decode_events(raw.encode())
    assert (received.type, received.prompt_id, received.client_id) == ("executed", "p1", "c1")
    assert received.message == message.encode() and received.data == {"node": "9", "output": {"text": ["a\nb"]}}
    burst = decode_events("\n".join([raw, encode_event("status", status_data(2))]))
    assert [(e.type, e.prompt_id) for e in burst] == [("executed", "p1"), ("status", None)]
    for bad in (b"", b"{}", b'{"type": "x"}', b"[1]\n{}", b"not json\n{}", (raw + "\n").encode()):
        with pytest.raises(ValueError):
            decode_events(bad)


def test_progress_state_is_encoded_from_its_nodes_parts_and_reads_as_the_plain_dict():
    from farm.graph.progress import ProgressReporter

    sent = []
    reporter = ProgressReporter(lambda event_type, data: sent.append(data), "p\"1", previews=False)
    for node in ("1", "n\u00e9\"2"):
        reporter.start(node)
        reporter.report(node, 3, 4)
        reporter.finish(node)
    for data in sent:
        (received,) = decode_events(encode_event("progress_state", data, "p1", "c1"))
        assert received.data == data == json.loads(json.dumps(data))  # the parts make the same JSON
    assert reporter._size == len(sent[-1].json)  # the budget's bookkeeping is exact
    assert sent[0]["nodes"]["1"]["state"] == "running"  # a sent message never changes afterwards
    assert sent[-1]["nodes"]["1"] == {"value": 4, "max": 4, "state": "finished", "node_id": "1", "prompt_id": 'p"1',
                                      "display_node_id": "1", "parent_node_id": None, "real_node_id": "1"}


def test_a_big_graph_s_snapshots_share_a_byte_budget_and_the_last_goes_before_the_end(monkeypatch):
    from farm.graph import progress
    from farm.graph.progress import ProgressReporter

    monkeypatch.setattr(progress, "STATE_BURST_BYTES", 20_000)
    monkeypatch.setattr(progress, "STATE_BYTES_PER_SECOND", 1)  # no refill within the test
    sent = []
    reporter = ProgressReporter(lambda event_type, data: sent.append(data.json), "p1", previews=False)
    for node in range(300):
        reporter.start(str(node))
        reporter.finish(str(node))
    assert 10 < len(sent) < 100 and sum(map(len, sent)) < 40_000  # without the budget: 600 and ~9 MB
    reporter.flush()
    assert json.loads(sent[-1])["nodes"]["299"]["state"] == "finished"
    count = len(sent)
    reporter.flush()  # nothing held back any more
    assert len(sent) == count


PROMPT_EVENTS = ["execution_start", "execution_cached", "progress_state", "executing", "progress", "executed",
                 "progress_state", "execution_success"]


def play(relay, client_id, prompt_id="p1"):
    for event_type in PROMPT_EVENTS:
        relay.dispatch(event(event_type, client_id, prompt_id, node="3"))
    relay.dispatch(bus("status", status_data(0)))
    relay.dispatch(event("executing", client_id, prompt_id, node=None))


def test_a_prompt_with_a_client_reaches_that_client_only_plus_status():
    relay = Relay(None)
    owner, other, anonymous = Socket(relay, "c1"), Socket(relay, "c2"), Socket(relay, "f00")
    play(relay, "c1")
    assert owner.types() == [*PROMPT_EVENTS, "status", "executing"]
    assert other.types() == anonymous.types() == ["status"]
    relay.dispatch(event("executed", "c1", node="9", output=None))
    assert json.loads(owner.frames()[0]) == {"type": "executed", "data": {"prompt_id": "p1", "node": "9",
                                                                          "output": None}}


def test_a_prompt_without_a_client_broadcasts_only_the_client_or_all_events():
    relay = Relay(None)
    first, second = Socket(relay, "a"), Socket(relay, "b")
    play(relay, None)
    expected = ["progress_state", "progress", "progress_state", "status"]
    assert first.types() == second.types() == expected


def test_observers_get_every_event_of_the_prompts_they_follow_once():
    relay = Relay(None)
    owner = Socket(relay, "c1", prompts={"p1"}, everything=True)  # also its own observer: no duplicates
    watcher, dashboard, bystander = Socket(relay, "w", prompts={"p1"}), Socket(relay, "d", everything=True), \
        Socket(relay, "x", prompts={"p2"})
    play(relay, "c1")
    full = [*PROMPT_EVENTS, "status", "executing"]
    assert owner.types() == watcher.types() == dashboard.types() == full
    assert bystander.types() == ["status"]
    late = Socket(relay, "late")
    relay.subscribe(late.client, ["p3"])
    relay.subscribe(bystander.client, [], everything=True)
    play(relay, "someone", "p3")
    assert late.types() == bystander.types() == full


def test_a_new_socket_with_the_same_sid_replaces_the_old_one_and_detach_forgets_it():
    relay = Relay(None)
    old, new = Socket(relay, "c1"), Socket(relay, "c1")
    relay.dispatch(event("execution_start", "c1"))
    assert (old.types(), new.types()) == ([], ["execution_start"])
    relay.detach(old.client)  # the old socket closing does not unroute the new one
    relay.dispatch(event("execution_start", "c1"))
    assert new.types() == ["execution_start"]
    relay.detach(new.client)
    relay.dispatch(event("execution_start", "c1"))
    assert new.types() == [] and len(relay) == 0


def test_a_socket_that_cannot_keep_up_is_dropped_and_the_others_go_on(caplog):
    relay = Relay(None)
    stuck, fine = Socket(relay, "stuck", max_frames=5, connected=False), Socket(relay, "fine")
    with caplog.at_level(logging.WARNING, logger="web.relay"):
        for index in range(20):
            relay.dispatch(event("progress", None, value=index, max=20))
            fine.frames()  # this one reads
    assert stuck.killed and stuck.client.dropped and len(relay) == 1
    assert "dropping WebSocket stuck" in caplog.text
    relay.dispatch(event("progress", None, value=20, max=20))
    assert fine.types() == ["progress"]


def test_the_relay_refuses_sockets_beyond_its_limit():
    relay = Relay(None, max_sockets=2)
    Socket(relay, "a"), Socket(relay, "b")
    assert relay.full()
    assert not relay.attach(relay.new_client("c", threading.Event()))


def preview_event(client_id):
    return bus("preview_image", {
        "node_id": "3", "prompt_id": "p1", "display_node_id": "3", "parent_node_id": None, "real_node_id": "3",
        "image_type": "image/jpeg", "image": base64.b64encode(b"\xff\xd8jpeg").decode()}, "p1", client_id)


def test_previews_are_binary_type_4_before_the_progress_for_sockets_that_asked_and_type_1_after_it():
    relay = Relay(None)
    asked, plain, watcher = Socket(relay, "c1"), Socket(relay, "c2"), Socket(relay, "w", prompts={"p1"})
    asked.client.flags = {"supports_preview_metadata": True}
    type_1 = struct.pack(">II", 1, 1) + b"\xff\xd8jpeg"
    relay.dispatch(preview_event("c1"))
    relay.dispatch(event("progress", "c1", value=1, max=2, node="3"))
    frame, progress = asked.frames()
    code, length = struct.unpack(">II", frame[:8])
    assert code == 4
    assert json.loads(frame[8:8 + length]) == {"node_id": "3", "prompt_id": "p1", "display_node_id": "3",
                                               "parent_node_id": None, "real_node_id": "3",
                                               "image_type": "image/jpeg"}
    assert frame[8 + length:] == b"\xff\xd8jpeg"
    assert json.loads(progress)["type"] == "progress"
    assert plain.frames() == []
    assert watcher.types() == ["progress", "binary"]  # spec 4.3: type 1 comes after the step's progress
    relay.dispatch(preview_event(None))  # broadcast: always type 1 (spec 4.4)
    assert asked.frames() == plain.frames() == []  # waiting for the progress
    relay.dispatch(preview_event(None))  # no progress in between: the first goes now
    relay.dispatch(event("progress", None, value=2, max=2, node="3"))
    for sock in (asked, plain):
        first, progress, second = sock.frames()
        assert first == second == type_1 and json.loads(progress)["type"] == "progress"
    relay.dispatch(preview_event(None))
    relay.dispatch(event("progress_state", None, nodes={}))  # another event: the preview keeps its place
    assert plain.types() == ["binary", "progress_state"]


def test_the_channel_carries_the_redis_database_number():
    assert channel_for("redis://127.0.0.1:6379/0") == channel_for("redis://h") == CHANNEL
    assert channel_for("redis://127.0.0.1:6379/7") == f"{CHANNEL}:7"
    assert channel_for("redis+socket:///tmp/redis.sock?db=3") == f"{CHANNEL}:3"


class RecordingBus:
    url = "redis://unused"

    def __init__(self):
        self.published = []

    def publish(self, event_type, data, **routing):
        self.published.append((event_type, data))

    def publish_status(self, count):
        self.publish("status", status_data(count()))


def wait_until(condition, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline
        time.sleep(0.005)


def test_status_notifications_are_coalesced_and_the_last_count_is_published():
    bus, counts = RecordingBus(), []

    def count():
        counts.append(1)
        return len(counts)

    publisher = StatusPublisher(bus, count, min_interval=0.05)
    for _ in range(200):
        publisher.notify()
    wait_until(lambda: bus.published)
    time.sleep(0.2)  # room for the one coalesced round that notifications during the first count cause
    assert 1 <= len(counts) <= 2 and len(bus.published) == len(counts)
    before = len(counts)
    publisher.notify()
    wait_until(lambda: len(bus.published) == before + 1)
    assert bus.published[-1] == ("status", status_data(before + 1))  # counted after the notification


def status(remaining):
    return bus("status", status_data(remaining))


def test_a_status_burst_passes_and_a_flood_is_thinned_to_the_latest():
    released = []
    gate = StatusGate(released.append, rate=20.0, burst=5)
    assert [gate.admit(status(n)) for n in range(5)] == [True] * 5  # a burst goes at once
    assert not any(gate.admit(status(n)) for n in range(5, 50))  # then they wait, the latest replacing
    wait_until(lambda: released)
    assert [event.data for event in released] == [status_data(49)]


def test_a_status_held_back_by_a_flood_still_precedes_the_final_executing_of_a_prompt():
    relay = Relay(None)
    client, bystander = Socket(relay, "c1"), Socket(relay, "c2")
    for index in range(60):  # beyond the gate's burst: the latest status waits for its slot
        relay.dispatch(status(index))
    client.frames(), bystander.frames()
    relay.dispatch(event("executing", "c1", node=None))
    assert [json.loads(frame) for frame in client.frames()] == [
        {"type": "status", "data": status_data(59)}, {"type": "executing", "data": {"prompt_id": "p1", "node": None}}]
    assert bystander.frames() == []  # the others get it when the gate lets it go
    wait_until(lambda: bystander.types() == ["status"])


def test_the_relay_keeps_the_order_of_statuses_under_a_light_load():
    relay = Relay(None)
    sock = Socket(relay, "c1")
    for index in range(3):
        relay.dispatch(status(index))
        relay.dispatch(event("executing", "c1", node=None))
    assert sock.types() == ["status", "executing"] * 3


def test_a_full_web_process_refuses_the_handshake_and_a_plain_get_is_not_a_socket(client):
    headers = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
               "Sec-WebSocket-Version": "13"}
    client.application.extensions["farm_relay"].max_sockets = 0
    for path in ("/ws", "/api/ws"):
        answer = client.get(path, headers=headers)
        assert answer.status_code == 503 and answer.get_json()["error"]["type"] == "service_unavailable"
    assert client.get("/ws").status_code == 400


def test_a_stopping_relay_closes_its_sockets_and_takes_no_new_ones():
    relay = Relay(None)
    sock = Socket(relay, "a")
    relay.close_all()
    assert sock.client.outbox.closing and sock.wake.is_set()
    assert not relay.attach(relay.new_client("b", threading.Event()))


def test_a_burst_of_events_travels_in_as_few_bus_messages_as_the_size_limit_allows():
    from farm.events import EventBus

    events = [encode_event("progress", {"value": index, "pad": "x" * 100}, "p1") for index in range(50)]
    messages = list(EventBus(None, max_message_bytes=1000)._messages(events))
    assert 1 < len(messages) < 50 and all(len(m) <= 1000 for m in messages)
    assert [e.data["value"] for m in messages for e in decode_events(m)] == list(range(50))
    (alone,) = EventBus(None, max_message_bytes=10)._messages(events[:1])  # too big for the limit: alone
    assert [e.data["value"] for e in decode_events(alone)] == [0]


def test_a_newer_snapshot_replaces_a_queued_one_and_takes_its_turn_after_what_came_before():
    box = Outbox(threading.Event(), max_frames=3, max_bytes=1000)
    assert box.put(b"state 1", key="p1") and box.put(b"executing") and box.put(b"state 2", key="p1")
    assert len(box) == 2 and box.put(b"other prompt", key="p2") and box.put(b"state 3", key="p1")
    assert not box.put(b"one too many")  # three live frames: the replaced ones do not count
    assert [box.pop() for _ in range(4)] == [b"executing", b"other prompt", b"state 3", None]
    assert box.put(b"state 4", key="p1") and box.pop() == b"state 4"  # a sent frame is never replaced
    assert box.put(b"state 5", key="p1") and box.put(b"x") and [box.pop(), box.pop()] == [b"state 5", b"x"]


def test_a_lagging_socket_gets_the_latest_progress_state_instead_of_every_one():
    relay = Relay(None)
    sock = Socket(relay, "c1", max_frames=10, connected=False)
    for value in range(100):  # it never reads: without snapshots it would be dropped
        relay.dispatch(event("progress_state", "c1", nodes={"1": {"value": value}}))
        relay.dispatch(bus("progress_state", {"prompt_id": "p2", "nodes": {}}, "p2", "c1"))
    relay.dispatch(event("executed", "c1", node="1"))
    assert not sock.client.dropped
    frames = [json.loads(frame) for frame in sock.frames()]
    assert [(f["type"], f["data"]["prompt_id"]) for f in frames] == [
        ("progress_state", "p1"), ("progress_state", "p2"), ("executed", "p1")]
    assert frames[0]["data"]["nodes"] == {"1": {"value": 99}}
