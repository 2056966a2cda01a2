"""Alembic environment: the URL comes from the caller (farm db upgrade) or from the settings."""

from alembic import context

from farm.config import load_settings
from farm.db.models import Base
from farm.db.session import make_database


def run_migrations() -> None:
    url = context.config.attributes.get("database_url") or load_settings().database_url
    database = make_database(url)
    try:
        with database.engine.connect() as connection:
            context.configure(
                connection=connection,
                target_metadata=Base.metadata,
                render_as_batch=database.is_sqlite,  # SQLite alters tables by copying them
                compare_type=True,
            )
            with context.begin_transaction():
                context.run_migrations()
            connection.commit()
    finally:
        database.dispose()


run_migrations()
