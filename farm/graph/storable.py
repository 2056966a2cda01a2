"""Which JSON values a prompt may carry: what the database stores and a browser parses back.

Python's json parser (and ComfyUI's, which is the same) accepts NaN, Infinity and -Infinity,
numbers too large for a double (1e400 becomes Infinity), NUL characters and unpaired surrogates
in strings, and nesting up to the interpreter's recursion limit. PostgreSQL's JSONB refuses the
first and the NULs and surrogates, a browser's JSON.parse refuses NaN and Infinity, and values
nested near the recursion limit make any later recursive step (encoding, repr) fail. So such a
body is refused up front, with the place of the first offending value.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from farm.graph import errors

# Generous: an editor workflow in extra_pnginfo nests about a dozen levels, and this is far below
# the recursion limit, so whatever is accepted can be encoded, hashed and echoed in errors.
MAX_DEPTH = 100
_SHOWN_KEY = 64  # a path names keys up to this many characters...
_SHOWN_STEPS = 12  # ...and its first steps only


@dataclasses.dataclass(frozen=True)
class Problem:
    """The first value that cannot be stored: where it is (keys and list indices) and why."""

    path: tuple
    reason: str

    def where(self, start: int = 0) -> str:
        steps = self.path[start:]
        text = ""
        for step in steps[:_SHOWN_STEPS]:
            if isinstance(step, int):
                text += f"[{step}]"
            else:
                shown = step if len(step) <= _SHOWN_KEY else step[:_SHOWN_KEY] + "..."
                text += f".{shown}" if text else shown
        if len(steps) > _SHOWN_STEPS:
            text += f"... ({len(steps)} levels)"
        return text or "the value"


def first_problem(value: Any, max_depth: int = MAX_DEPTH) -> Problem | None:
    """The first unstorable value in `value` (depth first, in document order), or None."""
    if _clean(value, max_depth):
        return None
    return _locate(value, max_depth)


def _clean(value: Any, max_depth: int) -> bool:
    """Whether nothing in JSON value `value` (what json.loads makes: exact types, hence `type() is`)
    is unstorable: one level at a time, each check over the whole level at once (a 10,000-node
    prompt in about 10 ms, where the walk keeping paths takes 50)."""
    level, depth = [value], 0
    while level:  # `level` holds containers only, but for the value itself
        if depth == 0 and type(value) not in (dict, list):
            return _locate(value, max_depth) is None
        if depth >= max_depth:
            return False
        children = [child for item in level for child in (item.values() if type(item) is dict else item)]
        texts = [key for item in level if type(item) is dict for key in item]
        texts += [child for child in children if type(child) is str]
        if not all(map(math.isfinite, [child for child in children if type(child) is float])):
            return False
        if _text_flaw("".join(texts)):  # joined: one scan in C for all of them
            return False
        level = [child for child in children if type(child) is dict or type(child) is list]
        depth += 1
    return True


def _locate(value: Any, max_depth: int) -> Problem | None:
    """The first unstorable value, with its path: slower, so only run once one is known to exist."""
    stack: list[tuple[tuple, Any]] = [((), value)]  # iterative: the value may nest deeply
    while stack:
        path, item = stack.pop()
        if isinstance(item, float):
            if not math.isfinite(item):
                return Problem(path, f"{_json_name(item)} is not a number JSON can carry (no NaN or Infinity; "
                                     "a number beyond 1.8e308 is read as Infinity)")
        elif isinstance(item, str):
            flaw = _text_flaw(item)
            if flaw:
                return Problem(path, f"text with {flaw}")
        elif isinstance(item, (dict, list)):
            if len(path) >= max_depth:
                return Problem(path, f"nested deeper than {max_depth} levels")
            if isinstance(item, dict):
                for key in item:
                    flaw = _text_flaw(key) if isinstance(key, str) else None
                    if flaw:
                        return Problem(path, f"a key with {flaw}")
                stack.extend(((*path, key), child) for key, child in reversed(item.items()))
            else:
                stack.extend(((*path, index), child) for index, child in reversed(list(enumerate(item))))
    return None


def body_refusal(body: dict) -> tuple[dict, dict] | None:
    """(error, node_errors) refusing a POST /prompt body with an unstorable value, or None.

    A value in a node's inputs is reported on that node, as ComfyUI reports input errors, so an
    editor marks the node; anywhere else the error names the value's place in the body.
    """
    problem = first_problem(body)
    if problem is None:
        return None
    path = problem.path
    if len(path) >= 4 and path[0] == "prompt" and isinstance(path[1], str) and path[2] == "inputs" \
            and isinstance(path[3], str):
        node_id, name = path[1], path[3]
        node = body["prompt"].get(node_id) if isinstance(body["prompt"], dict) else None
        class_type = node.get("class_type") if isinstance(node, dict) else None
        details = f"{problem.where(4)}: {problem.reason}" if len(path) > 4 else problem.reason
        error = errors.invalid_input_value(name, details)
        return (errors.invalid_prompt(f"node '{node_id}' input '{name}': {details}"),
                {node_id: {"errors": [error], "dependent_outputs": [], "class_type": class_type}})
    return errors.invalid_prompt(f"{problem.where()}: {problem.reason}"), {}


def _text_flaw(text: str) -> str | None:
    if "\x00" in text:
        return "a NUL character (\\u0000), which PostgreSQL cannot store"
    if text.isascii():
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "an unpaired surrogate (\\ud800-\\udfff), which is not Unicode text"
    return None


def _json_name(number: float) -> str:
    if math.isnan(number):
        return "NaN"
    return "Infinity" if number > 0 else "-Infinity"
