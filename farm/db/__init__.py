"""Database models and sessions (plain SQLAlchemy, shared by web and workers)."""

from farm.db.models import Base, Counter, Prompt, PromptState, Worker
from farm.db.session import Database, make_database

__all__ = ["Base", "Counter", "Database", "Prompt", "PromptState", "Worker", "make_database"]
