"""Sending `farm.execute_prompt` to one worker's queue (used by every dispatcher)."""

from __future__ import annotations

import dataclasses
import logging

from farm.queue.celery_app import EXECUTE_PROMPT, message_priorities, worker_queue

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Assignment:
    prompt_id: str
    attempt: int
    worker: str
    front: bool


class CelerySender:
    """Publishes execute messages (ids only) with the front/normal priority of the broker."""

    def __init__(self, app):
        self.app = app
        self.front_priority, self.normal_priority = message_priorities(app.conf.broker_url)

    def warm_up(self) -> None:
        """Open a broker connection now, so the first prompt does not pay for it."""
        with self.app.producer_or_acquire() as producer:
            producer.connection.ensure_connection(max_retries=1)

    def send(self, assignment: Assignment) -> None:
        self.app.send_task(
            EXECUTE_PROMPT,
            args=[assignment.prompt_id, assignment.attempt],
            queue=worker_queue(assignment.worker),
            priority=self.front_priority if assignment.front else self.normal_priority,
            retry=True,
            retry_policy={"max_retries": 2, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.5},
        )
