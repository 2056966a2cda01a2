"""The cost of a prompt's cumulative `progress_state` events for graphs of growing size.

For chains of `--nodes` nodes that start and finish back to back (the worst case: quick nodes),
runs the worker's ProgressReporter and encodes every event as the event bus does, and reports
per graph size: worker CPU time (reporting + encoding), snapshots sent and bytes put on the bus.
Two rows per size: the farm's reporter (per-node JSON parts, byte budget), and for reference
the naive cumulative encoding ComfyUI's protocol implies (every node of every snapshot encoded
again, every snapshot sent), measured in the same run.

    .venv/bin/python bench/progress_state.py [--nodes 10,100,500,1500]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def naive(nodes: int, encode) -> tuple[float, int, int]:
    """Every snapshot of the chain, each entry copied and encoded again."""
    entries: dict[str, dict] = {}
    sent = size = 0
    started = time.perf_counter()
    for index in range(nodes):
        node = str(index)
        for state, value in (("running", 0), ("finished", 1)):
            entries[node] = {"value": value, "max": 1, "state": state, "node_id": node, "prompt_id": "p",
                             "display_node_id": node, "parent_node_id": None, "real_node_id": node}
            data = {"prompt_id": "p", "nodes": {key: dict(entry) for key, entry in entries.items()}}
            size += len(encode("progress_state", data, "p", "c"))
            sent += 1
    return time.perf_counter() - started, sent, size


def farm(nodes: int, encode) -> tuple[float, int, int]:
    from farm.graph.progress import ProgressReporter

    out: list[int] = []
    reporter = ProgressReporter(lambda event_type, data: out.append(len(encode(event_type, data, "p", "c"))),
                                "p", previews=False)
    started = time.perf_counter()
    for index in range(nodes):
        reporter.start(str(index))
        reporter.finish(str(index))
    reporter.flush()
    return time.perf_counter() - started, len(out), sum(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", default="10,100,500,1500")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from farm.events import encode_event

    rows = []
    for nodes in (int(n) for n in args.nodes.split(",")):
        for name, run in (("farm", farm), ("naive", naive)):
            seconds, sent, size = run(nodes, encode_event)
            rows.append({"nodes": nodes, "reporter": name, "cpu_ms": round(seconds * 1000, 2),
                         "snapshots": sent, "bus_mb": round(size / 1e6, 3)})
            print(f"{nodes:5d} nodes  {name:5s}  {rows[-1]['cpu_ms']:9.2f} ms  {sent:5d} snapshots  "
                  f"{rows[-1]['bus_mb']:9.3f} MB", file=sys.stderr)
    print(json.dumps({"bench": "progress_state", "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
