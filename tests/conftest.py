"""Shared fixtures: settings in a temporary folder, migrated databases, the web app."""

from __future__ import annotations

import shutil

import pytest

from farm.config import load_settings
from farm.db.migrate import upgrade
from tests.services import service_url


class RecordingSender:
    """Stands in for the broker where a test is about SQL dispatch, not delivery."""

    def __init__(self):
        self.sent = []
        self.fail = False

    def send(self, assignment):
        if self.fail:
            raise ConnectionError("broker down")
        self.sent.append(assignment)


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory):
    path = tmp_path_factory.mktemp("template") / "farm.db"
    upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture(scope="session")
def postgres_databases():
    """Migrated PostgreSQL databases, one per test, made ahead of need (MigratedPostgresDatabases)."""
    from tests.services import MigratedPostgresDatabases

    databases = MigratedPostgresDatabases(service_url("database"))
    yield databases
    databases.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path, sqlite_template):
    """A migrated, empty database: SQLite always, PostgreSQL when FARM_TEST_DATABASE_URL is set."""
    if request.param == "sqlite":
        path = tmp_path / "data" / "farm.db"
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(sqlite_template, path)
        yield f"sqlite:///{path}"
    else:
        service_url("database")  # skips, saying why, where no PostgreSQL is set
        with request.getfixturevalue("postgres_databases").database() as url:
            yield url


@pytest.fixture
def settings(tmp_path, database_url):
    return load_settings(env={}, data_dir=str(tmp_path / "data"), models_dir=str(tmp_path / "models"),
                         database_url=database_url)


@pytest.fixture
def sender():
    return RecordingSender()


@pytest.fixture
def context(settings, sender):
    from farm.services.context import make_context

    context = make_context(settings, sender=sender)
    yield context
    context.database.dispose()


@pytest.fixture
def client(settings, context):
    from web import create_app

    return create_app(settings, context=context).test_client()


class RecordingControl:
    """Stands in for Celery remote control where a test is about which prompts get interrupted."""

    def __init__(self):
        self.interrupted = []
        self.freed = []

    def interrupt(self, prompt_id, worker_name, host):
        self.interrupted.append((prompt_id, worker_name))

    def free(self, unload_models, free_memory):
        self.freed.append((unload_models, free_memory))


@pytest.fixture
def control(context):
    context.control = RecordingControl()
    return context.control


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A moto S3 server for the whole session (tests make buckets of their own)."""
    from tests.s3_server import running_s3_server

    with running_s3_server(tmp_path_factory.mktemp("s3") / "moto.log") as server:
        yield server


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    """The AWS variables that reach `s3_server` from this process and its children."""
    from tests.s3_server import CREDENTIALS

    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    return {**CREDENTIALS}
