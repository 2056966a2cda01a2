"""Whole numbers from requests, bounded to what the database binds: a larger one is the client's
error (a 400), never an OverflowError from the driver (a 500)."""

from __future__ import annotations

import math

INT32 = 2**31 - 1  # PostgreSQL's integer columns: stored values (limits, indices)
INT64 = 2**63 - 1  # what SQLite binds and PostgreSQL's bigint: values compared in a query


def whole(text: str | None, default: int | None = None, *, bound: int = INT64) -> int | None:
    """`text` as an int within ±bound, `default` when absent; ValueError otherwise."""
    if text is None:
        return default
    value = int(text)
    if not -bound <= value <= bound:
        raise ValueError(f"{text} is out of range")
    return value


def storable(value, *, whole_number: bool, bound: int = INT32) -> bool:
    """Whether a JSON number can be stored in a column: finite, and whole within ±bound if it must be."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return False
    if whole_number:
        return value == int(value) and -bound <= value <= bound
    return True
