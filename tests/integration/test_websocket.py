"""ComfyUI's WebSocket across a cluster: two `farm web` servers, one `farm worker`, Redis, PostgreSQL.

Clients are real WebSocket clients (websocket-client) reading in threads of their own. Where a
test must know that a socket has received everything sent so far, it publishes a marker event on
the bus and waits for it: the relay keeps the bus order, so the marker comes last.
"""

from __future__ import annotations

import collections
import io
import json
import random
import signal
import socket
import threading
import time
import uuid

import pytest
import redis
import requests
import websocket

from farm.events import channel_for, encode_event
from tests.integration.farm_process import FarmProcess, farm_env, farm_up, free_port, stop_all
from tests.integration.test_control import long_chain
from tests.services import fresh_postgres_database, service_url
from tests.workflows import invert_workflow, seed_workflow

pytestmark = pytest.mark.integration

MARKER = "farm_test_marker"
ERROR_KEYS = {"prompt_id", "node_id", "node_type", "executed", "exception_message", "exception_type", "traceback",
              "current_inputs", "current_outputs", "timestamp"}
NODE_STEPS = ["progress_state", "executing", "progress_state"]  # a node without UI output
SAVE_STEPS = ["progress_state", "executing", "executed", "progress_state"]


class Cluster:
    def __init__(self, web_a: FarmProcess, web_b: FarmProcess, worker: FarmProcess, redis_url: str, env: dict,
                 folder):
        self.a, self.b, self.worker = web_a, web_b, worker
        self.bus = redis.Redis.from_url(redis_url)
        self.channel = channel_for(redis_url)
        self.env, self.folder = env, folder

    def start_web(self) -> FarmProcess:
        """One more web process of this cluster, started now."""
        port = free_port()
        web = FarmProcess(["web", "--port", str(port)], {**self.env, "FARM_WEB_PROCESSES": "1"},
                          self.folder / f"web-{port}.log", port)
        web.wait_ready()
        return web

    def publish(self, event_type: str, data: dict, prompt_id=None, client_id=None) -> None:
        self.bus.publish(self.channel, encode_event(event_type, data, prompt_id, client_id))

    def sync(self, *sockets: "Socket") -> None:
        """Return once every socket got everything the relays had before now."""
        token = uuid.uuid4().hex
        self.publish(MARKER, {"token": token})
        for sock in sockets:
            sock.wait(lambda messages: token in sock.tokens)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ws")
    # Pub/sub is global to a Redis server; a database of our own gives this cluster its own channel.
    redis_url = service_url("redis").rsplit("/", 1)[0] + f"/{random.randint(1, 15)}"
    with fresh_postgres_database(service_url("database")) as database_url:
        data = tmp / "data"
        (data / "models" / "checkpoints").mkdir(parents=True)
        from tests.engine.tiny_checkpoints import make_sd1

        make_sd1(data / "models" / "checkpoints" / "tiny.safetensors", seed=5)
        env = farm_env(data, broker_url=redis_url, database_url=database_url)
        assert FarmProcess(["db", "upgrade"], env, tmp / "upgrade.log").process.wait(60) == 0
        port_a, port_b = free_port(), free_port()
        # Web A is one process, so that all its sockets share one relay (the slow-client test).
        web_a = FarmProcess(["web", "--port", str(port_a)], {**env, "FARM_WEB_PROCESSES": "1"}, tmp / "a.log", port_a)
        web_b = FarmProcess(["web", "--port", str(port_b)], {**env, "FARM_WEB_PROCESSES": "2"}, tmp / "b.log", port_b)
        worker = FarmProcess(["worker", "--cpu", "--name", f"ws-{port_a}"], env, tmp / "worker.log")
        processes = [web_a, web_b, worker]
        try:
            web_a.wait_ready()
            web_b.wait_ready()
            deadline = time.monotonic() + 60
            while requests.get(f"{web_a.url}/models/checkpoints", timeout=5).json() != ["tiny.safetensors"]:
                assert time.monotonic() < deadline, worker.output()
                time.sleep(0.1)
            yield Cluster(web_a, web_b, worker, redis_url, env, tmp)
        finally:
            stop_all(processes)


class Socket:
    """A WebSocket client reading in a thread: text frames as (type, data), binary frames as bytes."""

    def __init__(self, server: FarmProcess, query: str = "", path: str = "/ws", flags: dict | None = None, **options):
        self.ws = websocket.create_connection(f"ws://127.0.0.1:{server.port}{path}{query}", timeout=60, **options)
        self.messages: list = []
        # Kept as messages arrive, so that waiting on them stays cheap however many there are.
        self.counts: collections.Counter = collections.Counter()  # per type
        self.executing: collections.Counter = collections.Counter()  # nodes started, per prompt
        self.finished: set[str] = set()  # prompts whose final `executing {node: null}` came
        self.tokens: set[str] = set()  # markers
        self.closed = False
        self._condition = threading.Condition()
        if flags is not None:
            self.ws.send(json.dumps({"type": "feature_flags", "data": flags}))
        threading.Thread(target=self._read, daemon=True).start()
        self.wait(lambda messages: messages)  # the connect status: from now on the relay routes to us

    def _read(self) -> None:
        while True:
            try:
                opcode, payload = self.ws.recv_data()
            except Exception:  # noqa: BLE001 - closed
                opcode = websocket.ABNF.OPCODE_CLOSE
            with self._condition:
                if opcode == websocket.ABNF.OPCODE_TEXT:
                    body = json.loads(payload)
                    kind, data = body["type"], body["data"]
                    self.messages.append((kind, data))
                    self.counts[kind] += 1
                    if kind == "executing" and "prompt_id" in data:
                        if data["node"] is None:
                            self.finished.add(data["prompt_id"])
                        else:
                            self.executing[data["prompt_id"]] += 1
                    elif kind == MARKER:
                        self.tokens.add(data.get("token"))
                elif opcode == websocket.ABNF.OPCODE_BINARY:
                    self.messages.append(bytes(payload))
                else:
                    self.closed = True
                self._condition.notify_all()
            if self.closed:
                return

    def wait(self, predicate, timeout: float = 60) -> list:
        with self._condition:
            done = self._condition.wait_for(lambda: predicate(self.messages) or self.closed, timeout)
            assert done and predicate(self.messages), (self.closed, self.messages[-5:])
            return list(self.messages)

    def until_done(self, prompt_id: str, timeout: float = 120) -> list:
        """Every message up to the prompt's final `executing {node: null}`."""
        final = ("executing", {"node": None, "prompt_id": prompt_id})
        messages = self.wait(lambda messages: prompt_id in self.finished, timeout)
        return messages[:messages.index(final) + 1]

    def binary(self) -> list[bytes]:
        with self._condition:
            return [m for m in self.messages if isinstance(m, bytes)]

    def close(self) -> None:
        self.ws.close()


def submit(server: FarmProcess, prompt: dict, **body) -> str:
    answer = requests.post(f"{server.url}/prompt", data=json.dumps({"prompt": prompt, **body}), timeout=10)
    assert answer.status_code == 200, answer.text
    return answer.json()["prompt_id"]


def of_prompt(messages: list, prompt_id: str) -> list:
    """The prompt's own events (no status, markers or binary frames)."""
    return [m for m in messages if isinstance(m, tuple) and m[0] not in ("status", MARKER)
            and (m[1].get("prompt_id") == prompt_id)]


def types(messages: list) -> list[str]:
    return [m[0] if isinstance(m, tuple) else "binary" for m in messages]


def interrupt(server: FarmProcess, prompt_id: str) -> None:
    assert requests.post(f"{server.url}/interrupt", data=json.dumps({"prompt_id": prompt_id}), timeout=10).ok


def executing_count(sock: Socket, prompt_id: str, count: int):
    return lambda messages: sock.executing[prompt_id] >= count


def test_a_client_on_one_web_server_follows_its_prompt_submitted_through_the_other(cluster):
    client = Socket(cluster.a, "?clientId=c-success")
    other, anonymous = Socket(cluster.a, "?clientId=someone-else", path="/api/ws"), Socket(cluster.b)
    prompt_id = submit(cluster.b, invert_workflow(color=random.randrange(1 << 24)), client_id="c-success")
    messages = client.until_done(prompt_id)
    entry = requests.get(f"{cluster.b.url}/history/{prompt_id}", timeout=5).json()[prompt_id]  # already written

    assert messages[0] == ("status", {"status": {"exec_info": {"queue_remaining": 0}}, "sid": "c-success"})
    names = types(messages)
    assert names[names.index("execution_start") - 1] == "status"  # the worker took the prompt
    assert names[-3:] == ["execution_success", "status", "executing"]
    assert messages[-2] == ("status", {"status": {"exec_info": {"queue_remaining": 0}}})
    events = of_prompt(messages, prompt_id)
    assert types(events) == ["execution_start", "execution_cached", *NODE_STEPS, *NODE_STEPS, *SAVE_STEPS,
                             "execution_success", "executing"]
    by_type = {}
    for name, data in events:
        by_type.setdefault(name, []).append(data)
    assert [[name, by_type[name][0]] for name in ("execution_start", "execution_cached", "execution_success")] \
        == entry["status"]["messages"]  # the very dicts of the history, timestamps included
    assert by_type["execution_cached"][0]["nodes"] == []
    assert by_type["executing"][:3] == [{"node": n, "display_node": n, "prompt_id": prompt_id} for n in "123"]
    assert by_type["executing"][3] == {"node": None, "prompt_id": prompt_id}
    assert by_type["executed"] == [{"node": "3", "display_node": "3", "output": entry["outputs"]["3"],
                                    "prompt_id": prompt_id}]
    assert entry["outputs"]["3"]["images"][0].keys() == {"filename", "subfolder", "type"}
    last_state = by_type["progress_state"][-1]
    assert last_state["prompt_id"] == prompt_id and set(last_state["nodes"]) == {"1", "2", "3"}
    assert last_state["nodes"]["3"] == {"value": 1, "max": 1, "state": "finished", "node_id": "3",
                                        "prompt_id": prompt_id, "display_node_id": "3", "parent_node_id": None,
                                        "real_node_id": "3"}

    cluster.sync(other, anonymous)
    for sock in (other, anonymous):  # another client, and one without a client id: only the broadcasts
        assert of_prompt(sock.messages, prompt_id) == []
        assert set(types(sock.messages)) == {"status", MARKER}
    assert [sock.binary() for sock in (client, other, anonymous)] == [[], [], []]
    for sock in (client, other, anonymous):
        sock.close()


def test_a_failing_node_sends_execution_error_then_status_then_the_final_executing(cluster):
    client = Socket(cluster.a, "?clientId=c-error")
    prompt_id = submit(cluster.b, invert_workflow(prefix="../x"), client_id="c-error")
    messages = client.until_done(prompt_id)
    entry = requests.get(f"{cluster.a.url}/history/{prompt_id}", timeout=5).json()[prompt_id]
    assert types(messages)[-3:] == ["execution_error", "status", "executing"]
    events = of_prompt(messages, prompt_id)
    assert types(events) == ["execution_start", "execution_cached", *NODE_STEPS, *NODE_STEPS,
                             "progress_state", "executing", "execution_error", "executing"]
    error = events[-2][1]
    assert set(error) == ERROR_KEYS
    assert (error["prompt_id"], error["node_id"], error["node_type"], error["executed"]) == \
        (prompt_id, "3", "SaveImage", ["1", "2"])
    assert error["exception_message"].endswith("\n") and error["traceback"]
    assert error["current_inputs"]["filename_prefix"] == ["../x"]
    assert error["current_outputs"] == ["1", "2", "3"]
    assert entry["status"]["messages"][-1] == ["execution_error", error]
    client.close()


def test_an_interrupted_prompt_ends_with_execution_interrupted(cluster):
    client = Socket(cluster.a, "?clientId=c-interrupt")
    prompt_id = submit(cluster.b, long_chain(size=64), client_id="c-interrupt")
    client.wait(executing_count(client, prompt_id, 5))
    interrupt(cluster.b, prompt_id)
    messages = client.until_done(prompt_id)
    assert types(messages)[-3:] == ["execution_interrupted", "status", "executing"]
    events = of_prompt(messages, prompt_id)
    assert types(events)[:2] == ["execution_start", "execution_cached"]
    name, data = events[-2]
    assert name == "execution_interrupted"
    assert set(data) == {"prompt_id", "node_id", "node_type", "executed", "timestamp"}
    assert data["node_type"] == "ImageInvert" and 0 < len(data["executed"]) < 1500
    ran = [d["node"] for n, d in events if n == "executing" and d["node"] is not None]
    assert data["executed"] == ran[:len(data["executed"])]
    client.close()


def test_a_prompt_without_client_id_reaches_every_socket_with_the_client_or_all_events_only(cluster):
    plain, other = Socket(cluster.a), Socket(cluster.b, "?clientId=c-bystander")
    prompt_id = submit(cluster.a, long_chain(size=64))
    plain.wait(lambda messages: plain.counts["progress_state"] >= 10)
    interrupt(cluster.a, prompt_id)
    for sock in (plain, other):
        sock.wait(lambda messages, sock=sock: sock.counts["execution_interrupted"] >= 1)
    cluster.sync(plain, other)
    seen = [of_prompt(sock.messages, prompt_id) for sock in (plain, other)]
    for events in seen:
        assert set(types(events)) == {"progress_state", "execution_interrupted"}  # no execution_start, executing...
        assert types(events)[-1] == "execution_interrupted"
    # A socket that lags may get fewer progress_state snapshots, but never an older last one.
    assert seen[0][-2:] == seen[1][-2:]
    assert plain.binary() == other.binary() == []
    for sock in (plain, other):
        sock.close()


def test_observers_follow_prompts_they_did_not_submit(cluster):
    prompt_id = str(uuid.uuid4())
    owner = Socket(cluster.b, "?clientId=c-owner")
    watcher = Socket(cluster.a, f"?subscribe={uuid.uuid4()},{prompt_id}")
    dashboard = Socket(cluster.b, "?subscribe=all", path="/api/ws")
    late = Socket(cluster.a, "?clientId=c-late")
    late.ws.send(json.dumps({"type": "subscribe", "data": {"prompt_id": prompt_id}}))
    deadline = time.monotonic() + 30
    while not late.tokens:
        assert time.monotonic() < deadline
        # Routed to its client (nobody) and to the prompt's observers only: arrives once subscribed.
        cluster.publish(MARKER, {"token": "subscribed"}, prompt_id=prompt_id, client_id="nobody")
        time.sleep(0.05)
    bystander = Socket(cluster.a, "?clientId=c-bystander-2")
    assert submit(cluster.a, invert_workflow(color=random.randrange(1 << 24)), client_id="c-owner",
                  prompt_id=prompt_id) == prompt_id
    expected = of_prompt(owner.until_done(prompt_id), prompt_id)
    assert types(expected)[-2:] == ["execution_success", "executing"]
    for sock in (watcher, dashboard, late):
        assert of_prompt(sock.until_done(prompt_id), prompt_id) == expected
    cluster.sync(bystander)
    assert of_prompt(bystander.messages, prompt_id) == []
    for sock in (owner, watcher, dashboard, late, bystander):
        sock.close()


def test_a_reconnecting_client_learns_the_node_running_for_it(cluster):
    late = cluster.start_web()  # a web process without sockets until the reconnect knows it too
    try:
        first = Socket(cluster.a, "?clientId=c-again")
        prompt_id = submit(cluster.a, long_chain(size=64), client_id="c-again")
        first.wait(executing_count(first, prompt_id, 5))
        first.close()
        for server in (cluster.b, late):
            again = Socket(server, "?clientId=c-again")
            messages = again.wait(lambda messages: len(messages) >= 2)
            assert messages[0] == ("status", {"status": {"exec_info": {"queue_remaining": 1}}, "sid": "c-again"}), \
                messages[:3]
            name, data = messages[1]
            assert name == "executing" and list(data) == ["node"] and data["node"] in long_chain(size=64), \
                messages[:3]
            if server is cluster.b:
                again.close()
        interrupt(cluster.a, prompt_id)
        assert types(again.until_done(prompt_id))[-3:] == ["execution_interrupted", "status", "executing"]
        again.close()
        fresh = Socket(late, "?clientId=c-again")  # the prompt is over: no executing hint
        cluster.sync(fresh)
        assert types(fresh.messages) == ["status", MARKER]
        fresh.close()
    finally:
        late.stop()


def test_a_prompt_whose_worker_is_lost_past_its_attempts_ends_as_an_error_for_its_client(tmp_path):
    redis_url = service_url("redis").rsplit("/", 1)[0] + f"/{random.randint(1, 15)}"
    env = {**farm_env(tmp_path / "data", broker_url=redis_url), "FARM_MAX_ATTEMPTS": "1"}
    port = free_port()
    web = FarmProcess(["web", "--port", str(port)], {**env, "FARM_WEB_PROCESSES": "1"}, tmp_path / "web.log", port)
    worker = FarmProcess(["worker", "--cpu", "--name", "lost"], env, tmp_path / "worker.log")
    again = None
    try:
        assert FarmProcess(["db", "upgrade"], env, tmp_path / "upgrade.log").process.wait(60) == 0
        web.wait_ready()
        client = Socket(web, "?clientId=c-lost")
        prompt_id = submit(web, long_chain(size=64), client_id="c-lost")
        client.wait(executing_count(client, prompt_id, 5), timeout=90)
        worker.stop(signal.SIGKILL)  # lost mid-prompt, on its one and only attempt
        again = FarmProcess(["worker", "--cpu", "--name", "lost"], env, tmp_path / "worker-again.log")
        messages = client.until_done(prompt_id)
        assert types(messages)[-3:] == ["execution_error", "status", "executing"]
        error = messages[-3][1]
        assert set(error) == ERROR_KEYS and error["exception_type"] == "WorkerLost"
        entry = requests.get(f"{web.url}/history/{prompt_id}", timeout=5).json()[prompt_id]
        assert entry["status"]["messages"] == [["execution_error", error]]
        assert Socket(web, "?clientId=c-lost").wait(lambda m: m)[:1] == [  # nothing runs for it any more
            ("status", {"status": {"exec_info": {"queue_remaining": 0}}, "sid": "c-lost"})]
    finally:
        stop_all([process for process in (again, web) if process is not None])


def jpeg_size(data: bytes) -> tuple[int, int]:
    from PIL import Image

    image = Image.open(io.BytesIO(data))
    assert image.format == "JPEG"
    return image.size


def test_previews_only_for_prompts_that_ask_and_in_the_form_each_socket_negotiated(cluster):
    meta = Socket(cluster.a, "?clientId=c-meta", flags={"supports_preview_metadata": True})
    assert meta.wait(lambda messages: len(messages) >= 2)[1][0] == "feature_flags"
    assert meta.messages[1][1] == requests.get(f"{cluster.a.url}/features", timeout=5).json()
    plain = Socket(cluster.b, "?clientId=c-plain")
    default = Socket(cluster.b, "?clientId=c-default", flags={"supports_preview_metadata": True})

    # Default settings: sampler progress, but no binary frame.
    prompt_id = submit(cluster.a, seed_workflow(seed=1, steps=3), client_id="c-default")
    events = of_prompt(default.until_done(prompt_id, timeout=180), prompt_id)
    assert types(events)[-2:] == ["execution_success", "executing"]
    assert [d for n, d in events if n == "progress"] == [
        {"value": step, "max": 3, "prompt_id": prompt_id, "node": "3"} for step in (1, 2, 3)]

    # Asked for: type 4 with metadata for the socket that negotiated it, before the step's progress;
    # type 1 for the other, after it (spec 4.3).
    asked = {}
    for seed, client_id, sock in ((2, "c-meta", meta), (3, "c-plain", plain)):
        asked[client_id] = submit(cluster.b, seed_workflow(seed=seed, steps=3), client_id=client_id,
                                  extra_data={"preview_method": "latent2rgb"})
        messages = sock.until_done(asked[client_id], timeout=180)
        first = next((i for i, m in enumerate(messages) if isinstance(m, bytes)), None)
        assert first is not None, types(messages)
        expected = ["progress_state", "binary", "progress"] if client_id == "c-meta" \
            else ["progress_state", "progress", "binary"]
        assert types(messages)[first - 1 - (client_id == "c-plain"):][:3] == expected
        frame = messages[first]
        if client_id == "c-meta":
            assert int.from_bytes(frame[:4], "big") == 4
            length = int.from_bytes(frame[4:8], "big")
            assert json.loads(frame[8:8 + length]) == {
                "node_id": "3", "prompt_id": asked[client_id], "display_node_id": "3", "parent_node_id": None,
                "real_node_id": "3", "image_type": "image/jpeg"}
            assert jpeg_size(frame[8 + length:]) == (8, 8)  # the 64x64 image's latent
        else:
            assert (int.from_bytes(frame[:4], "big"), int.from_bytes(frame[4:8], "big")) == (1, 1)
            assert jpeg_size(frame[8:]) == (8, 8)
    cluster.sync(meta, plain, default)
    assert default.binary() == []  # the others' previews went to them only
    assert all(int.from_bytes(frame[:4], "big") == 4 for frame in meta.binary())
    assert all(int.from_bytes(frame[:4], "big") == 1 for frame in plain.binary())
    for sock in (meta, plain, default):
        sock.close()


def test_a_socket_from_another_site_is_refused(cluster):
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        websocket.create_connection(f"ws://127.0.0.1:{cluster.a.port}/ws", origin="http://evil.example", timeout=10)
    assert refused.value.status_code == 403


def test_the_relays_reconnect_when_redis_drops_them(cluster):
    database = cluster.bus.connection_pool.connection_kwargs.get("db", 0)

    def listening() -> list:
        return [c for c in cluster.bus.client_list() if c["name"].startswith("farm-events-")
                and int(c["db"]) == database]

    sockets = [Socket(cluster.a), Socket(cluster.b), Socket(cluster.b)]
    # A relay listens while its process holds a socket, and either of web B's processes may accept
    # any socket (on a busy machine one often takes them all): more sockets until both hold one.
    while len(listening()) < 3 and len(sockets) < 20:
        sockets.append(Socket(cluster.b))
    relays = listening()
    assert len(relays) == 3  # one per web process: web A has one, web B two
    for relay_client in relays:
        cluster.bus.client_kill_filter(_id=relay_client["id"])
    deadline = time.monotonic() + 30
    while not all(sock.counts[MARKER] for sock in sockets):  # events flow again once resubscribed
        assert time.monotonic() < deadline
        cluster.publish(MARKER, {"token": "again"})
        time.sleep(0.1)
    assert "event bus connection lost" in cluster.a.output()
    for sock in sockets:
        sock.close()


def test_a_client_that_stops_reading_delays_nobody_and_is_dropped(cluster):
    # A small receive buffer, and it never reads: the server's sends to it soon block.
    stuck = websocket.create_connection(f"ws://127.0.0.1:{cluster.a.port}/ws?clientId=c-stuck", timeout=60,
                                        sockopt=((socket.SOL_SOCKET, socket.SO_RCVBUF, 4096),))
    assert json.loads(stuck.recv())["data"]["sid"] == "c-stuck"
    reader = Socket(cluster.a, "?clientId=c-reader")
    padding = "x" * 2000
    count = 10000
    pipeline = cluster.bus.pipeline(transaction=False)
    for index in range(count):  # 20 MB at up to 5000 events a second
        pipeline.publish(cluster.channel, encode_event("progress", {"value": index, "max": count, "pad": padding},
                                                       "flood"))
        if index % 100 == 99:
            pipeline.execute()
            time.sleep(0.02)
            # A reading client keeps up by definition: the publisher (this process, which also
            # reads) waits for it rather than outrunning it when the machine is busy. The stuck
            # client's buffers still fill, at whatever pace.
            deadline_for_reader = time.monotonic() + 60
            while index + 1 - reader.counts["progress"] > 1000:
                assert time.monotonic() < deadline_for_reader, "the reading client stayed 1,000 events behind"
                time.sleep(0.01)
    # A relay that waited on the stuck socket would starve this reader until the timeout.
    reader.wait(lambda messages: reader.counts["progress"] == count, timeout=120)
    assert [m[1]["value"] for m in reader.messages if m[0] == "progress"] == list(range(count))
    deadline = time.monotonic() + 60
    while "dropping WebSocket c-stuck" not in cluster.a.output():
        assert time.monotonic() < deadline, cluster.a.output()
        time.sleep(0.1)
    received = 0
    with pytest.raises((websocket.WebSocketConnectionClosedException, ConnectionError, OSError)):
        while True:
            opcode, _ = stuck.recv_data()
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                raise ConnectionError("closed")
            received += 1
    assert received < count
    cluster.sync(reader)  # still served
    reader.close()


def test_farm_up_relays_events_through_its_embedded_redis(tmp_path):
    with farm_up(tmp_path / "data") as farm:
        client = Socket(farm, "?clientId=c-up")
        prompt_id = submit(farm, invert_workflow(), client_id="c-up")
        events = of_prompt(client.until_done(prompt_id), prompt_id)
        assert types(events)[:2] == ["execution_start", "execution_cached"]
        assert types(events)[-2:] == ["execution_success", "executing"]
        client.close()
