"""The `/metrics` body of a web process: every web process's counters (farm.metrics) and the farm's
state read from the database at scrape time."""

from __future__ import annotations

from farm.metrics import multiprocess_dir, web_metrics

PENDING_AND_ACTIVE = ("queued", "paused", "dispatched", "running")


class FarmState:
    """A collector read at scrape time: prompts pending or running by state and team; workers by
    state, with heartbeat age and GPU memory."""

    def __init__(self, database, settings):
        self.database = database
        self.settings = settings

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily
        from sqlalchemy import func, select

        from farm.db.models import Prompt
        from farm.services.steering import list_workers

        prompts = GaugeMetricFamily("farm_prompts", "Prompts pending or running, by state and team",
                                    labels=["state", "team"])
        with self.database.reading() as session:
            rows = session.execute(select(Prompt.state, Prompt.team, func.count())
                                   .where(Prompt.state.in_(PENDING_AND_ACTIVE)).group_by(Prompt.state, Prompt.team))
            for state, team, count in rows:
                prompts.add_metric([state, team], count)
        yield prompts
        states = GaugeMetricFamily("farm_worker_state", "1 for each worker's current state",
                                   labels=["worker", "state"])
        age = GaugeMetricFamily("farm_worker_heartbeat_age_seconds", "Seconds since each worker's last beat",
                                labels=["worker"])
        vram = GaugeMetricFamily("farm_worker_gpu_memory_bytes", "Each worker's GPU memory, used and total",
                                 labels=["worker", "kind"])
        done = GaugeMetricFamily("farm_worker_prompts", "Prompts each worker ended, done and failed (its counters)",
                                 labels=["worker", "result"])
        for worker in list_workers(self.database, self.settings, {}):
            name = worker["name"]
            states.add_metric([name, worker["state"]], 1)
            age.add_metric([name], worker["last_heartbeat_age"])
            total, free = worker["vram_total"] or 0, worker["vram_free"] or 0
            vram.add_metric([name, "total"], total)
            vram.add_metric([name, "used"], max(total - free, 0))
            done.add_metric([name, "done"], worker["prompts_done"])
            done.add_metric([name, "failed"], worker["prompts_failed"])
        yield from (states, age, vram, done)


def web_exposition(database, settings) -> tuple[bytes, str]:
    """The `/metrics` body and its content type: every web process's counters (multiprocess mode
    when set up) and the farm's state from the database."""
    from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

    web_metrics()  # the families exist (at zero) before the first event
    if multiprocess_dir():
        from prometheus_client import multiprocess

        counted = CollectorRegistry()
        multiprocess.MultiProcessCollector(counted)
    else:
        counted = REGISTRY  # one process (tests, a single web process without gunicorn)
    state = CollectorRegistry()
    state.register(FarmState(database, settings))
    return generate_latest(counted) + generate_latest(state), CONTENT_TYPE_LATEST
