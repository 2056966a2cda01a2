"""The Flask app: ComfyUI's HTTP API in front of the farm (`create_app(settings)`)."""

from __future__ import annotations

from flask import Flask

API_BLUEPRINTS = ("prompts", "history", "files", "uploads", "models", "nodes", "system", "control", "jobs", "workers",
                  "teams", "batches", "health", "metrics", "userdata", "editor", "ws", "openapi")


def create_app(settings, *, context=None) -> Flask:
    """Build the app for `settings`; `context` (a FarmContext) may be given by tests."""
    from importlib import import_module

    from farm.services.context import make_context
    from farm.metrics import web_metrics
    from web import auth, errors, request_metrics, security, sessions
    from web.api.ws import SERVER_OPTIONS as WEBSOCKET_OPTIONS
    from web.relay import Relay

    if context is None:
        from farm.queue.celery_app import make_celery
        from farm.queue.control import WorkerControl
        from farm.queue.sender import CelerySender

        celery = make_celery(settings) if settings.broker_url else None
        context = make_context(
            settings,
            sender=CelerySender(celery) if celery else None,
            control=WorkerControl(celery) if celery else None,
            background_dispatch=True,
        )

    if context.status is None and settings.events_url:
        from farm.events import EventBus, StatusPublisher
        from farm.services.history import queue_remaining

        context.status = StatusPublisher(EventBus(settings.events_url), lambda: queue_remaining(context.database))

    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_upload_bytes
    app.config["SOCK_SERVER_OPTIONS"] = WEBSOCKET_OPTIONS
    # This process's WebSockets, and its bus listener (started once the server has forked).
    app.extensions["farm_relay"] = Relay(settings.events_url, max_sockets=settings.web_sockets)
    app.json.sort_keys = False
    app.json.compact = True
    app.extensions["farm"] = context
    if context.dispatcher is not None:
        context.dispatcher.on_decision = lambda outcome: web_metrics().decisions.labels(outcome).inc()
    request_metrics.register(app)  # first: every request is counted, refused ones too
    errors.register(app)
    security.register(app, settings)
    auth.register(app, settings, context.database)  # after the origin checks: a foreign page gets 403 first
    sessions.register(app, settings)
    from web.dashboard import blueprint as dashboard

    app.register_blueprint(dashboard)
    for module_name in API_BLUEPRINTS:
        blueprint = import_module(f"web.api.{module_name}").blueprint
        # Every route answers both bare and under /api, as ComfyUI's server does.
        app.register_blueprint(blueprint)
        app.register_blueprint(blueprint, url_prefix="/api", name=f"api_{blueprint.name}")
    from web.frontend import make_blueprint as editor

    app.register_blueprint(editor())  # ComfyUI's editor at / (when the [frontend] extra is installed)
    return app
