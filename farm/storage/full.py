"""Output storage that is full: told apart from a node's own failures, so the prompt waits.

A disk out of space (ENOSPC), a user or project quota (EDQUOT) or a bucket over its quota is not
the prompt's fault, and usually not for long: the worker puts such a prompt back in the queue,
uncounted, and waits before its next one (farm.worker.runtime), rather than failing every prompt
in the queue while an operator frees space.
"""

from __future__ import annotations

import errno

FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


class StorageFull(OSError):
    """Raised by a node's write when the output storage has no room."""

    exception_type = "StorageFull"  # the execution_error's exception_type


def is_full(error: BaseException) -> bool:
    """Whether `error` says the storage is out of room: an OSError with ENOSPC or EDQUOT, or an
    S3 error whose code names a quota (MinIO's XMinioAdminBucketQuotaExceeded, say)."""
    if isinstance(error, StorageFull):
        return True
    if isinstance(error, OSError) and error.errno in FULL_ERRNOS:
        return True
    response = getattr(error, "response", None)  # botocore's ClientError
    code = ((response or {}).get("Error") or {}).get("Code", "") if isinstance(response, dict) else ""
    return "Quota" in str(code)


def is_full_error(execution_error: dict | None) -> bool:
    """Whether a prompt's execution_error is a StorageFull."""
    return bool(execution_error) and execution_error.get("exception_type") == StorageFull.exception_type


class Backoff:
    """The waits after failures that repeat: `first`, doubling up to `most`; a success starts over.
    (A few lines, not tenacity: the waits span many prompts, not retries of one call.)"""

    def __init__(self, first: float, most: float):
        self.first, self.most = first, most
        self._next = first

    def failed(self) -> float:
        delay, self._next = self._next, min(self._next * 2, self.most)
        return delay

    def succeeded(self) -> None:
        self._next = self.first
