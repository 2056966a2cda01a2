"""Running the real farm (`farm up`, `farm web`, `farm worker`) as subprocesses in tests."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class FarmProcess:
    """One farm command as a subprocess, with its log in a file for failure reports.

    With `stdout_path`, its stdout goes to that file and only stderr to the log."""

    def __init__(self, args: list[str], env: dict, log_path: Path, port: int | None = None,
                 stdout_path: Path | None = None):
        self.args = args
        self.port = port
        self.log_path = log_path
        self.log = open(log_path, "ab")
        self.stdout_path = stdout_path
        stdout = open(stdout_path, "ab") if stdout_path else self.log
        clean = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")}
        self.process = subprocess.Popen([sys.executable, "-m", "farm.cli", *args], env={**clean, **env},
                                        stdout=stdout, stderr=self.log if stdout_path else subprocess.STDOUT)
        if stdout_path:
            stdout.close()  # the child holds its own copy

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"{self.args} exited with {self.process.returncode}:\n{self.output()}")
            try:
                if requests.get(self.url + "/system_stats", timeout=1).status_code in (200, 401):  # 401: auth on
                    return
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise AssertionError(f"{self.args} not ready in {timeout} s:\n{self.output()}")

    def send(self, sig=signal.SIGTERM) -> None:
        """Send `sig` without waiting: several processes stop side by side, then `stop(None)` each."""
        if self.process.poll() is None:
            self.process.send_signal(sig)

    def output(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return self.log_path.read_text(errors="replace")[-6000:]

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def wait_stdout(self, text: str, timeout: float = 90) -> str:
        """The stdout so far, once it contains `text`."""
        deadline = time.monotonic() + timeout
        while text not in self.stdout():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"no {text!r} on {self.args}'s stdout:\n{self.stdout()}\n{self.output()}")
            time.sleep(0.1)
        return self.stdout()

    def stop(self, sig=signal.SIGTERM, timeout: float = 60) -> int:
        """Send `sig` (None: it was sent already, see `send`) and wait for the exit code."""
        if sig is not None:
            self.send(sig)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"{self.args} did not stop within {timeout} s:\n{self.output()}")
        finally:
            self.log.close()


def stop_all(processes) -> list[int]:
    """SIGTERM to every process at once, then their exit codes: they stop side by side."""
    for process in processes:
        process.send(signal.SIGTERM)
    return [process.stop(None) for process in processes]


def farm_env(data_dir: Path, **urls) -> dict:
    env = {"FARM_DATA_DIR": str(data_dir), "FARM_MODELS_DIR": str(data_dir / "models"),
           "FARM_HEARTBEAT_SECONDS": "0.5", "FARM_WORKER_TIMEOUT_SECONDS": "5"}
    for key, value in urls.items():
        if value:
            env[f"FARM_{key.upper()}"] = value
    return env


def start_farm_up(data_dir: Path, flags: tuple[str, ...] = ("--cpu",), env: dict | None = None,
                  **urls) -> FarmProcess:
    port = free_port()
    log = data_dir.parent / f"farm-up-{port}.log"
    return FarmProcess(["up", *flags, "--port", str(port)], {**farm_env(data_dir, **urls), **(env or {})},
                       log, port, stdout_path=log.with_suffix(".stdout"))


@contextlib.contextmanager
def farm_up(data_dir: Path, flags: tuple[str, ...] = ("--cpu",), env: dict | None = None, **urls):
    """`farm up --cpu` (or `flags`) on a free port; stopped with SIGTERM at the end (and checked to exit 0)."""
    farm = start_farm_up(data_dir, flags, env, **urls)
    try:
        farm.wait_ready()
        yield farm
    finally:
        code = farm.stop()
    assert code == 0, farm.output()


def wait_history(url: str, prompt_id: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = requests.get(f"{url}/history/{prompt_id}", timeout=5).json()
        if body:
            return body[prompt_id]
        time.sleep(0.05)
    raise AssertionError(f"{prompt_id} not in history after {timeout} s; queue: {requests.get(url + '/queue').json()}")


def children_of(pid: int) -> list[int]:
    """Every live descendant of `pid` (Linux /proc)."""
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        for task in Path("/proc").glob("[0-9]*"):
            try:
                if int((task / "stat").read_text().split(") ", 1)[1].split()[1]) == parent:
                    found.append(int(task.name))
                    frontier.append(int(task.name))
            except (OSError, IndexError, ValueError):
                continue
    return found
