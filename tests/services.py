"""Access to the real services the integration tests use (FARM_TEST_* URLs), and fresh databases."""

from __future__ import annotations

import contextlib
import os
import socket
import uuid
from urllib.parse import urlparse

import pytest


def service_url(name: str) -> str:
    """The URL in FARM_TEST_<NAME>_URL, or skip the test saying how to enable it."""
    variable = f"FARM_TEST_{name.upper()}_URL"
    url = os.environ.get(variable)
    if not url:
        pytest.skip(f"{variable} is not set (.ci/run sets it and starts the service)")
    parsed = urlparse(url)
    host, port = parsed.hostname or "127.0.0.1", parsed.port
    try:
        socket.create_connection((host, port), timeout=2).close()
    except OSError as exception:
        pytest.fail(f"{variable}={url} is set but unreachable: {exception}")
    return url


@contextlib.contextmanager
def fresh_postgres_database(base_url: str):
    """A new, empty PostgreSQL database on the server of `base_url`, dropped afterwards."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    url = make_url(base_url).set(drivername="postgresql+psycopg")
    name = f"farm_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
