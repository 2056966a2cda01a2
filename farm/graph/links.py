"""What counts as a link between nodes in an API-format prompt."""

from __future__ import annotations

from typing import Any


def is_link(value: Any, strict: bool = True) -> bool:
    """A link is `[source_node_id, output_index]`.

    Validation treats any list as a link attempt (`strict=False`: wrong lengths are then
    reported as bad links); execution only follows `[str, int]` pairs, as ComfyUI does.
    """
    if not isinstance(value, list):
        return False
    if not strict:
        return len(value) == 2
    return (
        len(value) == 2
        and isinstance(value[0], str)
        and isinstance(value[1], (int, float))
        and not isinstance(value[1], bool)
    )
