"""Alembic migrations of the farm's database (`farm db upgrade`)."""
