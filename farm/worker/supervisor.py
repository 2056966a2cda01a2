"""`farm worker --gpus`: one pinned worker process per GPU, each restarted when it dies.

Each child runs `farm worker --gpu <id> --name <name>` with the supervisor's settings in its
environment. It has a session of its own, so a terminal's Ctrl-C reaches only the supervisor,
which forwards one SIGTERM to every child: each drains its running prompt, and one still running
after `stop_timeout` is killed. Children die with the supervisor (PR_SET_PDEATHSIG), even when it
is killed. A child that exits while no stop was asked for is started again after a delay that
starts at 1 s and doubles up to 60 s, and starts over once a child stayed up 60 s. Every line a
child writes is passed on prefixed with `[<worker name>] `, on the stream it was written to.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from typing import BinaryIO, Callable, Mapping

from farm.config import Settings, settings_environment
from farm.processes import die_with_parent
from farm.worker.device import GpuId
from farm.worker.main import default_worker_name

log = logging.getLogger("farm.worker.supervisor")

# Past the stop grace a worker puts its prompt back and exits; this covers that and its shutdown.
STOP_MARGIN_SECONDS = 30.0


class Backoff:
    """Restart delays of one child.

    tenacity's wait_exponential computes the same sequence, but from the RetryCallState of a
    call it retries; here the attempts are process lifetimes and the count starts over once a
    child stayed up, so three lines say it more plainly than a faked retry state would.
    """

    def __init__(self, first: float = 1.0, cap: float = 60.0, healthy_after: float = 60.0):
        self.first, self.cap, self.healthy_after = first, cap, healthy_after
        self.failures = 0

    def next_delay(self, ran_seconds: float) -> float:
        """The wait before restarting a child that exited after running `ran_seconds`."""
        if ran_seconds >= self.healthy_after:
            self.failures = 0
        delay = min(self.cap, self.first * 2 ** self.failures)
        self.failures += 1
        return delay


@dataclasses.dataclass
class Child:
    name: str
    argv: list[str]
    backoff: Backoff = dataclasses.field(default_factory=Backoff)
    process: subprocess.Popen | None = None
    started: float = 0.0
    restart_at: float = 0.0
    pumps: list[threading.Thread] = dataclasses.field(default_factory=list)


class Supervisor:
    def __init__(self, children: list[Child], env: Mapping[str, str], stop_timeout: float,
                 stdout: BinaryIO | None = None, stderr: BinaryIO | None = None):
        self.children = children
        # Unbuffered: a child's lines reach the terminal (and its prefix) as they are written.
        self.env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
        self.stop_timeout = stop_timeout
        self.stdout = stdout or sys.stdout.buffer
        self.stderr = stderr or sys.stderr.buffer
        self._output_lock = threading.Lock()
        self._stop = threading.Event()

    def request_stop(self, *_args) -> None:
        self._stop.set()

    def run(self) -> int:
        """Start every child and keep them running until asked to stop; 0 once all stopped."""
        for child in self.children:
            self._spawn(child)
        # Spawning stays on this (main) thread: PR_SET_PDEATHSIG fires when the spawning thread ends.
        while not self._stop.wait(0.1):
            now = time.monotonic()
            for child in self.children:
                if child.process is None:
                    if now >= child.restart_at:
                        self._spawn(child)
                elif child.process.poll() is not None:
                    self._exited(child, now)
        self._stop_children()
        return 0

    def _spawn(self, child: Child) -> None:
        child.process = subprocess.Popen(child.argv, env=self.env, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                         preexec_fn=die_with_parent(), start_new_session=True)
        child.started = time.monotonic()
        prefix = f"[{child.name}] ".encode()
        child.pumps = [
            threading.Thread(target=self._pump, args=(child.process.stdout, self.stdout, prefix), daemon=True),
            threading.Thread(target=self._pump, args=(child.process.stderr, self.stderr, prefix), daemon=True),
        ]
        for pump in child.pumps:
            pump.start()
        log.info("worker %s started (pid %s)", child.name, child.process.pid)

    def _exited(self, child: Child, now: float) -> None:
        code, ran = child.process.returncode, now - child.started
        delay = child.backoff.next_delay(ran)
        log.warning("worker %s %s after %.0f s; restarting in %g s", child.name, _how(code), ran, delay)
        child.process, child.restart_at = None, now + delay

    def _pump(self, stream: BinaryIO, out: BinaryIO, prefix: bytes) -> None:
        for line in iter(stream.readline, b""):
            with self._output_lock:
                try:
                    out.write(prefix + (line if line.endswith(b"\n") else line + b"\n"))
                    out.flush()
                except (OSError, ValueError):
                    pass  # keep reading: a child blocked on a full pipe would stop working
        stream.close()

    def _stop_children(self) -> None:
        running = [c for c in self.children if c.process is not None and c.process.poll() is None]
        for child in running:
            child.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout
        for child in running:
            try:
                child.process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("worker %s did not stop in %.0f s; killing it", child.name, self.stop_timeout)
                child.process.kill()
                child.process.wait()
        for child in self.children:
            for pump in child.pumps:
                pump.join(timeout=5)  # the children's last lines, before this process exits


def _how(code: int) -> str:
    if code >= 0:
        return f"exited with code {code}"
    try:
        return f"was killed by {signal.Signals(-code).name}"
    except ValueError:
        return f"was killed by signal {-code}"


def worker_command(gpu: GpuId | None, name: str) -> list[str]:
    device = ["--cpu"] if gpu is None else ["--gpu", gpu]
    return [sys.executable, "-m", "farm.cli", "worker", *device, "--name", name]


def supervise_gpus(settings: Settings, gpus: list[GpuId | None], base_name: str | None = None,
                   command: Callable[[GpuId | None, str], list[str]] = worker_command,
                   stop_timeout: float | None = None, names: list[str] | None = None) -> int:
    """Run one worker per GPU in `gpus` (None: the CPU) until SIGTERM or SIGINT; `command` builds
    each child's argv; `names` overrides the default names.

    A child still running `stop_timeout` seconds after the SIGTERM (default: the stop grace plus
    a margin) is killed."""
    names = names or [default_worker_name(gpu, base_name) for gpu in gpus]
    children = [Child(name, command(gpu, name)) for gpu, name in zip(gpus, names)]
    if stop_timeout is None:
        stop_timeout = settings.stop_grace_seconds + STOP_MARGIN_SECONDS
    supervisor = Supervisor(children, settings_environment(settings), stop_timeout)
    signal.signal(signal.SIGTERM, supervisor.request_stop)
    signal.signal(signal.SIGINT, supervisor.request_stop)
    return supervisor.run()
