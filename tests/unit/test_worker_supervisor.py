"""`farm worker --gpus`'s supervisor, driving stand-in workers (`python -c`) instead of Celery ones.

Each stand-in records its pid in `<markers>/<name>.pids`, greets on stdout and stderr, and on
SIGTERM "drains" (or, when stubborn, ignores it), so the tests see restarts, prefixes, forwarding.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

CHILD = r"""
import os, signal, sys, time
name, gpu, markers, mode = sys.argv[1:5]

def drain(*_):
    print("draining", flush=True)
    time.sleep(0.3)
    print("drained", end="", flush=True)  # no newline: the supervisor still ends the line
    sys.exit(0)

signal.signal(signal.SIGTERM, signal.SIG_IGN if mode == "stubborn" else drain)
print(f"hello from {name} gpu={gpu} tags={os.environ.get('FARM_WORKER_TAGS')}", flush=True)
print(f"a warning from {name}", file=sys.stderr, flush=True)
with open(os.path.join(markers, name + ".pids"), "a") as handle:
    handle.write(f"{os.getpid()}\n")
while True:
    time.sleep(0.05)
"""

SUPERVISOR = r"""
import sys
from farm.config import load_settings
from farm.worker.supervisor import supervise_gpus

child, markers, stop_timeout = sys.argv[1], sys.argv[2], float(sys.argv[3])
modes = dict(entry.split("=") for entry in sys.argv[4:])
settings = load_settings(env={}, worker_tags=("sdxl", "fast"))
command = lambda gpu, name: [sys.executable, "-c", child, name, gpu, markers, modes.get(gpu, "drain")]
sys.exit(supervise_gpus(settings, ["0", "1"], base_name="rack1", command=command, stop_timeout=stop_timeout))
"""


class Run:
    """The supervisor as a subprocess, its stdout and stderr in files."""

    def __init__(self, tmp_path: Path, stop_timeout: float = 20, **modes: str):
        self.markers = tmp_path / "markers"
        self.markers.mkdir()
        self.out, self.err = tmp_path / "out.txt", tmp_path / "err.txt"
        with open(self.out, "wb") as out, open(self.err, "wb") as err:
            self.process = subprocess.Popen(
                [sys.executable, "-c", SUPERVISOR, CHILD, str(self.markers), str(stop_timeout),
                 *(f"{gpu.removeprefix('gpu')}={mode}" for gpu, mode in modes.items())],
                stdout=out, stderr=err)

    def pids(self, name: str) -> list[int]:
        path = self.markers / f"{name}.pids"
        return [int(line) for line in path.read_text().split()] if path.exists() else []

    def wait_pids(self, name: str, count: int, timeout: float = 30) -> list[int]:
        deadline = time.monotonic() + timeout
        while len(self.pids(name)) < count:
            assert time.monotonic() < deadline, f"{name} not started {count} times:\n{self.err.read_text()}"
            time.sleep(0.02)
        return self.pids(name)

    def all_pids(self) -> list[int]:
        return self.pids("rack1-gpu0") + self.pids("rack1-gpu1")


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def wait_dead(pids: list[int], timeout: float = 15) -> list[int]:
    deadline = time.monotonic() + timeout
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return [pid for pid in pids if alive(pid)]


def test_a_killed_worker_is_restarted_with_backoff_and_sigterm_drains_every_worker(tmp_path):
    run = Run(tmp_path)
    try:
        first = run.wait_pids("rack1-gpu0", 1)[0]
        run.wait_pids("rack1-gpu1", 1)
        os.kill(first, signal.SIGKILL)
        killed_at = time.monotonic()
        second = run.wait_pids("rack1-gpu0", 2)[1]
        first_wait = time.monotonic() - killed_at
        os.kill(second, signal.SIGKILL)
        killed_at = time.monotonic()
        run.wait_pids("rack1-gpu0", 3)
        second_wait = time.monotonic() - killed_at
        run.process.send_signal(signal.SIGTERM)
        assert run.process.wait(30) == 0
    finally:
        if run.process.poll() is None:
            run.process.kill()
    # Lower bounds only: the supervisor sleeps at least its backoff before a restart.
    assert first_wait >= 0.9 and second_wait >= 1.9
    assert len(run.pids("rack1-gpu1")) == 1  # its neighbour's death left it alone
    assert wait_dead(run.all_pids()) == []
    errors = run.err.read_text()
    restarts = re.findall(r"worker rack1-gpu0 was killed by SIGKILL after \d+ s; restarting in (\d+) s", errors)
    assert restarts == ["1", "2"], errors
    stderr_lines = [line for line in errors.splitlines() if "a warning from" in line]
    assert sorted(stderr_lines) == ["[rack1-gpu0] a warning from rack1-gpu0"] * 3 + [
        "[rack1-gpu1] a warning from rack1-gpu1"]
    # Every line a child wrote, and nothing else, prefixed with its worker's name; both drained.
    assert sorted(run.out.read_text().splitlines()) == sorted(
        ["[rack1-gpu0] hello from rack1-gpu0 gpu=0 tags=sdxl,fast"] * 3
        + ["[rack1-gpu1] hello from rack1-gpu1 gpu=1 tags=sdxl,fast"]
        + ["[rack1-gpu0] draining", "[rack1-gpu0] drained", "[rack1-gpu1] draining", "[rack1-gpu1] drained"])


def test_a_worker_that_does_not_stop_in_time_is_killed(tmp_path):
    run = Run(tmp_path, stop_timeout=1, gpu1="stubborn")
    try:
        run.wait_pids("rack1-gpu0", 1)
        stubborn = run.wait_pids("rack1-gpu1", 1)[0]
        run.process.send_signal(signal.SIGINT)  # Ctrl-C: forwarded as SIGTERM
        assert run.process.wait(30) == 0
    finally:
        if run.process.poll() is None:
            run.process.kill()
    assert not alive(stubborn)
    assert "worker rack1-gpu1 did not stop in 1 s; killing it" in run.err.read_text()
    assert "[rack1-gpu0] drained" in run.out.read_text().splitlines()


def test_workers_die_with_a_killed_supervisor(tmp_path):
    run = Run(tmp_path)
    try:
        run.wait_pids("rack1-gpu0", 1)
        run.wait_pids("rack1-gpu1", 1)
        run.process.kill()
        run.process.wait(10)
    finally:
        if run.process.poll() is None:
            run.process.kill()
    assert wait_dead(run.all_pids()) == []
