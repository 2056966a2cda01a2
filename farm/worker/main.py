"""`farm worker`: one Celery worker process pinned to one GPU (or the CPU)."""

from __future__ import annotations

import logging
import os
import re
import socket
import warnings

from farm.worker.device import GpuId, gpu_index, pin_device

log = logging.getLogger(__name__)


def default_worker_name(gpu: GpuId | int | None, base: str | None = None) -> str:
    """`<host>-gpu<N>` / `<host>-cpu` (`base` replaces the host); a UUID id gives `<host>-gpu-<uuid>`."""
    if gpu is None:
        device = "cpu"
    elif gpu_index(gpu) is not None:
        device = f"gpu{gpu_index(gpu)}"
    else:
        # Names appear in URLs (/api/workers/<name>) and queue names: no slashes (old MIG ids have them).
        device = re.sub(r"[^a-z0-9.-]+", "-", str(gpu).lower())
    return f"{base or socket.gethostname()}-{device}"


def run_worker(settings, gpu: GpuId | int | None, name: str | None = None, loglevel: str = "INFO",
               registry=None) -> None:
    pin_device(gpu)  # before anything imports torch
    if settings.worker_nice and hasattr(os, "nice"):
        # A prompt is batch work: under CPU contention the API (and its latency) comes first.
        os.nice(settings.worker_nice)

    from celery import signals
    from celery.worker.control import control_command

    from farm.queue.celery_app import EXECUTE_PROMPT, make_celery, worker_queue
    from farm.queue.control import FREE, INTERRUPT
    from farm.worker.runtime import WorkerRuntime

    name = name or default_worker_name(gpu)
    app = make_celery(settings)
    app.conf.task_queues = (worker_queue(name),)
    runtime = WorkerRuntime(settings, app, name, gpu_index(gpu), registry=registry)

    @app.task(name=EXECUTE_PROMPT, ignore_result=True)
    def execute_prompt(prompt_id: str, attempt: int) -> None:
        runtime.execute(prompt_id, attempt)

    @control_command(name=INTERRUPT, args=[("prompt_id", str)], signature="<prompt_id>")
    def interrupt(state, prompt_id: str) -> dict:
        runtime.interrupt(prompt_id)
        return {"ok": "interrupt requested"}

    @control_command(name=FREE, args=[("unload_models", bool), ("free_memory", bool)])
    def free(state, unload_models: bool = False, free_memory: bool = False) -> dict:
        runtime.request_free(bool(unload_models), bool(free_memory))
        return {"ok": "free requested"}

    signals.worker_ready.connect(lambda **_: runtime.start(), weak=False)
    signals.worker_shutting_down.connect(lambda **_: runtime.request_stop(), weak=False)
    signals.worker_shutdown.connect(lambda **_: runtime.stop(), weak=False)

    quiet = []
    if not settings.verbose:
        # The start summary replaces Celery's banner; the root-user warning is raised with
        # warnings.warn in Worker.on_before_init (celery.platforms.check_privileges), before
        # Celery's logging exists, so only a warnings filter can hold it back.
        from celery.exceptions import SecurityWarning

        warnings.filterwarnings("ignore", category=SecurityWarning)
        quiet = ["--quiet"]  # a `celery` option: it goes before the sub-command
    app.worker_main([
        *quiet,
        "worker",
        f"--hostname={name}@{socket.gethostname()}",
        "--pool=threads",
        "--concurrency=1",
        "--prefetch-multiplier=1",
        "--without-gossip",
        "--without-mingle",
        f"--loglevel={loglevel}",
    ])
