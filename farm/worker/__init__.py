"""The worker role: one Celery worker process per GPU that executes prompts."""
