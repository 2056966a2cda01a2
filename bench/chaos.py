"""Chaos (issue 14), one bounded command: a load of `--prompts` prompts while workers are killed with
SIGKILL, Redis and PostgreSQL are restarted and the output storage fills up; then every accepted
prompt must end in exactly one terminal state, with a clear status.

The farm runs on services of its own, so nothing else on the machine is disturbed: a throwaway
PostgreSQL server and Redis server (tests/services.py), and an output folder that is a tmpfs of
`--storage-mb` MB (mounting needs root; without it the storage fault is skipped, and said). Two
`farm web` processes and `--workers` CPU workers; each prompt is EmptyImage -> ImageInvert ->
SaveImage with the prefix `chaos/<index>`, so its files tell how often it ran.

Clients behave as the README asks a script to: a connection error or a 5xx is retried with the
same prompt_id and body (idempotent), up to 30 s; a prompt counts as accepted once answered 200.

Faults, at seconds after the load starts (`--spacing` apart): SIGKILL a worker (a new one starts),
restart Redis (down `--outage` s), restart PostgreSQL (down `--outage` s), fill the output tmpfs for
`--outage` s (the prompts that find it full go back to the queue and their workers wait, so they
succeed once it has room again), SIGKILL another worker. Then the script waits (at most `--drain-timeout`) until every
accepted prompt is in a terminal state, and prints what it did and what it found: states, errors by
exception type, prompts that ran twice or ended with no state, the clients' refusals. Exit code 1
if an accepted prompt was lost, ran twice or never ended.

    .venv/bin/python bench/chaos.py                        # 2,000 prompts, about 4 minutes on 2 cores
    .venv/bin/python bench/chaos.py --prompts 300 --spacing 3 --outage 2   # the short version
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import signal
import sys
import threading
import time
import uuid
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from farm_cluster import BenchError, Farm, Processes, logs_folder  # noqa: E402
from tests.services import ThrowawayPostgres, ThrowawayRedis, fill, small_storage  # noqa: E402

TERMINAL = ("success", "error", "interrupted", "cancelled")


def workflow(index: int) -> dict:
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1,
                                                     "color": (index * 2654435761) % 0xFFFFFF}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": f"chaos/{index}"}},
    }


def log(started: float, text: str) -> None:
    print(f"[{time.monotonic() - started:6.1f} s] {text}", file=sys.stderr, flush=True)


class Clients:
    """`clients` threads post prompts 0..count-1 at `rate`/s, retrying failures with the same id."""

    def __init__(self, url: str, count: int, rate: float, clients: int, retry_for: float = 30.0):
        self.url, self.count, self.rate, self.clients, self.retry_for = url, count, rate, clients, retry_for
        self.next, self.lock = 0, threading.Lock()
        self.accepted: dict[int, str] = {}
        self.refused: collections.Counter = collections.Counter()
        self.retries = 0
        self.started = 0.0

    def _take(self):
        with self.lock:
            if self.next >= self.count:
                return None
            self.next += 1
            return self.next - 1

    def _post(self, session: requests.Session, index: int) -> None:
        body = {"prompt": workflow(index), "client_id": "chaos", "prompt_id": str(uuid.uuid4())}
        give_up = time.monotonic() + self.retry_for
        while True:
            try:
                answer = session.post(f"{self.url}/prompt", json=body, timeout=30)
                if answer.status_code == 200:
                    with self.lock:
                        self.accepted[index] = body["prompt_id"]
                    return
                outcome = f"HTTP {answer.status_code} {(answer.json().get('error') or {}).get('type', '')}".strip()
                if answer.status_code < 500:
                    with self.lock:
                        self.refused[outcome] += 1
                    return
            except (requests.RequestException, ValueError) as error:
                outcome = type(error).__name__
            if time.monotonic() > give_up:
                with self.lock:
                    self.refused[f"gave up after {self.retry_for:.0f} s: {outcome}"] += 1
                return
            with self.lock:
                self.retries += 1
            time.sleep(0.5)

    def _client(self) -> None:
        session = requests.Session()
        while (index := self._take()) is not None:
            delay = self.started + index / self.rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            self._post(session, index)

    def start(self) -> list[threading.Thread]:
        self.started = time.monotonic()
        threads = [threading.Thread(target=self._client, daemon=True) for _ in range(self.clients)]
        for thread in threads:
            thread.start()
        return threads


def terminal_states(database_url: str, ids: list[str]) -> dict[str, tuple[str, dict | None]]:
    from sqlalchemy import create_engine, select

    from farm.db.models import Prompt

    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(select(Prompt.prompt_id, Prompt.state, Prompt.execution_error)
                                      .where(Prompt.prompt_id.in_(ids))).all()
        return {row.prompt_id: (row.state, row.execution_error) for row in rows}
    finally:
        engine.dispose()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=40)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--spacing", type=float, default=8.0)
    parser.add_argument("--outage", type=float, default=4.0)
    parser.add_argument("--storage-mb", type=int, default=8)
    parser.add_argument("--drain-timeout", type=float, default=600)
    parser.add_argument("--keep-logs", action="store_true")
    args = parser.parse_args()

    with logs_folder("farm-chaos-", args.keep_logs) as folder, \
            small_storage(folder / "data" / "output", args.storage_mb) as storage_limited:
        postgres, redis = ThrowawayPostgres(), ThrowawayRedis(folder / "redis")
        env = {"FARM_DATABASE_URL": postgres.url, "FARM_BROKER_URL": redis.url, "FARM_EVENTS_URL": redis.url,
               "FARM_DATA_DIR": str(folder / "data"), "FARM_MODELS_DIR": str(folder / "models"),
               "FARM_WEB_PROCESSES": "2", "FARM_HEARTBEAT_SECONDS": "1", "FARM_WORKER_TIMEOUT_SECONDS": "6",
               "FARM_DISPATCH_TIMEOUT_SECONDS": "10"}
        processes = Processes(folder, env)
        try:
            farm = Farm(processes, "chaos", postgres.url)
            farm.start()
            workers = farm.start_workers(args.workers)
            began = time.monotonic()
            clients = Clients(farm.url, args.prompts, args.rate, args.clients)
            threads = clients.start()
            did: list[str] = []

            def at(moment: float) -> None:
                time.sleep(max(0.0, began + moment - time.monotonic()))

            def kill_worker(which: int) -> None:
                victim = workers[which % len(workers)]
                os.killpg(victim.pid, signal.SIGKILL)
                victim.wait()
                for entry in [entry for entry in processes.running if entry[0] is victim]:
                    entry[1].close()  # its log
                    processes.running.remove(entry)  # so check_alive does not count it as a failure
                farm.generation += 1
                workers[which % len(workers)] = processes.start(
                    f"chaos-worker-replacement-{farm.generation}", "worker", "--cpu", "--name",
                    f"chaos-replacement-{farm.generation}")
                did.append(f"SIGKILL worker pid {victim.pid}, started a replacement")
                log(began, did[-1])

            def restart(service, name: str, note: str = "") -> None:
                service.stop()
                log(began, f"{name} stopped")
                time.sleep(args.outage)
                service.start()
                did.append(f"restarted {name} (down {args.outage:.0f} s{note})")
                log(began, did[-1])

            at(args.spacing)
            kill_worker(0)
            at(2 * args.spacing)
            restart(redis, "Redis", ", nothing kept")
            at(3 * args.spacing)
            restart(postgres, "PostgreSQL")
            at(4 * args.spacing)
            if storage_limited:
                filler = fill(folder / "data" / "output")
                log(began, f"output storage full ({args.storage_mb} MB tmpfs)")
                time.sleep(args.outage)
                filler.unlink()
                did.append(f"filled the output storage for {args.outage:.0f} s")
            else:
                did.append("storage fault skipped: could not mount a tmpfs (needs root)")
            log(began, did[-1])
            at(5 * args.spacing)
            kill_worker(1)
            for thread in threads:
                thread.join()
            log(began, f"load done: {len(clients.accepted)} accepted, refused {dict(clients.refused)}, "
                       f"{clients.retries} retries")

            ids = list(clients.accepted.values())
            deadline = time.monotonic() + args.drain_timeout
            while True:
                with contextlib.suppress(Exception):
                    found = terminal_states(postgres.url, ids)
                    if sum(state in TERMINAL for state, _ in found.values()) == len(ids):
                        break
                if time.monotonic() > deadline:
                    break
                time.sleep(2)
            log(began, "drained" if time.monotonic() <= deadline else "drain timed out")
            runs = collections.Counter(int(path.name.split("_")[0])
                                       for path in (folder / "data" / "output" / "chaos").glob("*_*_.png"))
        finally:
            processes.stop()
            postgres.close()
            redis.close()

    states = collections.Counter(state for state, _ in found.values())
    errors = collections.Counter(
        f"{(error or {}).get('exception_type', '?')}: {((error or {}).get('exception_message') or '').strip()[:80]}"
        for state, error in found.values() if state == "error")
    missing = [prompt_id for prompt_id in ids if prompt_id not in found]
    unended = [prompt_id for prompt_id, (state, _) in found.items() if state not in TERMINAL]
    index_of = {prompt_id: index for index, prompt_id in clients.accepted.items()}
    ran_twice = sorted(index for index, n in runs.items() if n > 1)
    success_without_output = [index_of[p] for p, (state, _) in found.items() if state == "success" and not runs[index_of[p]]]
    result = {"did": did, "accepted": len(ids), "refused": dict(clients.refused), "client_retries": clients.retries,
              "states": dict(states), "errors": dict(errors.most_common(10)), "lost": len(missing),
              "never_ended": len(unended), "ran_twice": ran_twice, "success_without_output": success_without_output}
    print(f"did: {'; '.join(did)}", file=sys.stderr)
    print(f"found: {len(ids)} accepted -> {dict(states)}; lost {len(missing)}, never ended {len(unended)}, "
          f"ran twice {len(ran_twice)}, success without output {len(success_without_output)}", file=sys.stderr)
    for text, n in errors.most_common(10):
        print(f"  error x{n}: {text}", file=sys.stderr)
    print(json.dumps(result))
    bad = missing or unended or ran_twice or success_without_output
    return 1 if bad else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as error:
        print(f"chaos: {error}", file=sys.stderr)
        sys.exit(1)
