"""Alembic environment: the URL comes from the caller (farm db upgrade) or from the settings.

Each migration commits on its own (its locks are held for that migration only), and on
PostgreSQL waits at most `lock_timeout` for a lock: a migration stuck behind a long transaction
then fails fast and `farm db upgrade` retries it, instead of holding its place in the lock queue
while every submission queues up behind it (see migrations/online.py).
"""

from alembic import context
from sqlalchemy import text

from farm.config import load_settings
from farm.db.models import Base
from farm.db.session import make_database


def run_migrations() -> None:
    url = context.config.attributes.get("database_url") or load_settings().database_url
    lock_timeout = context.config.attributes.get("lock_timeout_ms", 5000)
    database = make_database(url)
    try:
        with database.engine.connect() as connection:
            if connection.dialect.name == "postgresql":
                connection.execute(text(f"SET lock_timeout = {int(lock_timeout)}"))
                connection.commit()
            context.configure(
                connection=connection,
                target_metadata=Base.metadata,
                render_as_batch=database.is_sqlite,  # SQLite alters tables by copying them
                compare_type=True,
                transaction_per_migration=True,
            )
            with context.begin_transaction():
                context.run_migrations()
            connection.commit()
    finally:
        database.dispose()


run_migrations()
