"""Fixtures shared by the integration tests."""

from __future__ import annotations

import pytest

from tests.integration.scheduler_farm import SchedulerFarm, own_redis_url
from tests.services import fresh_postgres_database, service_url


@pytest.fixture
def farm(tmp_path):
    """`farm web` on a fresh PostgreSQL database and a Redis database of its own; the test starts
    the workers it needs (SchedulerFarm.start_worker). The web may still be starting when the test
    begins (its first worker starts meanwhile): `farm.url` waits for it, so use it before `farm.web`."""
    with fresh_postgres_database(service_url("database")) as database_url:
        redis_url = own_redis_url()
        farm = SchedulerFarm(tmp_path, database_url, redis_url, redis_url)
        try:
            farm.start_web(wait=False)
            yield farm
        finally:
            farm.close()
