"""Per-prompt overhead of the farm (or any ComfyUI-compatible server), measured over HTTP only.

Only the public API is used (POST /prompt, GET /prompt, GET /queue, GET /history/<id>,
GET /system_stats), so `--url http://host:8188` points the same script at a real ComfyUI.
Without `--url` the script starts `farm up --cpu` on a free port with a temporary data folder,
measures, stops it with SIGTERM and removes the folder.

What is measured, with tiny model-free workflows so that node work is negligible:

1. Latency (workflow A: EmptyImage -> ImageInvert -> SaveImage, 64x64). One prompt at a time:
   POST /prompt, then poll GET /queue and GET /history/<id> alternately in a tight loop
   (0.5 ms sleeps). Recorded per prompt, from just before the POST:
     submit_ms            the POST /prompt round trip;
     execution_start_ms   first time the prompt is seen in queue_running or in the history.
                          An upper bound: it is limited by the polling (and on the farm
                          queue_running also lists prompts dispatched to a worker but not yet begun);
     history_visible_ms   first time GET /history/<id> returns the entry.
   Two modes: back to back (next POST as soon as the previous prompt is in the history) and
   paused (`--pause` seconds between prompts, so idle paths such as worker wake-up show).
2. Accept throughput: for 1 and 8 client threads (one keep-alive requests.Session each) POST
   prompts for `--seconds` seconds, workflows A and B (B: 7 nodes, scale/invert/blend/scale).
   Reported as 200 answers per second; errors are counted separately. The server executes the
   accepted prompts too; before each next phase the script waits until GET /prompt reports
   queue_remaining == 0 and reports how long that drain took.

Every EmptyImage gets a different colour, so no server-side cache can skip the work. With
`--sockets N`, N WebSockets stay connected to /ws for the whole run, reading everything (as open
browser tabs do), so that the cost of live events is part of the figures.
Prints one JSON object on stdout and a short table on stderr.
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import math
import os
import platform
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid

import requests

COLORS = itertools.count(random.randrange(0x1000000))  # next() is atomic enough under the GIL
POLL_SLEEP = 0.0005


def color() -> int:
    return next(COLORS) % 0x1000000


def workflow_a() -> dict:
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": color()}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "bench"}},
    }


def workflow_b() -> dict:
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": color()}},
        "2": {"class_type": "ImageScale", "inputs": {"image": ["1", 0], "upscale_method": "bilinear",
                                                     "width": 96, "height": 96, "crop": "disabled"}},
        "3": {"class_type": "ImageInvert", "inputs": {"image": ["2", 0]}},
        "4": {"class_type": "EmptyImage", "inputs": {"width": 96, "height": 96, "batch_size": 1, "color": color()}},
        "5": {"class_type": "ImageBlend", "inputs": {"image1": ["3", 0], "image2": ["4", 0],
                                                     "blend_factor": 0.5, "blend_mode": "multiply"}},
        "6": {"class_type": "ImageScaleBy", "inputs": {"image": ["5", 0], "upscale_method": "nearest-exact",
                                                       "scale_by": 0.5}},
        "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": "bench"}},
    }


WORKFLOWS = {"A": workflow_a, "B": workflow_b}


def submit(session: requests.Session, url: str, prompt: dict, client_id: str) -> requests.Response:
    return session.post(f"{url}/prompt", json={"prompt": prompt, "client_id": client_id}, timeout=30)


def submit_checked(session: requests.Session, url: str, prompt: dict, client_id: str) -> str:
    answer = submit(session, url, prompt, client_id)
    prompt_id = answer.json().get("prompt_id") if answer.status_code == 200 else None
    if not prompt_id:
        sys.exit(f"bench: POST /prompt answered {answer.status_code} without a prompt_id: {answer.text[:500]}")
    return prompt_id


def run_one(session: requests.Session, url: str, client_id: str, timeout: float = 120) -> dict:
    """Submit workflow A and poll until it is in the history; times in ms from just before the POST."""
    start = time.perf_counter()
    prompt_id = submit_checked(session, url, workflow_a(), client_id)
    times = {"submit_ms": (time.perf_counter() - start) * 1000}
    while time.perf_counter() - start < timeout:
        if "execution_start_ms" not in times:  # once seen running, only the history matters
            running = session.get(f"{url}/queue", timeout=30).json().get("queue_running", [])
            if any(item[1] == prompt_id for item in running):
                times["execution_start_ms"] = (time.perf_counter() - start) * 1000
        entry = session.get(f"{url}/history/{prompt_id}", timeout=30).json().get(prompt_id)
        if entry:
            now = (time.perf_counter() - start) * 1000
            times.setdefault("execution_start_ms", now)
            times["history_visible_ms"] = now
            if entry.get("status", {}).get("status_str") != "success":
                sys.exit(f"bench: prompt {prompt_id} failed: {json.dumps(entry.get('status'))[:1000]}")
            return times
        time.sleep(POLL_SLEEP)
    sys.exit(f"bench: prompt {prompt_id} not in the history after {timeout:.0f} s")


def summary(values: list[float]) -> dict:
    ordered = sorted(values)
    p99 = ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)]  # nearest rank
    return {"p50": round(statistics.median(ordered), 2), "p99": round(p99, 2),
            "mean": round(statistics.fmean(ordered), 2), "max": round(ordered[-1], 2)}


def latency(url: str, count: int, pause: float) -> dict:
    session, client_id, samples = requests.Session(), uuid.uuid4().hex, []
    for index in range(count):
        if pause and index:
            time.sleep(pause)
        samples.append(run_one(session, url, client_id))
    keys = ("submit_ms", "execution_start_ms", "history_visible_ms")
    return {key: summary([s[key] for s in samples]) for key in keys} | {"prompts": count, "pause_s": pause}


class LightClient:
    """A keep-alive HTTP/1.1 client on http.client: the load generator shares the machine's
    cores with the server, so it should spend as little CPU per request as possible."""

    def __init__(self, url: str):
        parsed = urllib.parse.urlsplit(url)
        self.connection = http.client.HTTPConnection(parsed.hostname, parsed.port or 80, timeout=30)

    def post_json(self, path: str, body: dict) -> tuple[int, bytes]:
        self.connection.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        response = self.connection.getresponse()
        return response.status, response.read()


def accept_rate(url: str, make_prompt, clients: int, seconds: float) -> dict:
    counts, errors, first_error = [0] * clients, [0] * clients, []
    barrier = threading.Barrier(clients + 1)

    def client(slot: int) -> None:
        connection, client_id = LightClient(url), uuid.uuid4().hex
        barrier.wait()
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            try:
                status, data = connection.post_json("/prompt", {"prompt": make_prompt(), "client_id": client_id})
                ok = status == 200 and b'"prompt_id"' in data
                detail = f"{status}: {data[:300]!r}"
            except (OSError, http.client.HTTPException) as error:
                ok, detail = False, repr(error)
                connection = LightClient(url)
            if ok:
                counts[slot] += 1
            else:
                errors[slot] += 1
                first_error.append(detail)

    threads = [threading.Thread(target=client, args=(slot,), daemon=True) for slot in range(clients)]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    if not sum(counts):
        sys.exit(f"bench: no prompt was accepted; first error: {first_error[:1]}")
    return {"accepted": sum(counts), "errors": sum(errors), "seconds": round(elapsed, 3),
            "per_s": round(sum(counts) / elapsed, 1), "first_error": first_error[0] if first_error else None}


def drain(url: str, timeout: float) -> dict:
    """Wait until the server reports an empty queue; how long it took."""
    started, session = time.perf_counter(), requests.Session()
    while time.perf_counter() - started < timeout:
        if session.get(f"{url}/prompt", timeout=30).json()["exec_info"]["queue_remaining"] == 0:
            return {"drain_s": round(time.perf_counter() - started, 2), "drain_timed_out": False}
        time.sleep(0.05)
    print(f"bench: warning: queue not empty after {timeout:.0f} s; later phases may be disturbed", file=sys.stderr)
    return {"drain_s": round(timeout, 2), "drain_timed_out": True}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_farm(folder: str) -> tuple[subprocess.Popen, str, object]:
    port, log = free_port(), open(os.path.join(folder, "farm.log"), "wb")
    command = [sys.executable, "-m", "farm.cli", "up", "--port", str(port), "--cpu",
               "--data-dir", os.path.join(folder, "data"), "--models-dir", os.path.join(folder, "models")]
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        try:
            if requests.get(f"{url}/system_stats", timeout=2).status_code == 200:
                return process, url, log
        except requests.RequestException:
            pass
        time.sleep(0.2)
    stop_farm(process, log)
    with open(log.name, errors="replace") as text:
        sys.exit(f"bench: the farm did not come up (code {process.returncode}); log tail:\n{text.read()[-3000:]}")


def stop_farm(process: subprocess.Popen, log) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    log.close()


class Watchers:
    """`count` WebSockets on /ws that read and discard everything, as browser tabs left open do:
    with them the server pays for live events (ComfyUI always sends them; the farm relays only
    while it holds sockets)."""

    def __init__(self, url: str, count: int):
        import websocket

        base = "ws" + url[len("http"):]
        self.sockets = [websocket.create_connection(f"{base}/ws?clientId=bench-watcher-{index}", timeout=10)
                        for index in range(count)]
        self.received = 0
        for sock in self.sockets:
            threading.Thread(target=self._read, args=(sock,), daemon=True).start()

    def _read(self, sock) -> None:
        try:
            while sock.recv_data() is not None:
                self.received += 1
        except Exception:  # noqa: BLE001 - closed
            return

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()


def measure(url: str, args) -> dict:
    result = {"target": url if args.url else "farm", "prompts": args.prompts, "python": platform.python_version(),
              "cpus": os.cpu_count(), "note": "execution_start_ms is an upper bound limited by polling "
              f"GET /queue and GET /history every ~{POLL_SLEEP * 1000:g} ms; queue_running may include prompts "
              "dispatched but not yet started"}
    try:
        stats = requests.get(f"{url}/system_stats", timeout=10)
    except requests.RequestException as error:
        sys.exit(f"bench: cannot reach {url}: {error}")
    if stats.status_code != 200:
        sys.exit(f"bench: GET {url}/system_stats answered {stats.status_code}")
    drain(url, args.drain_timeout)
    watchers = Watchers(url, args.sockets)
    result["sockets"] = args.sockets
    try:
        measure_into(result, url, args)
    finally:
        watchers.close()
    result["socket_messages"] = watchers.received
    return result


def measure_into(result: dict, url: str, args) -> None:
    for _ in range(args.warmup):  # first prompts pay for imports and lazy start-up
        run_one(requests.Session(), url, "bench-warmup")
    result["latency"] = {"back_to_back": latency(url, args.prompts, 0.0),
                         "paused": latency(url, args.paused_prompts, args.pause)}
    result["accept_per_s"], result["accept_detail"] = {}, {}
    for name, make_prompt in WORKFLOWS.items():
        for clients in (1, 8):
            detail = accept_rate(url, make_prompt, clients, args.seconds) | drain(url, args.drain_timeout)
            result["accept_per_s"].setdefault(name, {})[str(clients)] = detail["per_s"]
            result["accept_detail"].setdefault(name, {})[str(clients)] = detail


def print_table(result: dict) -> None:
    out = sys.stderr
    print(f"{'latency (ms)':<36}{'p50':>9}{'p99':>9}{'mean':>9}{'max':>9}", file=out)
    for mode, figures in result["latency"].items():
        for key in ("submit_ms", "execution_start_ms", "history_visible_ms"):
            row = figures[key]
            print(f"{mode + ' ' + key:<36}{row['p50']:>9}{row['p99']:>9}{row['mean']:>9}{row['max']:>9}", file=out)
    print(f"{'accepted/s':<36}{'errors':>9}{'drain s':>9}", file=out)
    for name, by_clients in result["accept_detail"].items():
        for clients, detail in by_clients.items():
            label = f"workflow {name}, {clients} client(s): {detail['per_s']}"
            print(f"{label:<36}{detail['errors']:>9}{detail['drain_s']:>9}", file=out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", help="an already running server, e.g. http://127.0.0.1:8188 (default: start a farm)")
    parser.add_argument("--prompts", type=int, default=100, help="back-to-back latency prompts (default 100)")
    parser.add_argument("--paused-prompts", type=int, default=20, help="latency prompts with a pause (default 20)")
    parser.add_argument("--pause", type=float, default=2.0, help="seconds between paused prompts (default 2)")
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds per throughput phase (default 5)")
    parser.add_argument("--warmup", type=int, default=3, help="unmeasured prompts first (default 3)")
    parser.add_argument("--drain-timeout", type=float, default=600.0, help="max wait for an empty queue (s)")
    parser.add_argument("--sockets", type=int, default=0,
                        help="WebSockets held open on /ws during the run, reading every message (default 0)")
    args = parser.parse_args()
    if args.url:
        result = measure(args.url.rstrip("/"), args)
    else:
        folder = tempfile.mkdtemp(prefix="farm-bench-")
        process = log = None
        try:
            process, url, log = start_farm(folder)
            result = measure(url, args)
        finally:
            if process is not None:
                stop_farm(process, log)
            shutil.rmtree(folder, ignore_errors=True)
    print_table(result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
