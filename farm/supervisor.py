"""`farm up`: the whole farm on one machine, as child processes of one command.

Order: migrations, the embedded Redis (when no broker URL is set), the web server, one worker
per visible GPU (or one CPU worker). Every child dies with this process (PR_SET_PDEATHSIG on
Linux), so even a killed supervisor leaves no orphans. On Ctrl-C or SIGTERM the web stops first
(no new prompts), then the workers (a running prompt is interrupted and queued again), then Redis.
"""

from __future__ import annotations

import ctypes
import logging
import signal
import subprocess
import sys
import threading
import time
import urllib.request

from farm.config import Settings, settings_environment
from farm.db.migrate import upgrade
from farm.embedded_redis import start_embedded_redis

log = logging.getLogger("farm.up")


def _die_with_parent() -> None:
    """Runs in each child before exec: SIGTERM it when the supervisor dies."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _preexec():
    return _die_with_parent if sys.platform.startswith("linux") else None


class Farm:
    def __init__(self, settings: Settings, workers: list[int | None]):
        self.settings = settings
        self.worker_gpus = workers
        self.redis: subprocess.Popen | None = None
        self.web: subprocess.Popen | None = None
        self.workers: list[subprocess.Popen] = []
        self._stop = threading.Event()

    def _spawn(self, args: list[str], env: dict) -> subprocess.Popen:
        import os

        # A session of its own: Ctrl-C reaches only the supervisor, which stops children in order.
        return subprocess.Popen([sys.executable, "-m", "farm.cli", *args], env={**os.environ, **env},
                                preexec_fn=_preexec(), start_new_session=True)

    def start(self) -> None:
        settings = self.settings
        for folder in (settings.data_dir, settings.output_dir, settings.input_dir, settings.temp_dir,
                       settings.models_dir):
            folder.mkdir(parents=True, exist_ok=True)
        upgrade(settings.database_url)
        if not settings.broker_url:
            self.redis, url = start_embedded_redis(settings.embedded_redis_socket, preexec_fn=_preexec())
            settings = self.settings = settings.with_overrides(broker_url=url, events_url=settings.events_url or url)
            log.info("embedded Redis on %s", settings.embedded_redis_socket)
        env = settings_environment(settings)
        self.web = self._spawn(["web"], env)
        for gpu in self.worker_gpus:
            self.workers.append(self._spawn(["worker", "--cpu"] if gpu is None else ["worker", "--gpu", str(gpu)], env))
        self._wait_ready()

    def _wait_ready(self, timeout: float = 120) -> None:
        url = f"http://{self.settings.host}:{self.settings.port}/system_stats"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.web.poll() is not None:
                raise RuntimeError(f"the web server exited with code {self.web.returncode}")
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        log.info("farm ready on http://%s:%s", self.settings.host, self.settings.port)
                        print(f"farm ready: http://{self.settings.host}:{self.settings.port}", flush=True)
                        return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"the farm did not answer on {url} within {timeout:.0f} s")

    def wait(self) -> int:
        """Block until asked to stop or a child dies; return the exit code for `farm up`."""
        while not self._stop.wait(0.5):
            for child in [self.web, *self.workers, self.redis]:
                if child is not None and child.poll() is not None:
                    log.error("a farm process exited (code %s); stopping the farm", child.returncode)
                    return 1
        return 0

    def request_stop(self, *_args) -> None:
        self._stop.set()

    def stop(self, timeout: float = 60) -> None:
        for group in ([self.web], self.workers, [self.redis]):
            children = [c for c in group if c is not None and c.poll() is None]
            for child in children:
                child.send_signal(signal.SIGTERM)
            for child in children:
                try:
                    child.wait(timeout)
                except subprocess.TimeoutExpired:
                    log.error("process %s did not stop in %.0f s; killing it", child.pid, timeout)
                    child.kill()
                    child.wait()


def run_farm(settings: Settings, workers: list[int | None]) -> int:
    farm = Farm(settings, workers)
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
