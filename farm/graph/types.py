"""Type compatibility of a link's source output and the input it feeds (spec §5.3, newer rule)."""

from __future__ import annotations


def types_compatible(received, expected) -> bool:
    """`*` on either side matches anything; otherwise the comma-separated sets must intersect.

    A combo output (a list of choices) feeds a combo input or a `COMBO` input.
    """
    if received == expected:
        return True
    if isinstance(expected, list):
        return isinstance(received, list) or received in ("*", "COMBO")
    if isinstance(received, list):
        return expected in ("*", "COMBO")
    if not isinstance(received, str) or not isinstance(expected, str):
        return False
    received_set = {item.strip() for item in received.split(",")}
    expected_set = {item.strip() for item in expected.split(",")}
    if "*" in received_set or "*" in expected_set:
        return True
    return bool(received_set & expected_set)
