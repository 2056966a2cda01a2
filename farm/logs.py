"""Logging for every farm command: one format, and start-up chatter hidden unless verbose."""

from __future__ import annotations

import logging

# Lines a user starting the farm has no use for: alembic's plugin and migration steps, Celery's
# "Connected to" and "ready.", and the progress of farm up and of the worker supervisor, which
# the start summary replaces (their warnings still show). `--verbose` / FARM_VERBOSE=1 shows them.
QUIET_UNLESS_VERBOSE = (
    "alembic",
    "celery.apps.worker",
    "celery.worker.consumer.connection",
    "farm.up",
    "farm.worker.supervisor",
)


def configure_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in QUIET_UNLESS_VERBOSE:
        logging.getLogger(name).setLevel(logging.NOTSET if verbose else logging.WARNING)
