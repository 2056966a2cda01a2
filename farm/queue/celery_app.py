"""The Celery app factory and the one task the farm sends, by name: `farm.execute_prompt`."""

from __future__ import annotations

from celery import Celery
from kombu import Queue

EXECUTE_PROMPT = "farm.execute_prompt"


def worker_queue_name(worker_name: str) -> str:
    return f"farm.gpu.{worker_name}"


def worker_queue(worker_name: str) -> Queue:
    # x-max-priority makes RabbitMQ honour message priorities; Redis ignores queue arguments.
    name = worker_queue_name(worker_name)
    return Queue(name, routing_key=name, queue_arguments={"x-max-priority": 9})


def is_redis(url: str) -> bool:
    return url.startswith(("redis://", "rediss://", "redis+socket://", "unix://"))


def message_priorities(broker_url: str) -> tuple[int, int]:
    """(front, normal) Celery priorities: Redis consumes 0 first, RabbitMQ the highest number."""
    return (0, 9) if is_redis(broker_url) else (9, 0)


def make_celery(settings) -> Celery:
    if not settings.broker_url:
        raise ValueError("no broker URL: set FARM_BROKER_URL, or start the farm with `farm up`")
    app = Celery("farm", broker=settings.broker_url, set_as_current=False)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        result_backend=None,
        # A prompt is acknowledged only when it is finished; a lost worker's message is not lost.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_concurrency=1,
        # Threads keep the main thread free for remote control and heartbeats while a prompt runs.
        worker_pool="threads",
        worker_hijack_root_logger=False,
        # Task events (for Flower) cost broker traffic for every prompt: off unless asked for.
        worker_send_task_events=settings.celery_events,
        task_send_sent_event=settings.celery_events,
        broker_connection_retry_on_startup=True,
        broker_transport_options={
            "priority_steps": [0, 9],
            "sep": ":",
            "queue_order_strategy": "priority",
            # Far longer than any prompt: Redis must not redeliver a message that is still running.
            "visibility_timeout": 7 * 24 * 3600,
        },
        task_create_missing_queues=True,
    )
    return app
