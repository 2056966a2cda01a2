"""A batch's sweep: which node inputs change per cell, and the cells it makes (pure; no database).

A sweep maps `"<node id>.<input name>"` to a list of values (`["a cat", "a dog"]`) or an integer
range (`{"range": [1, 1000]}`, both ends included, or `{"range": [0, 100, 10]}` with a step). The
axes combine as `product` (every combination, the last axis changing fastest) or `zip` (the i-th
value of every axis; all the same length). Rows (from a CSV or JSON Lines file, or a JSON list of
objects) give the cells directly, one per row, with the same keys. Errors say which key or row is
wrong, in words a user can act on.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import itertools
import json
import math

MODES = ("product", "zip")


class SweepError(ValueError):
    """A sweep that cannot be expanded; the message names the key or row."""


@dataclasses.dataclass(frozen=True)
class Axis:
    key: str  # "<node id>.<input name>"
    node_id: str
    input_name: str
    values: list | range

    def __len__(self) -> int:
        return len(self.values)


@dataclasses.dataclass(frozen=True)
class Sweep:
    """What changes per cell: axes combined by `mode`, or explicit `rows`."""

    axes: tuple[Axis, ...] = ()
    mode: str = "product"
    rows: tuple[dict, ...] | None = None

    @property
    def keys(self) -> list[str]:
        if self.rows is not None:
            return list(dict.fromkeys(key for row in self.rows for key in row))
        return [axis.key for axis in self.axes]

    def count(self) -> int:
        if self.rows is not None:
            return len(self.rows)
        if not self.axes:
            return 1
        if self.mode == "zip":
            return len(self.axes[0])
        return math.prod(len(axis) for axis in self.axes)

    def cells(self):
        """Each cell's values, {key: value}, in order."""
        if self.rows is not None:
            yield from (dict(row) for row in self.rows)
            return
        if not self.axes:
            yield {}
            return
        keys = [axis.key for axis in self.axes]
        combined = zip(*(axis.values for axis in self.axes)) if self.mode == "zip" else \
            itertools.product(*(axis.values for axis in self.axes))
        for values in combined:
            yield dict(zip(keys, values))

    def distinct_values(self) -> dict[str, list]:
        """Per key, the values worth validating: every list value; a range's ends only (an
        integer input accepts everything between two values it accepts)."""
        if self.rows is not None:
            found: dict[str, dict[str, object]] = {}
            for row in self.rows:
                for key, value in row.items():
                    found.setdefault(key, {})[json.dumps(value, sort_keys=True)] = value
            return {key: list(values.values()) for key, values in found.items()}
        result = {}
        for axis in self.axes:
            if isinstance(axis.values, range):
                result[axis.key] = list(dict.fromkeys([axis.values[0], axis.values[-1]]))
            else:
                result[axis.key] = list({json.dumps(v, sort_keys=True): v for v in axis.values}.values())
        return result

    def to_json(self) -> dict:
        """How the batch records its sweep (ranges kept as ranges)."""
        if self.rows is not None:
            return {"rows": len(self.rows)}
        return {"mode": self.mode, "axes": {
            axis.key: ({"range": [axis.values.start, axis.values[-1], axis.values.step]}
                       if isinstance(axis.values, range) else axis.values) for axis in self.axes}}


def split_key(key) -> tuple[str, str]:
    if not isinstance(key, str) or "." not in key:
        raise SweepError(f"sweep key {key!r} must be '<node id>.<input name>', e.g. '3.seed'")
    node_id, input_name = key.split(".", 1)
    if not node_id or not input_name:
        raise SweepError(f"sweep key {key!r} must be '<node id>.<input name>', e.g. '3.seed'")
    return node_id, input_name


def _axis(key: str, spec) -> Axis:
    node_id, input_name = split_key(key)
    if isinstance(spec, list):
        if not spec:
            raise SweepError(f"sweep {key!r} is an empty list: give at least one value")
        return Axis(key, node_id, input_name, spec)
    if isinstance(spec, dict) and set(spec) == {"range"}:
        bounds = spec["range"]
        if not isinstance(bounds, list) or len(bounds) not in (2, 3) or \
                not all(isinstance(b, int) and not isinstance(b, bool) for b in bounds):
            raise SweepError(f"sweep {key!r}: range must be [start, stop] or [start, stop, step] in whole numbers "
                             f"(stop included), got {bounds!r}")
        start, stop, step = (*bounds, 1) if len(bounds) == 2 else bounds
        if step == 0 or (stop - start) * step < 0:
            raise SweepError(f"sweep {key!r}: range {bounds!r} holds no value (check the step's sign)")
        return Axis(key, node_id, input_name, range(start, stop + (1 if step > 0 else -1), step))
    raise SweepError(f"sweep {key!r} must be a list of values or {{\"range\": [start, stop]}}, got {spec!r}")


def parse_sweep(spec, mode: str | None = None, rows=None, max_cells: int = 1_000_000) -> Sweep:
    """The Sweep a batch request describes; SweepError when it is malformed or too large."""
    mode = mode or "product"
    if mode not in MODES:
        raise SweepError(f"mode must be 'product' or 'zip', got {mode!r}")
    if rows is not None:
        if spec:
            raise SweepError("give a sweep or rows, not both")
        if not isinstance(rows, list) or not rows:
            raise SweepError("rows must be a non-empty list of objects")
        for index, row in enumerate(rows):
            if not isinstance(row, dict) or not row:
                raise SweepError(f"row {index} must be an object of '<node id>.<input name>': value")
            for key in row:
                split_key(key)
        if len(rows) > max_cells:
            raise SweepError(f"{len(rows)} rows is more than the {max_cells} cells a batch may hold "
                             "(FARM_MAX_BATCH_CELLS)")
        return Sweep(rows=tuple(rows), mode=mode)
    if spec is None:
        spec = {}
    if not isinstance(spec, dict):
        raise SweepError("sweep must be an object of '<node id>.<input name>': [values] or {\"range\": [a, b]}")
    axes = tuple(_axis(key, value) for key, value in spec.items())
    if mode == "zip" and axes and len({len(axis) for axis in axes}) > 1:
        lengths = ", ".join(f"{axis.key}: {len(axis)}" for axis in axes)
        raise SweepError(f"zip needs every sweep to have the same number of values ({lengths})")
    sweep = Sweep(axes=axes, mode=mode)
    if sweep.count() > max_cells:
        raise SweepError(f"the sweep makes {sweep.count()} cells, more than the {max_cells} a batch may hold "
                         "(FARM_MAX_BATCH_CELLS)")
    return sweep


def parse_rows(text: str, filename: str = "") -> list[dict]:
    """Rows from an uploaded file: JSON Lines (one object per line) or CSV with a header of keys.
    CSV cells that read as JSON numbers, booleans or null become those; anything else stays text."""
    stripped = text.lstrip()
    if filename.endswith((".jsonl", ".ndjson")) or (not filename.endswith(".csv") and stripped.startswith("{")):
        rows = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise SweepError(f"line {number} of {filename or 'the rows file'} is not JSON: {error}") from None
        return rows
    reader = csv.DictReader(io.StringIO(text))
    if not reader.fieldnames:
        raise SweepError(f"{filename or 'the rows file'} has no header line of '<node id>.<input name>' keys")
    return [{key: _csv_value(value) for key, value in row.items() if key is not None and value is not None}
            for row in reader]


def _csv_value(text: str):
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return text
    return value if isinstance(value, (int, float, bool)) or value is None else text


def apply(prompt: dict, values: dict) -> dict:
    """The cell's graph: `prompt` with each swept input set (the nodes it touches copied)."""
    cell = dict(prompt)
    for key, value in values.items():
        node_id, input_name = split_key(key)
        node = cell[node_id]
        cell[node_id] = {**node, "inputs": {**node.get("inputs", {}), input_name: value}}
    return cell
