"""A farm of real processes for the scheduler's tests: `farm web` plus named `farm worker`s with
the test node pack, on a database and broker the test chooses, and the helpers those tests share
(submitting, watching sockets, reading the prompts table)."""

from __future__ import annotations

import json
import os
import random
import signal
import time
from pathlib import Path

import requests
from sqlalchemy import create_engine, text

from tests.integration.farm_process import FarmProcess, farm_env, free_port
from tests.services import service_url


def own_redis_url() -> str:
    """The shared Redis, on a database of this test's own (pub/sub channels carry the number)."""
    return service_url("redis").rsplit("/", 1)[0] + f"/{random.randint(1, 15)}"


def sleep_prompt(ms: int, value: int = 1) -> dict:
    return {"1": {"class_type": "Sleep", "inputs": {"value": value, "ms": ms}},
            "2": {"class_type": "Show", "inputs": {"value": ["1", 0]}}}


def block_prompt(path: str = "", seconds: float = 60, hold_models: bool = False, value: int = 1) -> dict:
    return {"1": {"class_type": "Block", "inputs": {"value": value, "path": path, "seconds": seconds,
                                                    "hold_models": hold_models}},
            "2": {"class_type": "Show", "inputs": {"value": ["1", 0]}}}


def saving_prompt(ms: int, color: int) -> dict:
    """Sleeps, then saves one image: a prompt with outputs to count."""
    return {"0": {"class_type": "Sleep", "inputs": {"value": 8, "ms": ms}},
            "1": {"class_type": "EmptyImage", "inputs": {"width": ["0", 0], "height": 8, "batch_size": 1,
                                                         "color": color}},
            "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "kill"}}}


class SchedulerFarm:
    def __init__(self, folder: Path, database_url: str, broker_url: str, events_url: str | None = None,
                 migrate: bool = True, **settings):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.data = folder / "data"
        self.env = farm_env(self.data, broker_url=broker_url, database_url=database_url, events_url=events_url)
        self.env.update({"FARM_NODE_MODULES": "tests.nodepack", "FARM_WORKER_TIMEOUT_SECONDS": "3",
                         "FARM_WEB_PROCESSES": "1", "FARM_WORKER_NICE": "0"})
        self.env.update({f"FARM_{key.upper()}": str(value) for key, value in settings.items()})
        self.database_url = database_url
        self.engine = create_engine(database_url.replace("postgresql://", "postgresql+psycopg://"), pool_pre_ping=True)
        self.web: FarmProcess | None = None
        self._web_ready = False
        self.workers: dict[str, FarmProcess] = {}
        self.http = requests.Session()
        if migrate:
            # What `farm db upgrade` runs, in this process: a CLI start less per farm.
            from farm.db.migrate import upgrade

            upgrade(database_url)

    @property
    def url(self) -> str:
        self.wait_web()
        return self.web.url

    def wait_web(self) -> None:
        if not self._web_ready:
            self.web.wait_ready()
            self._web_ready = True

    def start_web(self, wait: bool = True) -> None:
        """`farm web` on a free port; without `wait`, the first use of `url` waits for it (a worker
        started meanwhile starts side by side with it)."""
        port = free_port()
        self.web = FarmProcess(["web", "--port", str(port)], self.env, self.folder / f"web-{port}.log", port)
        self._web_ready = False
        if wait:
            self.wait_web()

    def start_worker(self, name: str, wait: bool = True, restart: bool = False, **env) -> FarmProcess:
        extra = {f"FARM_{key.upper()}": str(value) for key, value in env.items()}
        log = self.folder / f"worker-{name}.log"
        args = ["worker", "--cpu", "--name", name, *(["--restart"] if restart else [])]
        worker = self.workers[name] = FarmProcess(args, {**self.env, **extra}, log)
        if wait:
            self.wait_worker_state(name, ("idle", "busy"))
        return worker

    def start_workers(self, *names: str, **env) -> None:
        """Several workers (same settings) started side by side, then waited for together."""
        for name in names:
            self.start_worker(name, wait=False, **env)
        for name in names:
            self.wait_worker_state(name, ("idle", "busy"))

    def worker_state(self, name: str) -> str | None:
        for worker in self.http.get(f"{self.url}/api/workers", timeout=10).json()["workers"]:
            if worker["name"] == name:
                return worker["state"]
        return None

    def wait_worker_state(self, name: str, states, timeout: float = 90) -> None:
        states = (states,) if isinstance(states, str) else tuple(states)
        deadline = time.monotonic() + timeout
        while self.worker_state(name) not in states:
            process = self.workers.get(name)
            if process is not None and process.process.poll() is not None and "dead" not in states:
                raise AssertionError(f"worker {name} exited:\n{process.output()}")
            assert time.monotonic() < deadline, f"worker {name} not {states}: {self.worker_state(name)}"
            time.sleep(0.1)

    def submit(self, prompt: dict, client_id: str | None = None, **body) -> str:
        response = self.http.post(f"{self.url}/prompt", timeout=30,
                                  data=json.dumps({"prompt": prompt, "client_id": client_id, **body}))
        assert response.status_code == 200, response.text
        return response.json()["prompt_id"]

    def row(self, prompt_id: str) -> dict:
        with self.engine.connect() as connection:
            found = connection.execute(text("SELECT state, worker, attempt FROM prompts WHERE prompt_id = :p"),
                                       {"p": prompt_id}).mappings().one()
        return dict(found)

    def wait_row(self, prompt_id: str, predicate, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            row = self.row(prompt_id)
            if predicate(row):
                return row
            assert time.monotonic() < deadline, f"{prompt_id}: {row}"
            time.sleep(0.05)

    def history(self, prompt_id: str, timeout: float = 90) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                body = self.http.get(f"{self.url}/history/{prompt_id}", timeout=10).json()
            except (requests.RequestException, ValueError):
                body = {}
            if body:
                return body[prompt_id]
            time.sleep(0.1)
        raise AssertionError(f"{prompt_id} not in history: {self.row(prompt_id)}\n" + self.logs())

    def signal_worker(self, name: str, sig) -> None:
        os.kill(self.workers[name].process.pid, sig)

    def kill_worker(self, name: str) -> None:
        worker = self.workers.pop(name)
        worker.stop(signal.SIGKILL)

    def logs(self) -> str:
        parts = [f"--- web\n{self.web.output()}"] if self.web else []
        parts += [f"--- {name}\n{worker.output()}" for name, worker in self.workers.items()]
        return "\n".join(parts)

    def close(self) -> None:
        # A kept-alive connection holds the web's graceful stop about 2 s: close ours first. Then
        # every process is told at once and they stop side by side (each takes a second or so).
        self.http.close()
        processes = [*self.workers.values(), *([self.web] if self.web is not None else [])]
        for process in processes:
            process.send(signal.SIGTERM)
        for worker in self.workers.values():
            try:
                worker.stop(None, timeout=60)
            except AssertionError:
                pass
        if self.web is not None:
            self.web.stop(None)
        self.engine.dispose()
