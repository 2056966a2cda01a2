"""Running the Alembic migrations from code (farm db upgrade, farm up, tests)."""

from __future__ import annotations

import logging
from pathlib import Path

from alembic import command
from alembic.config import Config

import migrations


log = logging.getLogger(__name__)
LOCK_NOT_AVAILABLE = "55P03"  # PostgreSQL: lock_timeout expired


def alembic_config(database_url: str, extra_versions: list[str] | None = None) -> Config:
    config = Config()
    root = Path(migrations.__file__).parent
    config.set_main_option("script_location", str(root))
    config.set_main_option("path_separator", "os")
    if extra_versions:  # migrations kept elsewhere too (a rehearsal of a coming one, in tests)
        import os

        config.set_main_option("version_locations", os.pathsep.join([str(root / "versions"), *extra_versions]))
    config.attributes["database_url"] = database_url
    return config


def at_head(connection) -> bool:
    """Whether the database `connection` reaches has every migration applied (and no unknown one)."""
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    heads = set(ScriptDirectory.from_config(alembic_config("")).get_heads())
    return set(MigrationContext.configure(connection).get_current_heads()) == heads


def upgrade(database_url: str, revision: str = "head", *, lock_timeout_ms: int = 5000, attempts: int = 30,
            extra_versions: list[str] | None = None) -> None:
    """Apply the migrations up to `revision`. On PostgreSQL, a migration that waited `lock_timeout_ms`
    for a lock (a long transaction holds the table) is rolled back and tried again, with backoff,
    up to `attempts` times: the farm keeps serving meanwhile (migrations/env.py says why)."""
    from sqlalchemy.exc import OperationalError
    from tenacity import retry, retry_if_exception, stop_after_attempt, wait_exponential

    def lock_wait(error: BaseException) -> bool:
        waited = isinstance(error, OperationalError) and getattr(error.orig, "sqlstate", None) == LOCK_NOT_AVAILABLE
        if waited:
            log.warning("a migration waited %d ms for a lock another transaction holds; retrying", lock_timeout_ms)
        return waited

    config = alembic_config(database_url, extra_versions)
    config.attributes["lock_timeout_ms"] = lock_timeout_ms
    retry(retry=retry_if_exception(lock_wait), stop=stop_after_attempt(attempts),
          wait=wait_exponential(multiplier=0.5, max=10), reraise=True)(command.upgrade)(config, revision)


def downgrade(database_url: str, revision: str) -> None:
    command.downgrade(alembic_config(database_url), revision)
