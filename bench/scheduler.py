"""Scheduler figures (issue 9): how throughput scales with workers, and the dispatch overhead.

Starts a real cluster per broker (bench/farm_cluster.py): `farm db upgrade`, `farm web` and
`farm worker --cpu` processes on a throwaway PostgreSQL database (or SQLite), Redis database and
RabbitMQ vhost, with the test node pack (`tests.nodepack`: `Sleep`, which sleeps without using
the CPU as a GPU-bound node does, and the output node `Show`). Workers run at nice 0 with 1 s
heartbeats.

1. Scaling, apart from CPU cost. For each N in `--workers`: N workers, a warm-up batch of N
   prompts (not counted), then `--per-worker` x N prompts, each a Sleep of `--sleep-ms`,
   posted at once from a few client threads. When all are in the history, their status
   messages give the window from the first `execution_start` to the last `execution_success`
   (worker timestamps, ms): prompts/s over that window, and its ratio to N x 1000/sleep_ms per
   second (the goal is >= 0.95). ratio = in_prompt x busy: `in_prompt` is sleep_ms over the mean
   start-to-success time (what the executor adds), `busy` the share of the N x window worker time
   spent inside prompts; busy = 1 - gaps - edges, the shares spent between two prompts of one
   worker and before a worker's first start or after its last end. The database's `prompts` rows
   give each prompt's worker and attempt (above 1: dispatched again) and the times that cut a gap
   into its parts (GAP_PARTS).
2. Dispatch overhead on an idle farm (1 worker, Sleep of 0 ms): a WebSocket on
   /ws?clientId=X, then one prompt at a time: from just before POST /prompt to the receipt of
   its `execution_start` (a reader thread timestamps each frame as it arrives); the next prompt
   is posted after the final `executing` (node null). p50/p99 over `--samples`, and the same
   span cut at the times the farm records (DISPATCH_PARTS).

Every prompt carries a different value, so the workers' execution caches never serve one.
Clients share the machine's cores with the farm (`cpus`, and the CPU shares in the output):
compare runs on the same quiet machine only. A table goes to stderr, then ONE JSON line to
stdout. Every process, the database, the Redis database and the vhost are removed at the end, on
failure and on Ctrl-C or SIGTERM too; the processes' logs stay in a temporary folder, printed,
when something failed (`--keep-logs`: always).

    .venv/bin/python bench/scheduler.py --quick
    .venv/bin/python bench/scheduler.py --brokers redis,rabbitmq --workers 1,2,4,8
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import itertools
import json
import math
import os
import platform
import queue
import random
import signal
import statistics
import sys
import threading
import time
import urllib.parse
import uuid
from pathlib import Path

import requests

from farm_cluster import ROOT, BenchError, Farm, Processes, database, logs_folder, rabbitmq_vhost, redis_database

VALUES = itertools.count(random.randrange(1 << 30))  # a new Sleep value per prompt: no cache hits


def prompt(sleep_ms: int) -> dict:
    return {"1": {"class_type": "Sleep", "inputs": {"value": next(VALUES), "ms": sleep_ms}},
            "2": {"class_type": "Show", "inputs": {"value": ["1", 0]}}}


def summary(values: list[float]) -> dict:
    ordered = sorted(values)
    p99 = ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)]  # nearest rank
    return {"p50": round(statistics.median(ordered), 2), "p99": round(p99, 2),
            "mean": round(statistics.fmean(ordered), 2), "max": round(ordered[-1], 2)}


# 1. scaling ------------------------------------------------------------------------------------
def post_all(url: str, prompts: list[dict], threads: int) -> tuple[list[str], float]:
    """POST every prompt from `threads` keep-alive connections at once; (ids in order, seconds)."""
    parsed = urllib.parse.urlsplit(url)
    ids: list[str | None] = [None] * len(prompts)
    errors: list[str] = []
    jobs = iter(range(len(prompts)))
    lock = threading.Lock()

    def client() -> None:
        connection = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=30)
        while True:
            with lock:
                index = next(jobs, None)
            if index is None:
                return
            try:
                connection.request("POST", "/prompt", json.dumps({"prompt": prompts[index], "client_id": "bench"}),
                                   {"Content-Type": "application/json"})
                response = connection.getresponse()
                body = response.read()
                ids[index] = json.loads(body).get("prompt_id") if response.status == 200 else None
                if ids[index] is None:
                    errors.append(f"{response.status}: {body[:300]!r}")
            except (OSError, http.client.HTTPException, ValueError) as error:
                errors.append(repr(error))
                connection = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=30)

    workers = [threading.Thread(target=client, daemon=True) for _ in range(min(threads, len(prompts)))]
    started = time.perf_counter()
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    if errors:
        raise BenchError(f"{len(errors)} POST /prompt failed; first: {errors[0]}")
    return ids, time.perf_counter() - started


def run_batch(farm: Farm, count: int, sleep_ms: int, timeout: float,
              queued: bool = False) -> tuple[list[str], list[dict], float]:
    """Post `count` Sleep prompts and wait for them all. `queued`: with dispatch paused while they
    are posted, then resumed, so the workers drain a deep queue and share no time with the posting."""
    if queued:
        farm.set_dispatch(paused=True)
    ids, submit_s = post_all(farm.url, [prompt(sleep_ms) for _ in range(count)], threads=4)
    if queued:
        farm.set_dispatch(paused=False)
    farm.wait(lambda: farm.queue_remaining() == 0, timeout, f"{count} prompts to finish", every=0.25)
    entries = [farm.history(prompt_id) for prompt_id in ids]
    missing = [p for p, e in zip(ids, entries) if e is None]
    failed = [e for e in entries if e is not None and e["status"]["status_str"] != "success"]
    if missing or failed:
        detail = json.dumps(failed[0]["status"])[:1500] if failed else ""
        raise BenchError(f"{len(missing)} prompt(s) missing from the history (e.g. {missing[:3]}), "
                         f"{len(failed)} failed {detail}")
    return ids, entries, submit_s


# A gap between two prompts on one worker, cut at the times the farm records: the previous
# prompt's execution_success, its finished_at (history write), the next one's dispatched_at,
# its started_at (claim), its execution_start.
GAP_PARTS = ("record", "to_dispatch", "deliver_claim", "to_start")


def ms(moment) -> float:
    return moment.timestamp() * 1000


def times_of(entry: dict) -> tuple[float, float]:
    stamps = {event: data.get("timestamp") for event, data in entry["status"]["messages"]}
    return stamps["execution_start"], stamps["execution_success"]


def scaling(farm: Farm, n: int, args) -> dict:
    workers = farm.start_workers(n)
    try:
        expected = args.per_worker * args.sleep_ms / 1000
        timeout = 60 + 10 * expected
        run_batch(farm, n, args.sleep_ms, timeout)  # warm-up: first prompts pay for lazy start-up
        count = args.per_worker * n
        meter = farm.processes.cpu_meter()
        ids, entries, submit_s = run_batch(farm, count, args.sleep_ms, timeout, queued=args.submit == "queued")
        cpu = meter.shares()
    finally:
        farm.stop_workers(workers)
    spans = {prompt_id: times_of(entry) for prompt_id, entry in zip(ids, entries)}
    first, last = min(start for start, _ in spans.values()), max(end for _, end in spans.values())
    window_s = (last - first) / 1000
    inside_ms = [end - start for start, end in spans.values()]
    per_s = count / window_s
    ideal = n * 1000 / args.sleep_ms
    rows = {row.prompt_id: row for row in farm.prompt_rows(ids)}
    per_worker: dict[str, list[str]] = {}
    for prompt_id in sorted(spans, key=lambda p: spans[p][0]):
        per_worker.setdefault(rows[prompt_id].worker, []).append(prompt_id)
    # Each worker's share of the window: its head (before its first start), its prompts, the gaps
    # between them and its tail (after its last end) add up to the window exactly.
    heads = [spans[run[0]][0] - first for run in per_worker.values()]
    tails = [last - spans[run[-1]][1] for run in per_worker.values()]
    gaps, parts = [], {part: [] for part in GAP_PARTS}
    for run in per_worker.values():
        for before, after in zip(run, run[1:]):
            gaps.append(spans[after][0] - spans[before][1])
            moments = [spans[before][1], ms(rows[before].finished_at), ms(rows[after].dispatched_at),
                       ms(rows[after].started_at), spans[after][0]]
            for part, (a, b) in zip(GAP_PARTS, zip(moments, moments[1:])):
                parts[part].append(b - a)
    worker_ms = n * (last - first)
    return {
        "workers": n, "prompts": count, "sleep_ms": args.sleep_ms,
        "window_s": round(window_s, 3), "per_s": round(per_s, 3), "ideal_per_s": ideal,
        "ratio": round(per_s / ideal, 4),
        "busy": round(sum(inside_ms) / worker_ms, 4),
        "lost_to_gaps": round(sum(gaps) / worker_ms, 4),
        "lost_to_edges": round((sum(heads) + sum(tails)) / worker_ms, 4),
        "in_prompt": round(args.sleep_ms / statistics.fmean(inside_ms), 4),
        "prompt_ms": summary(inside_ms),
        "gap_ms": summary(gaps) if gaps else None,
        "gap_parts_ms": {part: summary(values) for part, values in parts.items()} if gaps else None,
        "head_ms": summary(heads),
        "tail_ms": summary(tails),
        "per_worker": sorted(len(s) for s in per_worker.values()),
        "max_attempt": max(row.attempt for row in rows.values()),
        "submit_s": round(submit_s, 3),
        "cpu": cpu,
    }


# 2. dispatch overhead --------------------------------------------------------------------------
# Submit -> execution_start cut at the times the farm records: the prompt's created_at (accepted),
# dispatched_at, started_at (claimed), the execution_start timestamp, then receipt on the socket.
DISPATCH_PARTS = ("accept", "to_dispatch", "deliver_claim", "to_start", "relay")


class Socket:
    """A WebSocket on /ws whose reader thread timestamps every text frame as it arrives."""

    def __init__(self, url: str, client_id: str):
        import websocket

        self.ws = websocket.create_connection(f"ws{url[len('http'):]}/ws?clientId={client_id}", timeout=30)
        self.frames: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            while True:
                opcode, data = self.ws.recv_data()
                now, wall = time.perf_counter(), time.time()
                if opcode == 1:  # text; binary frames (previews) do not matter here
                    self.frames.put((now, wall, json.loads(data)))
        except Exception:  # noqa: BLE001 - closed
            self.frames.put((time.perf_counter(), time.time(), None))

    def until(self, prompt_id: str, kind: str, deadline: float) -> tuple[float, float, dict]:
        """(perf_counter, wall clock, data) at receipt of the next `kind` frame of `prompt_id`
        (`executing` means the final one, node null)."""
        while True:
            try:
                at, wall, message = self.frames.get(timeout=max(0.01, deadline - time.perf_counter()))
            except queue.Empty:
                raise BenchError(f"no {kind} for {prompt_id} on the WebSocket in time") from None
            if message is None:
                raise BenchError("the WebSocket closed")
            data = message.get("data") or {}
            if data.get("prompt_id") != prompt_id or message.get("type") != kind:
                if message.get("type") == "execution_error" and data.get("prompt_id") == prompt_id:
                    raise BenchError(f"{prompt_id} failed: {json.dumps(data)[:1500]}")
                continue
            if kind == "executing" and data.get("node") is not None:
                continue
            return at, wall, data

    def close(self) -> None:
        self.ws.close()


def dispatch_overhead(farm: Farm, args) -> dict:
    workers = farm.start_workers(1)
    client_id = f"bench-{uuid.uuid4().hex[:8]}"
    sock = Socket(farm.url, client_id)
    session = requests.Session()
    samples: dict[str, dict] = {}
    meter = farm.processes.cpu_meter()
    try:
        for index in range(args.warmup + args.samples):
            wall, started = time.time(), time.perf_counter()
            answer = session.post(f"{farm.url}/prompt", json={"prompt": prompt(0), "client_id": client_id}, timeout=30)
            posted = time.perf_counter()
            prompt_id = answer.json().get("prompt_id") if answer.status_code == 200 else None
            if not prompt_id:
                raise BenchError(f"POST /prompt answered {answer.status_code}: {answer.text[:500]}")
            start_at, start_wall, start = sock.until(prompt_id, "execution_start", started + 60)
            done_at, _, _ = sock.until(prompt_id, "executing", started + 60)
            if index == args.warmup - 1:
                meter = farm.processes.cpu_meter()
            if index >= args.warmup:
                samples[prompt_id] = {
                    "post_ms": (posted - started) * 1000, "execution_start_ms": (start_at - started) * 1000,
                    "done_ms": (done_at - started) * 1000, "wall": wall * 1000, "start": start["timestamp"],
                    "received": start_wall * 1000}
        cpu = meter.shares()
    finally:
        sock.close()
        farm.stop_workers(workers)
    parts = {part: [] for part in DISPATCH_PARTS}
    for row in farm.prompt_rows(list(samples)):
        sample = samples[row.prompt_id]
        moments = [sample["wall"], ms(row.created_at), ms(row.dispatched_at), ms(row.started_at), sample["start"],
                   sample["received"]]
        for part, (a, b) in zip(DISPATCH_PARTS, zip(moments, moments[1:])):
            parts[part].append(b - a)
    keys = ("execution_start_ms", "post_ms", "done_ms")
    return {key: summary([s[key] for s in samples.values()]) for key in keys} | {
        "parts_ms": {part: summary(values) for part, values in parts.items()}, "samples": len(samples),
        "cpu": cpu}


# the whole run --------------------------------------------------------------------------------
def run_broker(broker: str, args, folder: Path, result: dict) -> None:
    redis_url = args.redis_url
    with contextlib.ExitStack() as stack:
        stack.enter_context(redis_database(redis_url))
        broker_url = redis_url if broker == "redis" else stack.enter_context(rabbitmq_vhost(args.rabbitmq_url))
        database_url = stack.enter_context(database(args.database, args.postgres_url, folder / broker))
        (folder / broker).mkdir(exist_ok=True)
        env = {"FARM_DATABASE_URL": database_url, "FARM_BROKER_URL": broker_url, "FARM_EVENTS_URL": redis_url,
               "FARM_DATA_DIR": str(folder / broker / "data"), "FARM_MODELS_DIR": str(folder / broker / "models"),
               "FARM_NODE_MODULES": "tests.nodepack", "FARM_WORKER_NICE": "0", "FARM_HEARTBEAT_SECONDS": "1"}
        processes = Processes(folder, env)
        stack.callback(processes.stop)
        farm = Farm(processes, broker, database_url)
        farm.start()
        figures = result["brokers"].setdefault(broker, {"scaling": {}, "broker_url": _redact(broker_url)})
        for n in args.workers:
            print(f"bench: {broker}: {n} worker(s), {args.per_worker * n} prompts of {args.sleep_ms} ms",
                  file=sys.stderr)
            figures["scaling"][str(n)] = scaling(farm, n, args)
        print(f"bench: {broker}: dispatch overhead, {args.samples} samples", file=sys.stderr)
        figures["dispatch"] = dispatch_overhead(farm, args)


def _redact(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    netloc = parts.hostname + (f":{parts.port}" if parts.port else "") if parts.hostname else parts.netloc
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def cpu_text(cpu: dict | None) -> str:
    return f"{cpu['farm']:.2f}/{cpu['rest']:.2f}" if cpu else "-"


def print_table(result: dict) -> None:
    out = sys.stderr
    print(f"\n{result['cpus']} CPUs, database {result['database']}; cpu farm/rest: shares of all cores used by the "
          "bench and the farm's\nprocesses / by the rest (database, brokers, and any other work on the machine, which "
          "skews the figures)", file=out)
    per_worker_s = 1000 / result["sleep_ms"]
    print(f"\nscaling: Sleep {result['sleep_ms']} ms prompts; ratio = prompts/s / (N x {per_worker_s:g}/s), "
          "goal >= 0.95;\nratio = in_prompt x busy, busy = 1 - gaps - edges (shares of N x window)", file=out)
    print(f"{'broker':<10}{'N':>3}{'prompts':>8}{'window s':>9}{'per s':>8}{'ideal':>6}{'ratio':>7}{'in_prompt':>10}"
          f"{'busy':>7}{'gaps':>7}{'edges':>7}{'gap p50':>8}{'gap max':>8}{'submit s':>9}{'each':>6}"
          f"{'cpu farm/rest':>15}", file=out)
    for broker, figures in result["brokers"].items():
        for n, row in figures["scaling"].items():
            gap = row["gap_ms"] or {"p50": "-", "max": "-"}
            each = row["per_worker"]
            each = str(each[0]) if min(each) == max(each) else f"{min(each)}-{max(each)}"
            print(f"{broker:<10}{n:>3}{row['prompts']:>8}{row['window_s']:>9}{row['per_s']:>8}{row['ideal_per_s']:>6g}"
                  f"{row['ratio']:>7}{row['in_prompt']:>10}{row['busy']:>7}{row['lost_to_gaps']:>7}"
                  f"{row['lost_to_edges']:>7}{gap['p50']:>8}{gap['max']:>8}{row['submit_s']:>9}{each:>6}"
                  f"{cpu_text(row['cpu']):>15}", file=out)
    print("\ngaps between prompts on one worker, p50 ms: execution_success -> finished_at (record) -> next"
          "\ndispatched_at (to_dispatch) -> started_at (deliver_claim) -> execution_start (to_start)", file=out)
    print(f"{'broker':<10}{'N':>3}{'gap':>8}" + "".join(f"{part:>15}" for part in GAP_PARTS), file=out)
    for broker, figures in result["brokers"].items():
        for n, row in figures["scaling"].items():
            if row["gap_ms"]:
                print(f"{broker:<10}{n:>3}{row['gap_ms']['p50']:>8}"
                      + "".join(f"{row['gap_parts_ms'][part]['p50']:>15}" for part in GAP_PARTS), file=out)
    print("\ndispatch overhead on an idle worker, ms from just before POST /prompt; parts: POST -> created_at"
          "\n(accept) -> dispatched_at -> started_at (claim) -> execution_start -> receipt on the socket (relay)",
          file=out)
    print(f"{'broker':<10}{'measure':<22}{'p50':>9}{'p99':>9}{'mean':>9}{'max':>9}", file=out)
    for broker, figures in result["brokers"].items():
        rows = [(key, figures["dispatch"][key]) for key in ("execution_start_ms", "post_ms", "done_ms")]
        rows += [(f"  part {part}", row) for part, row in figures["dispatch"]["parts_ms"].items()]
        for key, row in rows:
            print(f"{broker:<10}{key:<22}{row['p50']:>9}{row['p99']:>9}{row['mean']:>9}{row['max']:>9}", file=out)
        print(f"{broker:<10}{'cpu farm/rest':<22}{cpu_text(figures['dispatch']['cpu']):>9}", file=out)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--brokers", default="redis,rabbitmq", help="redis and/or rabbitmq (default both)")
    parser.add_argument("--workers", help="worker counts (default 1,2,4,8; --quick 1,2)")
    parser.add_argument("--sleep-ms", type=int, default=200, help="Sleep per scaling prompt (default 200)")
    parser.add_argument("--per-worker", type=int, help="measured prompts per worker (default 12; --quick 4)")
    parser.add_argument("--samples", type=int, help="dispatch-overhead samples (default 100; --quick 10)")
    parser.add_argument("--warmup", type=int, default=3, help="unmeasured dispatch-overhead prompts first (3)")
    parser.add_argument("--database", choices=("postgres", "sqlite"), default="postgres")
    parser.add_argument("--postgres-url", default="postgresql://postgres@127.0.0.1:5432/test",
                        help="server where a throwaway database is created and dropped")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/7",
                        help="Redis database for events (and the Redis broker), flushed at start and end")
    parser.add_argument("--rabbitmq-url", default="amqp://guest:guest@127.0.0.1:5672//",
                        help="RabbitMQ server (a vhost of its own is made when rabbitmqctl can)")
    parser.add_argument("--submit", choices=("live", "queued"), default="live",
                        help="live: post while the workers run (default); queued: post with dispatch paused, then "
                             "resume, so the workers drain a deep queue without sharing the cores with the posting")
    parser.add_argument("--quick", action="store_true", help="a CI-sized run: N 1,2, 4 prompts each, 10 samples")
    parser.add_argument("--keep-logs", action="store_true", help="keep the processes' logs even on success")
    args = parser.parse_args()
    args.workers = [int(n) for n in (args.workers or ("1,2" if args.quick else "1,2,4,8")).split(",")]
    args.per_worker = args.per_worker or (4 if args.quick else 12)
    args.samples = args.samples or (10 if args.quick else 100)
    brokers = [b.strip() for b in args.brokers.split(",") if b.strip()]
    if not brokers or set(brokers) - {"redis", "rabbitmq"} or min(args.workers) < 1 or args.sleep_ms < 1:
        parser.error("--brokers takes redis and/or rabbitmq; --workers and --sleep-ms must be positive")

    sys.path.insert(0, str(ROOT))  # the farm under test (and its tests.nodepack) is the one next to this file
    # SIGTERM ends the run as Ctrl-C does: through the finally blocks that stop and remove everything.
    signal.signal(signal.SIGTERM, _interrupt)
    result = {"bench": "scheduler", "database": args.database, "sleep_ms": args.sleep_ms,
              "per_worker": args.per_worker, "cpus": os.cpu_count(), "python": platform.python_version(),
              "brokers": {}}
    with logs_folder("farm-bench-scheduler-", keep=args.keep_logs) as folder:
        for broker in brokers:
            run_broker(broker, args, folder, result)
    print_table(result)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
