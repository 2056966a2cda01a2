"""Live-event latency: from a publish on the event bus to receipt on the WebSockets of one web process.

Starts `farm web` (one process, SQLite in a temporary folder, the event bus on Redis), opens
WebSockets from client processes (one selector loop each), publishes timestamped events on the
bus the way a worker does, and records publish -> receipt for every (event, socket):

- broadcast: events without a client_id (every socket gets each one), `--rate` per second;
- to one client: events addressed to one socket each (a prompt's own events), `--client-rate`
  per second spread over the sockets.

Both are measured with `--sockets` sockets open (500). Then the socket count steps up
(`--steps`, broadcast only: the fan-out is the cost) until p99 passes `--budget-ms` (100 ms); the
last count under it is what one web process holds. Clients and server share the machine's cores
(`cpus` in the output). One JSON line on stdout, a table on stderr.

    .venv/bin/python bench/events.py [--redis-url redis://127.0.0.1:6379/14]
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import random
import selectors
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EVENT = "bench_event"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_web(redis_url: str, max_sockets: int, folder: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")}
    env.update(FARM_DATA_DIR=str(folder / "data"), FARM_MODELS_DIR=str(folder / "models"), FARM_EVENTS_URL=redis_url,
               FARM_WEB_PROCESSES="1", FARM_WEB_SOCKETS=str(max_sockets))
    farm = [sys.executable, "-m", "farm.cli"]
    subprocess.run([*farm, "db", "upgrade"], env=env, cwd=ROOT, check=True, capture_output=True)
    log = open(folder / "web.log", "wb")
    process = subprocess.Popen([*farm, "web", "--port", str(port)], env=env, cwd=ROOT, stdout=log,
                               stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return process, url
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"bench: farm web did not start:\n{(folder / 'web.log').read_text()[-3000:]}")
            time.sleep(0.1)


# client processes ---------------------------------------------------------------------------------
def client_main(port: int, prefix: str, commands) -> None:
    """Holds sockets; answers ("open", n) -> sids, ("collect",) -> latencies in ms, ("stop",).

    Reads raw bytes and parses the (unmasked, unfragmented) server frames itself: a WebSocket
    library's per-frame reads would cost more than the server's sends and blur the figure.
    """
    import websocket

    selector = selectors.DefaultSelector()
    selector.register(commands, selectors.EVENT_READ, None)
    sockets, buffers, latencies = [], {}, []
    while True:
        for key, _ in selector.select():
            if key.data is None:
                command = commands.recv()
                if command[0] == "open":
                    sids = []
                    for _ in range(command[1]):
                        sid = f"{prefix}-{len(sockets)}"
                        ws = websocket.create_connection(f"ws://127.0.0.1:{port}/ws?clientId={sid}", timeout=30)
                        ws.recv()  # the connect status: the relay routes to it from now on
                        ws.sock.setblocking(False)
                        sockets.append(ws)
                        sids.append(sid)
                        buffers[ws.sock.fileno()] = bytearray()
                        selector.register(ws.sock, selectors.EVENT_READ, ws.sock)
                    commands.send(sids)
                elif command[0] == "collect":
                    commands.send(latencies)
                    latencies = []
                else:
                    for ws in sockets:
                        ws.sock.setblocking(True)
                        ws.close()
                    return
                continue
            try:
                chunk = key.data.recv(1 << 16)
            except BlockingIOError:
                continue
            received = time.time()
            buffer = buffers[key.data.fileno()]
            buffer.extend(chunk)
            for payload in frames(buffer):
                body = json.loads(payload)
                if body["type"] == EVENT:
                    latencies.append((received - body["data"]["t"]) * 1000)


def frames(buffer: bytearray) -> list[bytes]:
    """Complete frames' payloads taken off the front of `buffer`."""
    out = []
    while len(buffer) >= 2:
        size, offset = buffer[1] & 0x7F, 2
        if size == 126:
            if len(buffer) < 4:
                break
            size, offset = int.from_bytes(buffer[2:4], "big"), 4
        elif size == 127:
            if len(buffer) < 10:
                break
            size, offset = int.from_bytes(buffer[2:10], "big"), 10
        if len(buffer) < offset + size:
            break
        out.append(bytes(buffer[offset:offset + size]))
        del buffer[:offset + size]
    return out


class Clients:
    def __init__(self, port: int, processes: int):
        context = multiprocessing.get_context("spawn")
        self.pipes, self.processes, self.sids = [], [], []
        for index in range(processes):
            ours, theirs = context.Pipe()
            process = context.Process(target=client_main, args=(port, f"bench{index}", theirs), daemon=True)
            process.start()
            self.pipes.append(ours)
            self.processes.append(process)

    def grow_to(self, total: int) -> None:
        missing = total - len(self.sids)
        if missing <= 0:
            return
        count = len(self.pipes)
        shares = [missing // count + (1 if i < missing % count else 0) for i in range(count)]
        for pipe, share in zip(self.pipes, shares):
            pipe.send(("open", share))
        for pipe in self.pipes:
            self.sids.extend(pipe.recv())

    def collect(self) -> list[float]:
        for pipe in self.pipes:
            pipe.send(("collect",))
        return [value for pipe in self.pipes for value in pipe.recv()]

    def stop(self) -> None:
        for pipe in self.pipes:
            pipe.send(("stop",))
        for process in self.processes:
            process.join(10)


# measuring ----------------------------------------------------------------------------------------
def publish(bus, channel: str, rate: float, seconds: float, client_ids: list[str] | None) -> int:
    """Events at `rate` per second for `seconds`; to everyone, or each to one of `client_ids`."""
    from farm.events import encode_event

    count = int(rate * seconds)
    start = time.monotonic()
    for index in range(count):
        delay = start + index / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        client_id = random.choice(client_ids) if client_ids else None
        bus.publish(channel, encode_event(EVENT, {"t": time.time(), "seq": index}, client_id=client_id))
    return count


def summary(latencies: list[float], expected: int) -> dict:
    if not latencies:
        return {"received": 0, "expected": expected}
    ordered = sorted(latencies)
    return {"p50_ms": round(statistics.median(ordered), 2),
            "p99_ms": round(ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)], 2),
            "max_ms": round(ordered[-1], 2), "received": len(ordered), "expected": expected}


def measure(bus, channel, clients: Clients, rate: float, seconds: float, targeted: bool) -> dict:
    clients.collect()  # forget anything from before
    count = publish(bus, channel, rate, seconds, clients.sids if targeted else None)
    time.sleep(0.5)  # the last events' deliveries
    return summary(clients.collect(), count if targeted else count * len(clients.sids))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/14",
                        help="the event bus (its database number keeps the bench's channel apart)")
    parser.add_argument("--sockets", type=int, default=500)
    parser.add_argument("--steps", default="100,250,500,1000,2000,4000,8000")
    parser.add_argument("--rate", type=float, default=10.0, help="broadcast events per second")
    parser.add_argument("--client-rate", type=float, default=500.0, help="events per second to single clients")
    parser.add_argument("--seconds", type=float, default=3.0, help="per measurement")
    parser.add_argument("--budget-ms", type=float, default=100.0)
    parser.add_argument("--client-processes", type=int, default=max(1, min(4, (os.cpu_count() or 2) // 2)))
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    import redis

    from farm.events import channel_for

    steps = sorted({int(s) for s in args.steps.split(",")} | {args.sockets})
    folder = Path(tempfile.mkdtemp(prefix="farm-bench-events-"))
    web, url = start_web(args.redis_url, max(steps) + 10, folder)
    bus, channel = redis.Redis.from_url(args.redis_url), channel_for(args.redis_url)
    clients = Clients(int(url.rsplit(":", 1)[1]), args.client_processes)
    result = {"bench": "events", "cpus": os.cpu_count(), "client_processes": args.client_processes,
              "broadcast_rate_per_s": args.rate, "client_rate_per_s": args.client_rate, "seconds": args.seconds,
              "budget_ms": args.budget_ms}
    try:
        result["steps"], held, over = [], 0, False
        for total in steps:
            clients.grow_to(total)
            time.sleep(0.5)
            step = {"sockets": total, **measure(bus, channel, clients, args.rate, args.seconds, targeted=False)}
            result["steps"].append(step)
            print(f"{total:6d} sockets  broadcast p50 {step.get('p50_ms')} ms  p99 {step.get('p99_ms')} ms  "
                  f"received {step['received']}/{step['expected']}", file=sys.stderr)
            if total == args.sockets:
                result["at_sockets"] = total
                result["broadcast"] = {k: v for k, v in step.items() if k != "sockets"}
                result["to_one_client"] = measure(bus, channel, clients, args.client_rate, args.seconds, targeted=True)
                print(f"{total:6d} sockets  to one client p50 {result['to_one_client'].get('p50_ms')} ms  "
                      f"p99 {result['to_one_client'].get('p99_ms')} ms", file=sys.stderr)
            over = over or step.get("p99_ms", math.inf) > args.budget_ms or step["received"] < step["expected"]
            held = held if over else total
            if over and total >= args.sockets:
                break
        result["sockets_held_p99_under_budget"] = held
        result["budget_passed_within_steps"] = over
    finally:
        clients.stop()
        web.send_signal(signal.SIGTERM)
        try:
            web.wait(30)
        except subprocess.TimeoutExpired:
            web.kill()
        shutil.rmtree(folder, ignore_errors=True)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
