"""Celery wiring and the dispatcher that hands queued prompts to idle workers."""
