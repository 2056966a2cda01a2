"""Access to the real services the integration tests use (FARM_TEST_* URLs), and fresh databases."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import uuid
from pathlib import Path
from urllib.parse import urlparse

import pytest


def service_url(name: str) -> str:
    """The URL in FARM_TEST_<NAME>_URL, or skip the test saying how to enable it."""
    variable = f"FARM_TEST_{name.upper()}_URL"
    url = os.environ.get(variable)
    if not url:
        pytest.skip(f"{variable} is not set (.ci/run sets it and starts the service)")
    parsed = urlparse(url)
    host, port = parsed.hostname or "127.0.0.1", parsed.port
    try:
        socket.create_connection((host, port), timeout=2).close()
    except OSError as exception:
        pytest.fail(f"{variable}={url} is set but unreachable: {exception}")
    return url


@contextlib.contextmanager
def fresh_postgres_database(base_url: str, keep: bool = False):
    """A new, empty PostgreSQL database on the server of `base_url`, dropped afterwards (unless
    `keep`: a bench's, to look at later)."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    url = make_url(base_url).set(drivername="postgresql+psycopg")
    name = f"farm_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        if not keep:
            with admin.connect() as connection:
                connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


class MigratedPostgresDatabases:
    """Fresh, migrated PostgreSQL databases for one test session, made ahead of need.

    The migrations run once, into a template database; a background thread copies it (`CREATE
    DATABASE ... TEMPLATE`) into a few spare databases while tests run, and drops the used ones, so
    a test that needs one neither creates, migrates nor drops it itself. Every test still gets a
    database nobody used before, as with `fresh_postgres_database`."""

    SPARE = 3

    def __init__(self, base_url: str):
        import queue
        import threading

        from sqlalchemy import create_engine
        from sqlalchemy.engine import make_url

        from farm.db.migrate import upgrade

        self._url = make_url(base_url).set(drivername="postgresql+psycopg")
        self._admin = create_engine(self._url, isolation_level="AUTOCOMMIT")
        self._template = self._create()
        upgrade(self._render(self._template))
        self._spare: queue.Queue = queue.Queue()
        self._used: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self._failure: BaseException | None = None
        self._worker = threading.Thread(target=self._work, name="farm-test-databases", daemon=True)
        self._worker.start()
        self._dropper = threading.Thread(target=self._drop_loop, name="farm-test-databases-drop", daemon=True)
        self._dropper.start()

    def _render(self, name: str) -> str:
        return self._url.set(database=name).render_as_string(hide_password=False)

    def _execute(self, statement: str) -> None:
        from sqlalchemy import text

        with self._admin.connect() as connection:
            connection.execute(text(statement))

    def _create(self, template: str | None = None) -> str:
        name = f"farm_test_{uuid.uuid4().hex[:12]}"
        self._execute(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
        return name

    def _drop(self, name: str) -> None:
        self._execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def _drop_used(self) -> None:
        import queue

        while True:
            try:
                self._drop(self._used.get_nowait())
            except queue.Empty:
                return

    def _drop_loop(self) -> None:
        while not self._stop.is_set():
            self._drop_used()
            self._stop.wait(0.05)

    def _work(self) -> None:
        try:
            while not self._stop.is_set():
                if self._spare.qsize() < self.SPARE:
                    self._spare.put(self._create(self._template))
                else:
                    self._stop.wait(0.02)
        except BaseException as error:  # noqa: BLE001 - handed to the test that waits for a database
            self._failure = error

    @contextlib.contextmanager
    def database(self):
        """The URL of a migrated database no test used before; dropped after the test."""
        import queue

        while True:
            try:
                name = self._spare.get(timeout=1)
                break
            except queue.Empty:
                if self._failure is not None or not self._worker.is_alive():
                    raise RuntimeError("making test databases failed") from self._failure
        try:
            yield self._render(name)
        finally:
            self._used.put(name)

    def close(self) -> None:
        import queue

        self._stop.set()
        self._worker.join(60)
        self._dropper.join(60)
        self._drop_used()
        while True:
            try:
                self._drop(self._spare.get_nowait())
            except queue.Empty:
                break
        self._drop(self._template)
        self._admin.dispose()


def _as_postgres(command: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: run its tools as the postgres user then."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


class ThrowawayPostgres:
    """A PostgreSQL server of its own (temp data folder, free port) that a test may stop and start
    again, so an outage never touches the shared server the rest of the suite uses."""

    def __init__(self):
        import glob
        import shutil
        import subprocess
        import tempfile
        from pathlib import Path

        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb")) or [shutil.which("initdb") or ""]
        if not found[-1]:
            pytest.skip("PostgreSQL's server programs (initdb, pg_ctl) are not installed")
        self.bin = os.path.dirname(found[-1])
        # Directly under the system temp folder: the postgres user must reach it (pytest's are 0700).
        self.folder = Path(tempfile.mkdtemp(prefix="farm-test-pg-"))
        self.data = self.folder / "pgdata"
        if os.geteuid() == 0:
            shutil.chown(self.folder, "postgres")
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        subprocess.run(_as_postgres([f"{self.bin}/initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres",
                                     "--no-sync"]), check=True, capture_output=True)
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self.start()

    def _ctl(self, *args: str) -> None:
        import subprocess

        subprocess.run(_as_postgres([f"{self.bin}/pg_ctl", "-D", str(self.data), "-l", str(self.folder / "pg.log"),
                                     "-w", *args]), check=True, capture_output=True, timeout=60)

    def start(self) -> None:
        self._ctl("-o", f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off", "start")

    def stop(self) -> None:
        self._ctl("-m", "fast", "stop")

    def close(self) -> None:
        import shutil

        try:
            self.stop()
        except Exception:  # noqa: BLE001 - already stopped
            pass
        shutil.rmtree(self.folder, ignore_errors=True)


class ThrowawayRedis:
    """A Redis server of its own on a free port (no persistence), to stop and start in a test."""

    def __init__(self, folder):
        import shutil

        if not shutil.which("redis-server"):
            pytest.skip("redis-server is not installed")
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process = None
        self.start()

    def start(self) -> None:
        import subprocess
        import time

        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.folder)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("throwaway redis-server did not start")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    close = stop


@contextlib.contextmanager
def small_storage(folder: Path, megabytes: float):
    """A tmpfs of `megabytes` at `folder` (a real full disk for tests and benches); yields whether
    it could be mounted (mounting needs root)."""
    folder.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={int(megabytes * 1024)}k", "tmpfs", str(folder)],
                             capture_output=True).returncode == 0
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def fill(folder: Path) -> Path:
    """Fill the filesystem of `folder` up to the last byte with one file; returns it."""
    filler = folder / ".filler"
    descriptor = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)  # unbuffered: nothing left to flush
    try:
        for size in (1 << 20, 4096, 1):
            with contextlib.suppress(OSError):
                while os.write(descriptor, b"\0" * size):
                    pass
    finally:
        os.close(descriptor)
    return filler
