"""`farm up`: the whole farm on one machine, as child processes of one command.

Order: migrations, the embedded Redis (when no broker URL is set), the web server, then
`farm worker --gpus all` (which supervises one worker process per visible GPU) or `farm worker
--cpu` when no GPU is visible; then a start summary once the workers have registered. Every child
dies with this process (PR_SET_PDEATHSIG on Linux), so even a killed supervisor leaves no orphans.
On Ctrl-C or SIGTERM the web stops first (no new prompts), then the workers (each drains its
running prompt within FARM_STOP_GRACE_SECONDS), then Redis. When any child exits, the farm stops.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import threading
import time
import urllib.request

from farm.config import Settings, settings_environment
from farm.db.migrate import upgrade
from farm.db.session import make_database
from farm.embedded_redis import start_embedded_redis
from farm.processes import die_with_parent
from farm.summary import format_summary, wait_for_workers, worker_rows
from farm.worker.supervisor import STOP_MARGIN_SECONDS

log = logging.getLogger("farm.up")

# How long the start summary waits for the workers to register (a GPU worker imports torch).
REGISTER_TIMEOUT_SECONDS = 60.0
# The worker supervisor itself kills a child past stop grace + margin; leave it time to do so.
WORKER_STOP_SLACK_SECONDS = 15.0


class Farm:
    def __init__(self, settings: Settings, gpus: list[str]):
        """`gpus`: the visible GPU ids (one worker each); empty for one CPU worker."""
        self.settings = settings
        self.gpus = gpus
        self.redis: subprocess.Popen | None = None
        self.web: subprocess.Popen | None = None
        self.worker: subprocess.Popen | None = None
        self._stop = threading.Event()

    def _spawn(self, args: list[str], env: dict) -> subprocess.Popen:
        import os

        # A session of its own: Ctrl-C reaches only the supervisor, which stops children in order.
        return subprocess.Popen([sys.executable, "-m", "farm.cli", *args], env={**os.environ, **env},
                                preexec_fn=die_with_parent(), start_new_session=True)

    def worker_names(self) -> list[str]:
        from farm.worker.main import default_worker_name

        return [default_worker_name(gpu) for gpu in self.gpus or [None]]

    def start(self) -> None:
        settings = self.settings
        for folder in (settings.data_dir, settings.output_dir, settings.input_dir, settings.temp_dir,
                       settings.models_dir):
            folder.mkdir(parents=True, exist_ok=True)
        upgrade(settings.database_url)
        if not settings.broker_url:
            self.redis, url = start_embedded_redis(settings.embedded_redis_socket, preexec_fn=die_with_parent())
            settings = self.settings = settings.with_overrides(broker_url=url, events_url=settings.events_url or url)
            log.info("embedded Redis on %s", settings.embedded_redis_socket)
        env = settings_environment(settings)
        database = make_database(settings.database_url, pool_size=1)
        try:
            before = worker_rows(database, self.worker_names())
            self.web = self._spawn(["web"], env)
            # Supervised even on one device: a worker that dies (or is stopped by its watchdog) restarts.
            self.worker = self._spawn(["worker", "--gpus", "all", "--restart"] if self.gpus
                                      else ["worker", "--cpu", "--restart"], env)
            self._wait_ready()
            self._print_summary(database, before)
        finally:
            database.dispose()

    def _print_summary(self, database, before: dict) -> None:
        names = self.worker_names()
        devices = wait_for_workers(database, names, before, REGISTER_TIMEOUT_SECONDS,
                                   keep_waiting=lambda: not self._stop.is_set() and self.worker.poll() is None)
        print(format_summary(self.settings, names, devices, REGISTER_TIMEOUT_SECONDS), flush=True)

    def _wait_ready(self, timeout: float = 120) -> None:
        # /readyz: answers without a key whatever the auth mode, and only once the web can serve.
        host = "127.0.0.1" if self.settings.host in ("0.0.0.0", "", "::") else self.settings.host
        url = f"http://{f'[{host}]' if ':' in host else host}:{self.settings.port}/readyz"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.web.poll() is not None:
                raise RuntimeError(f"the web server exited with code {self.web.returncode}")
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        log.info("web answering on %s", url)
                        return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"the farm did not answer on {url} within {timeout:.0f} s")

    def wait(self) -> int:
        """Block until asked to stop or a child dies; return the exit code for `farm up`."""
        while not self._stop.wait(0.5):
            for child in [self.web, self.worker, self.redis]:
                if child is not None and child.poll() is not None:
                    log.error("a farm process exited (code %s); stopping the farm", child.returncode)
                    return 1
        return 0

    def request_stop(self, *_args) -> None:
        self._stop.set()

    def stop(self, timeout: float = 60) -> None:
        # Workers drain their running prompt first: they get the stop grace and then some.
        worker_timeout = self.settings.stop_grace_seconds + STOP_MARGIN_SECONDS + WORKER_STOP_SLACK_SECONDS
        for child, wait in ((self.web, timeout), (self.worker, worker_timeout), (self.redis, timeout)):
            if child is None or child.poll() is not None:
                continue
            child.send_signal(signal.SIGTERM)
            try:
                child.wait(wait)
            except subprocess.TimeoutExpired:
                log.error("process %s did not stop in %.0f s; killing it", child.pid, wait)
                child.kill()
                child.wait()


def run_farm(settings: Settings, gpus: list[str]) -> int:
    farm = Farm(settings, gpus)
    signal.signal(signal.SIGTERM, farm.request_stop)
    signal.signal(signal.SIGINT, farm.request_stop)
    try:
        farm.start()
        code = farm.wait()
    except Exception as exception:  # noqa: BLE001 - report, then stop whatever started
        log.error("%s", exception)
        code = 1
    finally:
        farm.stop()
    return code
