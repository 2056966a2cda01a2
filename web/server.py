"""`farm web`: the Flask app under gunicorn (threads, so WebSockets and long requests coexist).

Each WebSocket holds a thread for its lifetime, so a process gets web_threads threads for HTTP
plus web_sockets for sockets (the relay refuses sockets beyond that, so HTTP never starves). On
SIGTERM the sockets are closed at once (clients reconnect elsewhere) instead of holding the
graceful shutdown for its whole timeout.
"""

from __future__ import annotations

import gc

from gunicorn.app.base import BaseApplication
from gunicorn.workers.gthread import ThreadWorker


def _post_worker_init(worker) -> None:
    # Connect before the first request, then move every start-up object out of the garbage
    # collector's view: full collections stay short instead of pausing a request.
    worker.wsgi.extensions["farm"].warm_up()
    worker.wsgi.extensions["farm"].start_reaping()
    gc.collect()
    gc.freeze()


class FarmThreadWorker(ThreadWorker):
    def handle_exit(self, sig, frame):
        super().handle_exit(sig, frame)
        app = getattr(self, "wsgi", None)
        relay = app.extensions.get("farm_relay") if app is not None else None
        if relay is not None:
            relay.close_all()


class _Gunicorn(BaseApplication):
    def __init__(self, settings, options: dict):
        self.settings = settings
        self.options = options
        super().__init__()

    def load_config(self):
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self):
        from web import create_app

        return create_app(self.settings)


def _child_exit(server, worker) -> None:
    from farm.metrics import process_exited

    process_exited(worker.pid)


def serve(settings) -> None:
    from farm.metrics import prepare_multiprocess

    # Before anything imports prometheus_client, and before gunicorn forks its workers: each one
    # writes its counters to this folder and /metrics, in whichever worker, sums them.
    prepare_multiprocess(settings.data_dir / "metrics" / f"web-{settings.port}")
    _Gunicorn(settings, {
        "bind": f"{settings.host}:{settings.port}",
        "workers": settings.web_processes,
        "worker_class": "web.server.FarmThreadWorker",
        "threads": settings.web_threads + settings.web_sockets,
        # Kept-alive HTTP connections wait in the poller, not in threads: leave room for them.
        "worker_connections": settings.web_threads + settings.web_sockets + 1000,
        "timeout": 0,  # WebSocket connections are long-lived
        "graceful_timeout": 10,
        "keepalive": 5,
        "accesslog": None,
        "errorlog": "-",
        "loglevel": "warning",
        "post_worker_init": _post_worker_init,
        "child_exit": _child_exit,
    }).run()
