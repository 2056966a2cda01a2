"""Where an accepted prompt's CPU goes on `farm up --cpu`, and what the running worker costs the
accept rate (issue 14's accept-rate goal).

Starts `farm up --cpu` in a temporary folder (bench/overhead.py's start_farm), then for each
client count in `--clients` runs bench/overhead.py's accept phase (workflow A, `--seconds`) twice:
with the worker executing what is accepted, as in bench/overhead.py, and with the worker process
stopped (SIGSTOP) so that only the accept path runs; the queue is drained between phases. For
each phase: accepted per second and, from /proc, the CPU milliseconds per accepted prompt of each
process (web, worker, the embedded Redis, this client). The ratio of the two rates in one run is
what the executing worker takes from accepting. Linux only (/proc). Prints one JSON line on
stdout and a table on stderr:

    .venv/bin/python bench/accept_cpu.py [--clients 1,8] [--seconds 8]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import overhead  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def descendants(pid: int) -> list[int]:
    found, frontier = [], [pid]
    while frontier:
        current = frontier.pop()
        try:
            tasks = os.listdir(f"/proc/{current}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                with open(f"/proc/{current}/task/{task}/children") as children:
                    kids = [int(child) for child in children.read().split()]
            except OSError:
                continue
            found += kids
            frontier += kids
    return found


def farm_processes(root: int) -> dict[str, list[int]]:
    """The processes `farm up` (pid `root`) started, by role: web, worker (the executing child of
    `farm worker`'s supervisor), the embedded Redis."""
    roles: dict[str, list[int]] = {"web": [], "worker": [], "redis": []}
    for pid in descendants(root):
        try:
            with open(f"/proc/{pid}/cmdline") as cmdline:
                command = cmdline.read().replace("\0", " ")
        except OSError:
            continue
        if "farm.cli web" in command:
            roles["web"].append(pid)
        elif "farm.cli worker" in command and "--name" in command:
            roles["worker"].append(pid)
        elif "redis-server" in command:
            roles["redis"].append(pid)
    return roles


def phase(url: str, roles: dict[str, list[int]], clients: int, seconds: float) -> dict:
    watched = {**roles, "client": [os.getpid()]}
    before = {role: sum(cpu_seconds(pid) for pid in pids) for role, pids in watched.items()}
    result = overhead.accept_rate(url, overhead.workflow_a, clients, seconds)
    after = {role: sum(cpu_seconds(pid) for pid in pids) for role, pids in watched.items()}
    per_prompt = {role: round((after[role] - before[role]) * 1000 / result["accepted"], 3) for role in watched}
    return {"per_s": result["per_s"], "errors": result["errors"], "cpu_ms_per_prompt": per_prompt}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", default="1,8", help="client threads per phase, comma-separated (default 1,8)")
    parser.add_argument("--seconds", type=float, default=8.0, help="seconds per phase (default 8)")
    args = parser.parse_args()
    folder = tempfile.mkdtemp(prefix="farm-bench-accept-")
    process, url, log = overhead.start_farm(folder)
    results: dict[str, dict] = {}
    worker_stopped: list[int] = []
    try:
        roles = farm_processes(process.pid)
        overhead.accept_rate(url, overhead.workflow_a, 1, 2)  # warm-up
        overhead.drain(url, 300)
        for clients in (int(text) for text in args.clients.split(",")):
            running = phase(url, roles, clients, args.seconds)
            overhead.drain(url, 600)
            for pid in roles["worker"]:
                os.kill(pid, signal.SIGSTOP)
                worker_stopped.append(pid)
            stopped = phase(url, roles, clients, args.seconds)
            for pid in worker_stopped:
                os.kill(pid, signal.SIGCONT)
            worker_stopped.clear()
            overhead.drain(url, 600)
            results[str(clients)] = {"worker_running": running, "worker_stopped": stopped,
                                     "ratio": round(running["per_s"] / stopped["per_s"], 3)}
    finally:
        for pid in worker_stopped:  # never leave a stopped process behind
            os.kill(pid, signal.SIGCONT)
        overhead.stop_farm(process, log)
    print(f"{'clients':>7} {'worker':>8} {'per_s':>8}  cpu ms per accepted prompt", file=sys.stderr)
    for clients, both in results.items():
        for label in ("worker_running", "worker_stopped"):
            found = both[label]
            shares = "  ".join(f"{role} {ms:.3f}" for role, ms in found["cpu_ms_per_prompt"].items())
            print(f"{clients:>7} {label.split('_')[1]:>8} {found['per_s']:>8}  {shares}", file=sys.stderr)
        print(f"{clients:>7} running / stopped = {both['ratio']}", file=sys.stderr)
    print(json.dumps({"bench": "accept_cpu", "seconds": args.seconds, "cpus": os.cpu_count(),
                      "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "clients": results}))


if __name__ == "__main__":
    main()
