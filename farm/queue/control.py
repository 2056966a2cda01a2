"""Telling workers what to do now, through Celery's remote control (works on Redis and RabbitMQ).

Commands reach a worker's main thread even while it runs a prompt (the threads pool keeps the
consumer free), so an interrupt lands within one node or sampler step.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

INTERRUPT = "farm_interrupt"
FREE = "farm_free"


def celery_hostname(worker_name: str, host: str) -> str:
    return f"{worker_name}@{host}"


class WorkerControl:
    def __init__(self, app):
        self.app = app

    def interrupt(self, prompt_id: str, worker_name: str, host: str) -> None:
        """Interrupt `prompt_id` on the worker that holds it (if it still runs it then)."""
        self._broadcast(INTERRUPT, {"prompt_id": prompt_id}, [celery_hostname(worker_name, host)])

    def free(self, unload_models: bool, free_memory: bool) -> None:
        """Every worker unloads its models and/or drops its caches, after its current prompt."""
        self._broadcast(FREE, {"unload_models": unload_models, "free_memory": free_memory}, None)

    def _broadcast(self, command: str, arguments: dict, destination: list[str] | None) -> None:
        try:
            self.app.control.broadcast(command, arguments=arguments, destination=destination, reply=False)
        except Exception:  # noqa: BLE001 - the request itself succeeded; the broker is the problem
            log.exception("could not send %s to %s", command, destination or "all workers")
