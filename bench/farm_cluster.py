"""A throwaway farm cluster for benchmarks: real `farm` processes on their own PostgreSQL (or
SQLite) database, Redis database and RabbitMQ vhost, every one of them removed afterwards.

`Processes` starts each farm command in its own session (Ctrl-C reaches only the bench, which
then stops them in order) with its log in a folder; `Farm` is one web process and the sets of
workers a bench starts and stops on it. The farm that runs is the checkout this file is in.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import uuid
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent


class BenchError(Exception):
    """A failure of the farm or of the set-up, reported with the logs' folder."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def first_traceback(folder: Path) -> str | None:
    """The first Python traceback in the logs (file, innermost frame, exception): a hint on failure."""
    for log in sorted(folder.glob("*.log")):
        lines = log.read_text(errors="replace").splitlines()
        for index, line in enumerate(lines):
            if line.startswith("Traceback"):
                rest = lines[index + 1:]
                end = next((i for i, text in enumerate(rest) if text.strip() and not text.startswith(" ")), len(rest))
                frames = [text.strip() for text in rest[:end] if text.startswith("  File ")]
                exception = rest[end] if end < len(rest) else ""
                return f"{log.name}, line {index + 1}: {frames[-1] if frames else ''}: {exception}"
    return None


@contextlib.contextmanager
def logs_folder(prefix: str, keep: bool = False):
    """A temporary folder for a bench's process logs. On success it is removed (unless `keep`); on a
    BenchError or Ctrl-C the failure and the first traceback in the logs are printed, the folder is
    kept and printed, and the bench exits with code 1."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    ok = False
    try:
        yield folder
        ok = True
    except (BenchError, requests.RequestException) as error:
        print(f"bench: FAILED: {error}", file=sys.stderr)
        hint = first_traceback(folder)
        if hint:
            print(f"bench: first traceback in the logs: {hint}", file=sys.stderr)
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
    finally:
        if ok and not keep:
            shutil.rmtree(folder, ignore_errors=True)
        else:
            print(f"bench: the processes' logs are in {folder}", file=sys.stderr)
    if not ok:
        sys.exit(1)


@contextlib.contextmanager
def web_farm(folder: Path, label: str, postgres_url: str, redis_url: str, **settings):
    """One `farm web` (no workers) on a throwaway PostgreSQL database and a flushed Redis database
    (broker and events), settings given as FARM_* values; yields (farm, database URL, environment)
    and stops the processes at the end."""
    with postgres_database(postgres_url) as database_url, redis_database(redis_url) as redis:
        env = {"FARM_DATABASE_URL": database_url, "FARM_BROKER_URL": redis, "FARM_EVENTS_URL": redis,
               "FARM_DATA_DIR": str(folder / label / "data"), "FARM_MODELS_DIR": str(folder / "models"),
               **{f"FARM_{key.upper()}": str(value) for key, value in settings.items()}}
        processes = Processes(folder, env)
        try:
            farm = Farm(processes, label, database_url)
            farm.start()
            yield farm, database_url, env
        finally:
            processes.stop()


# services: a throwaway database, Redis database and vhost --------------------------------------
def postgres_database(base_url: str):
    """A new, empty database on the server of `base_url`, dropped afterwards (the tests' helper)."""
    sys.path.insert(0, str(ROOT))
    from tests.services import fresh_postgres_database

    return fresh_postgres_database(base_url)


@contextlib.contextmanager
def database(kind: str, postgres_url: str, folder: Path):
    if kind == "postgres":
        with postgres_database(postgres_url) as url:
            yield url
    else:
        yield f"sqlite:///{folder / 'farm.db'}"


@contextlib.contextmanager
def redis_database(url: str):
    import redis

    client = redis.Redis.from_url(url)
    client.flushdb()
    try:
        yield url
    finally:
        client.flushdb()
        client.close()


def _rabbitmqctl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["rabbitmqctl", *args], capture_output=True, text=True, timeout=60)


@contextlib.contextmanager
def rabbitmq_vhost(url: str):
    """A vhost of our own when rabbitmqctl can make one; otherwise the URL as it is."""
    vhost = f"farm-bench-{uuid.uuid4().hex[:8]}"
    try:
        made = _rabbitmqctl("add_vhost", vhost).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        made = False
    if not made:
        print(f"bench: no vhost of our own (rabbitmqctl failed); using {url}", file=sys.stderr)
        yield url
        return
    try:
        user = urllib.parse.urlsplit(url).username or "guest"
        _rabbitmqctl("set_permissions", "-p", vhost, user, ".*", ".*", ".*").check_returncode()
        parts = urllib.parse.urlsplit(url)
        yield urllib.parse.urlunsplit((parts.scheme, parts.netloc, "/" + vhost, "", ""))
    finally:
        _rabbitmqctl("delete_vhost", vhost)


# processes ------------------------------------------------------------------------------------
class Processes:
    """Farm commands as subprocesses, each in its own session (Ctrl-C reaches only the bench,
    which stops them in order), each logging to a file in `folder`."""

    def __init__(self, folder: Path, env: dict):
        self.folder = folder
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")} | env
        self.running: list[tuple[subprocess.Popen, object]] = []

    def start(self, label: str, *args: str) -> subprocess.Popen:
        log = open(self.folder / f"{label}.log", "ab")
        process = subprocess.Popen([sys.executable, "-m", "farm.cli", *args], cwd=ROOT, env=self.env,
                                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.running.append((process, log))
        return process

    def run(self, label: str, *args: str, timeout: float = 120) -> None:
        process = self.start(label, *args)
        try:
            code = process.wait(timeout)
        except subprocess.TimeoutExpired:
            code = None
        self.stop([process])
        if code != 0:
            raise BenchError(f"`farm {' '.join(args)}` ended with {code}; see {label}.log")

    def stop(self, processes: list[subprocess.Popen] | None = None, timeout: float = 60) -> None:
        """SIGTERM to all at once, then wait; what is still alive after `timeout` is killed."""
        chosen = [(p, log) for p, log in self.running if processes is None or p in processes]
        for process, _ in chosen:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for process, log in chosen:
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                print(f"bench: pid {process.pid} ignored SIGTERM for {timeout:.0f} s; killing it", file=sys.stderr)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)  # its own session: it and its children
                process.wait()
            log.close()
            self.running.remove((process, log))

    def cpu_meter(self) -> "CpuMeter":
        return CpuMeter({process.pid for process, _ in self.running})

    def check_alive(self) -> None:
        for process, log in self.running:
            if process.poll() is not None:
                raise BenchError(f"pid {process.pid} ({Path(log.name).name}) exited with {process.returncode}")


class CpuMeter:
    """CPU used from now until `shares()`, as shares of all the machine's cores over that time:
    `farm` by the bench and the farm processes (each leads its own session), `rest` by everything
    else (the database, Redis and RabbitMQ servers working for them, and any other work on the
    machine, which skews the figures). Linux /proc only; None elsewhere."""

    BUSY = (0, 1, 2, 5, 6, 7)  # user nice system irq softirq steal, from /proc/stat's cpu line

    def __init__(self, sessions: set[int]):
        self.sessions = sessions
        self.started = time.monotonic()
        self.start = self._read()

    def _read(self) -> tuple[int, int] | None:
        try:
            with open("/proc/stat") as stat:
                values = [int(v) for v in stat.readline().split()[1:]]
        except OSError:
            return None
        ours = 0
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/stat") as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()
            except OSError:
                continue  # gone meanwhile
            if int(fields[3]) in self.sessions or int(entry.name) == os.getpid():
                ours += int(fields[11]) + int(fields[12])  # utime, stime (all threads)
        return ours, sum(values[i] for i in self.BUSY)

    def shares(self) -> dict | None:
        end = self._read()
        if self.start is None or end is None:
            return None
        capacity = (time.monotonic() - self.started) * os.sysconf("SC_CLK_TCK") * (os.cpu_count() or 1)
        ours, busy = end[0] - self.start[0], end[1] - self.start[1]
        return {"farm": round(ours / capacity, 3), "rest": round(max(0, busy - ours) / capacity, 3)}


class Farm:
    """One web process and sets of workers on one broker and database."""

    def __init__(self, processes: Processes, label: str, database_url: str):
        self.processes, self.label, self.database_url = processes, label, database_url
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.session = requests.Session()
        self.generation = 0

    def start(self) -> None:
        self.processes.run(f"{self.label}-db-upgrade", "db", "upgrade")
        self.web = self.processes.start(f"{self.label}-web", "web", "--port", str(self.port))
        self.wait(lambda: self.devices() is not None, 90, "the web process to answer /system_stats")

    def devices(self) -> list | None:
        try:
            answer = self.session.get(f"{self.url}/system_stats", timeout=5)
        except requests.RequestException:
            return None
        return answer.json()["devices"] if answer.status_code == 200 else None

    def wait(self, condition, timeout: float, what: str, every: float = 0.1) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.processes.check_alive()
            if condition():
                return
            time.sleep(every)
        raise BenchError(f"{self.label}: waited {timeout:.0f} s for {what}")

    def start_workers(self, count: int) -> list[subprocess.Popen]:
        self.generation += 1
        workers = [self.processes.start(f"{self.label}-worker-{self.generation}-{index}", "worker", "--cpu",
                                        "--name", f"bench-{self.label}-{self.generation}-{index}")
                   for index in range(count)]
        self.wait(lambda: len(self.devices() or []) == count, 60 + 5 * count, f"{count} workers in /system_stats")
        return workers

    def stop_workers(self, workers: list[subprocess.Popen]) -> None:
        self.processes.stop(workers)
        self.wait(lambda: self.devices() == [], 60, "the stopped workers to leave /system_stats")

    def set_dispatch(self, paused: bool) -> None:
        answer = self.session.post(f"{self.url}/api/dispatch/{'pause' if paused else 'resume'}", timeout=10)
        if answer.status_code != 200:
            raise BenchError(f"{self.label}: dispatch {'pause' if paused else 'resume'}: {answer.status_code} "
                             f"{answer.text[:300]}")

    def queue_remaining(self) -> int:
        return self.session.get(f"{self.url}/prompt", timeout=10).json()["exec_info"]["queue_remaining"]

    def history(self, prompt_id: str) -> dict:
        return self.session.get(f"{self.url}/history/{prompt_id}", timeout=10).json().get(prompt_id)

    def prompt_rows(self, ids: list[str]) -> list:
        """These prompts' rows in the farm's database: worker, attempt and the times it recorded."""
        from sqlalchemy import create_engine, select

        from farm.db.models import Prompt

        engine = create_engine(self.database_url)
        try:
            with engine.connect() as connection:
                return connection.execute(
                    select(Prompt.prompt_id, Prompt.worker, Prompt.attempt, Prompt.created_at, Prompt.dispatched_at,
                           Prompt.started_at, Prompt.finished_at, Prompt.passed_at).where(Prompt.prompt_id.in_(ids))
                ).all()
        finally:
            engine.dispose()
