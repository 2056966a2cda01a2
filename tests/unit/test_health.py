"""/healthz and /readyz: open to probes whatever the auth mode; ready only with a migrated database
and a reachable broker."""

from __future__ import annotations

from farm.services.health import Readiness


class Broker:
    def __init__(self, up: bool):
        self.up = up

    def warm_up(self):
        if not self.up:
            raise ConnectionRefusedError("Connection refused")


def test_probes_need_no_key_even_with_auth_on(settings, sender):
    from farm.services.context import make_context
    from web import create_app

    context = make_context(settings.with_overrides(auth="on"), sender=sender)
    try:
        client = create_app(context.settings, context=context).test_client()
        assert client.get("/queue").status_code == 401
        assert client.get("/healthz").get_json() == {"status": "ok"}
        assert client.get("/readyz").get_json() == {"status": "ready", "checks": {"database": "ok", "broker": "ok", "storage": "ok"}}
    finally:
        context.database.dispose()


def test_not_ready_says_why(context, tmp_path):
    from farm.db.session import make_database

    assert Readiness(context.database, Broker(True)).check() == (True, {"database": "ok", "broker": "ok", "storage": "ok"})
    ready, checks = Readiness(context.database, Broker(False)).check()
    assert not ready and checks["broker"] == "unreachable: ConnectionRefusedError: Connection refused"
    empty = make_database(f"sqlite:///{tmp_path / 'empty.db'}")
    try:
        ready, checks = Readiness(empty).check()
        assert not ready and checks["database"] == "migrations are not at head: run `farm db upgrade`"
    finally:
        empty.dispose()
    gone = make_database("postgresql://nobody@127.0.0.1:1/none")
    try:
        ready, checks = Readiness(gone).check()
        assert not ready and checks["database"].startswith("unreachable: OperationalError")
    finally:
        gone.dispose()


def test_readyz_answers_503_in_the_error_shape(client, context):

    app = client.application
    app.extensions["farm_readiness"] = Readiness(context.database, Broker(False))
    answer = client.get("/readyz")
    assert answer.status_code == 503
    body = answer.get_json()
    assert body["error"]["type"] == "service_unavailable" and "broker: unreachable" in body["error"]["details"]
