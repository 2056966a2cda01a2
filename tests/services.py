"""Access to the real services the integration tests use (FARM_TEST_* URLs), and fresh databases."""

from __future__ import annotations

import contextlib
import os
import socket
import uuid
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
def fresh_postgres_database(base_url: str):
    """A new, empty PostgreSQL database on the server of `base_url`, dropped afterwards."""
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
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


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
