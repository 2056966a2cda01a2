"""Prometheus metrics (prometheus-client): what each kind of farm process counts, and the farm-wide
state read from the database when `/metrics` is scraped.

- Web processes count HTTP requests, dispatch decisions and webhook deliveries. gunicorn runs
  several of them: `farm web` points PROMETHEUS_MULTIPROC_DIR at a folder of its own before it
  forks, and `/metrics` adds every process's values up (prometheus-client's multiprocess mode).
- Each worker counts what it runs (queue wait, execution and per-node time, model loads and
  cache hits, prompts finished, its dispatch decisions) and serves them on its own port
  (`FARM_WORKER_METRICS_PORT` + its GPU index; off by default): workers run on other hosts.
- At scrape time, `/metrics` also reads the database (farm.services.farm_metrics): pending and
  running prompts by state and team, and every worker's state, heartbeat age and GPU memory.

Metric objects are made on first use, once per process (prometheus-client refuses two of a name).
"""

from __future__ import annotations

import functools
import os

BUCKETS_SECONDS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)


@functools.cache
def dispatch_decisions():
    """Counted by every process that dispatches (web processes and workers alike)."""
    from prometheus_client import Counter

    return Counter("farm_dispatch_decisions", "Dispatch decisions for a free worker by outcome (assigned: a "
                   "prompt was taken; none: nothing it could run)", ["outcome"])


@functools.cache
def web_metrics():
    from prometheus_client import Counter, Histogram

    class WebMetrics:
        http_requests = Counter("farm_http_requests", "HTTP requests by route template, method and status",
                                ["route", "method", "status"])
        http_seconds = Histogram("farm_http_request_seconds", "HTTP request time by route template", ["route"],
                                 buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10))
        decisions = dispatch_decisions()
        webhook_deliveries = Counter("farm_webhook_deliveries", "Webhook posts by event and outcome (delivered, "
                                     "retry: to be tried again, failed: given up)", ["event", "outcome"])

    return WebMetrics


@functools.cache
def worker_metrics():
    from prometheus_client import Counter, Histogram

    class WorkerMetrics:
        queue_wait = Histogram("farm_queue_wait_seconds", "Time from acceptance to the start on a worker, by team",
                               ["team"], buckets=BUCKETS_SECONDS)
        execution = Histogram("farm_execution_seconds", "Prompt run time on the worker, by team and result",
                              ["team", "status"], buckets=BUCKETS_SECONDS)
        node = Histogram("farm_node_seconds", "Node run time by node class (cached nodes not counted)",
                         ["node_class"], buckets=BUCKETS_SECONDS)
        prompts = Counter("farm_prompts_finished", "Prompts this worker recorded, by team and state", ["team", "state"])
        model_loads = Counter("farm_model_loads", "Models loaded from disk, by kind", ["kind"])
        model_load_seconds = Histogram("farm_model_load_seconds", "Model load time from disk", ["kind"],
                                       buckets=BUCKETS_SECONDS)
        model_hits = Counter("farm_model_cache_hits", "Models served from the model cache, by kind", ["kind"])
        decisions = dispatch_decisions()

    return WorkerMetrics


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def prepare_multiprocess(folder) -> None:
    """Make `folder` the (emptied) multiprocess folder of this process and its children: call
    before prometheus_client is imported and before forking."""
    import shutil
    from pathlib import Path

    folder = Path(folder)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder)


def process_exited(pid: int) -> None:
    """A gunicorn worker exited: its live gauges go (counters and histograms stay summed)."""
    if multiprocess_dir():
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)


def serve_worker_metrics(port: int, addr: str) -> None:
    """This worker's metrics on http://addr:port/metrics (a daemon thread)."""
    from prometheus_client import start_http_server

    worker_metrics()
    start_http_server(port, addr=addr)
