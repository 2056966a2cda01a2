"""`farm web`: the Flask app under gunicorn (threads, so WebSockets and long requests coexist)."""

from __future__ import annotations

import gc

from gunicorn.app.base import BaseApplication


def _post_worker_init(worker) -> None:
    # Connect before the first request, then move every start-up object out of the garbage
    # collector's view: full collections stay short instead of pausing a request.
    worker.wsgi.extensions["farm"].warm_up()
    gc.collect()
    gc.freeze()


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


def serve(settings) -> None:
    _Gunicorn(settings, {
        "bind": f"{settings.host}:{settings.port}",
        "workers": settings.web_processes,
        "worker_class": "gthread",
        "threads": settings.web_threads,
        "timeout": 0,  # WebSocket connections are long-lived
        "graceful_timeout": 10,
        "keepalive": 5,
        "accesslog": None,
        "errorlog": "-",
        "loglevel": "warning",
        "post_worker_init": _post_worker_init,
    }).run()
