"""Load (issue 14): `--prompts` prompts at `--rate` per second from `--clients` client threads against
two `farm web` processes on PostgreSQL + Redis, with `--workers` CPU workers running a short graph.

Every prompt is EmptyImage (8x8, its own colour) -> ImageInvert -> SaveImage with the prefix
`load/<index>`, so its output files tell how many times it ran: exactly one `load/<index>_00001_.png`
and no `_00002_` means once. Submissions follow a schedule (prompt k is posted at start + k/rate by
whichever thread is free; a thread never sleeps to catch up, it posts late), each over a keep-alive
connection. Reported: the achieved accept rate, submit latency p50/p99/max, errors (non-200 answers
and connection failures, by kind), the drain time until every accepted prompt reached a terminal
state, the terminal states, prompts that ran more than once or never, the CPU shares, and the write transactions per prompt (PostgreSQL transaction ids taken over the
run, divided by the prompts; the farm's heartbeats and reaper rounds count too).
The cluster (bench/farm_cluster.py) is removed at the end. A table goes to stderr and ONE JSON line
to stdout.

    .venv/bin/python bench/load.py                                  # 10,000 at 500/s, 32 clients, 4 workers
    .venv/bin/python bench/load.py --prompts 1000 --rate 200 --workers 2   # a quick look
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import sys
import threading
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))

from farm_cluster import BenchError, logs_folder, web_farm  # noqa: E402

TERMINAL = ("success", "error", "interrupted", "cancelled")


def workflow(index: int) -> dict:
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1,
                                                     "color": (index * 2654435761) % 0xFFFFFF}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": f"load/{index}"}},
    }


class Load:
    """Posts prompts 0..count-1 on a schedule from `clients` threads; records each answer."""

    def __init__(self, url: str, count: int, rate: float, clients: int):
        self.url, self.count, self.rate, self.clients = url, count, rate, clients
        self.next = 0
        self.lock = threading.Lock()
        self.accepted: dict[int, str] = {}
        self.latencies: list[float] = []
        self.errors: collections.Counter = collections.Counter()
        self.started = 0.0
        self.finished = 0.0

    def _take(self) -> int | None:
        with self.lock:
            if self.next >= self.count:
                return None
            self.next += 1
            return self.next - 1

    def _client(self) -> None:
        session = requests.Session()
        while (index := self._take()) is not None:
            delay = self.started + index / self.rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            began = time.perf_counter()
            try:
                answer = session.post(f"{self.url}/prompt", json={"prompt": workflow(index), "client_id": "load"},
                                      timeout=60)
            except requests.RequestException as error:
                with self.lock:
                    self.errors[type(error).__name__] += 1
                continue
            elapsed = (time.perf_counter() - began) * 1000
            with self.lock:
                if answer.status_code == 200:
                    self.accepted[index] = answer.json()["prompt_id"]
                    self.latencies.append(elapsed)
                else:
                    self.errors[f"HTTP {answer.status_code}"] += 1

    def run(self) -> None:
        threads = [threading.Thread(target=self._client, daemon=True) for _ in range(self.clients)]
        self.started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        self.finished = time.perf_counter()


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(len(ordered) * share))], 2) if ordered else 0.0


def states_of(database_url: str, ids: list[str]) -> dict[str, str]:
    from sqlalchemy import create_engine, select

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from farm.db.models import Prompt

    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            found: dict[str, str] = {}
            for start in range(0, len(ids), 5000):
                found.update(connection.execute(select(Prompt.prompt_id, Prompt.state)
                                                .where(Prompt.prompt_id.in_(ids[start:start + 5000]))).all())
            return found
    finally:
        engine.dispose()


def xid(database_url: str) -> int:
    """PostgreSQL's next transaction id: only transactions that write take one, so the difference
    over a run counts the farm's write transactions (heartbeats and reaper rounds included)."""
    from sqlalchemy import create_engine, text

    engine = create_engine(database_url)
    try:
        with engine.begin() as connection:
            return int(connection.execute(text("SELECT txid_current()")).scalar_one())
    finally:
        engine.dispose()


def runs_per_prompt(output_dir: Path, count: int) -> collections.Counter:
    """How many output files each prompt index left (one per run)."""
    runs: collections.Counter = collections.Counter()
    for path in (output_dir / "load").glob("*_*_.png"):
        runs[int(path.name.split("_")[0])] += 1
    return runs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=10_000)
    parser.add_argument("--rate", type=float, default=500)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--drain-timeout", type=float, default=1200)
    parser.add_argument("--postgres-url", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/11")
    parser.add_argument("--keep-logs", action="store_true")
    args = parser.parse_args()

    with logs_folder("farm-load-", args.keep_logs) as folder:
        with web_farm(folder, "load", args.postgres_url, args.redis_url, web_processes=2) as (farm, database_url, env):
            farm.start_workers(args.workers)
            meter = farm.processes.cpu_meter()
            first_xid = xid(database_url)
            load = Load(farm.url, args.prompts, args.rate, args.clients)
            load.run()
            submit_seconds = load.finished - load.started
            ids = list(load.accepted.values())
            deadline = time.monotonic() + args.drain_timeout
            while True:
                states = states_of(database_url, ids)
                if sum(state in TERMINAL for state in states.values()) == len(ids):
                    break
                if time.monotonic() > deadline:
                    raise BenchError(f"{len(ids) - sum(s in TERMINAL for s in states.values())} prompts not ended "
                                     f"after {args.drain_timeout:.0f} s")
                farm.processes.check_alive()
                time.sleep(1)
            drain_seconds = time.perf_counter() - load.finished
            writes = xid(database_url) - first_xid - 1
            cpu = meter.shares()
            runs = runs_per_prompt(Path(env["FARM_DATA_DIR"]) / "output", args.prompts)

    succeeded = [index for index in load.accepted if states.get(load.accepted[index]) == "success"]
    result = {
        "prompts": args.prompts, "rate_asked": args.rate, "clients": args.clients, "workers": args.workers,
        "accepted": len(load.accepted), "errors": dict(load.errors), "error_count": sum(load.errors.values()),
        "accept_per_s": round(len(load.accepted) / submit_seconds, 1),
        "submit_ms": {"p50": round(statistics.median(load.latencies), 2) if load.latencies else None,
                      "p99": percentile(load.latencies, 0.99), "max": percentile(load.latencies, 1.0)},
        "drain_s_after_last_submit": round(drain_seconds, 1),
        "write_transactions_per_prompt": round(writes / max(1, len(load.accepted)), 2),
        "states": dict(collections.Counter(states.values())),
        "ran_twice": sorted(index for index, n in runs.items() if n > 1),
        "success_without_output": sorted(index for index in succeeded if runs[index] == 0),
        "cpu_shares": cpu,
    }
    print(f"accepted {result['accepted']:,}/{args.prompts:,} at {result['accept_per_s']}/s "
          f"(asked {args.rate:.0f}/s), errors {result['error_count']} {result['errors'] or ''}", file=sys.stderr)
    print(f"submit ms p50 {result['submit_ms']['p50']} p99 {result['submit_ms']['p99']} max {result['submit_ms']['max']}",
          file=sys.stderr)
    print(f"all ended {result['drain_s_after_last_submit']} s after the last submit: {result['states']}; "
          f"ran twice: {len(result['ran_twice'])}; success without output: {len(result['success_without_output'])}; "
          f"cpu {cpu}; write transactions per prompt {result['write_transactions_per_prompt']}", file=sys.stderr)
    print(json.dumps(result))
    return 0 if not result["ran_twice"] and not result["success_without_output"] else 1


if __name__ == "__main__":
    sys.exit(main())
