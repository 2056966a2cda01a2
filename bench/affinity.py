"""Checkpoint loads with model affinity vs strict queue order (issue 9's third figure).

Three tiny random-weight SD1 checkpoints (the real single-file layout), two CPU workers whose model
cache holds one checkpoint (FARM_MODEL_CACHE_BYTES = 1.5 x one loaded checkpoint; a CPU worker
has no host-RAM tier, so an evicted checkpoint is loaded again from disk), and an interleaved
workload: the seed workflow on checkpoints a, b, c, a, b, c ... queued at once (dispatch paused
while it is submitted). Run twice on fresh farms: FARM_AFFINITY_LOOKAHEAD=0 (queue order) and the
default lookahead, with the same bound on how long affinity may make a prompt wait. Reported:
checkpoint loads (the workers' "loaded <file>" log lines), the wall time from resume to the last
prompt's end, queue wait p50/p95 (dispatch - created), and the longest wait of a prompt affinity
passed over, counted from when it was first passed (must stay near the bound).

    .venv/bin/python bench/affinity.py                  # 30 prompts, about a minute on 2 cores
    .venv/bin/python bench/affinity.py --prompts 60 --max-wait 10

Prints a table on stderr and one JSON line on stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.farm_cluster import Farm, Processes, postgres_database, redis_database  # noqa: E402

CHECKPOINTS = ("a.safetensors", "b.safetensors", "c.safetensors")


def make_models(folder: Path) -> int:
    """The three checkpoints; returns the bytes one of them takes loaded."""
    from farm.engine.model_cache import ModelCache
    from tests.engine.tiny_checkpoints import make_sd1

    (folder / "checkpoints").mkdir(parents=True)
    for seed, name in enumerate(CHECKPOINTS):
        make_sd1(folder / "checkpoints" / name, seed=seed)
    cache = ModelCache(folder, device="cpu")
    cache.checkpoint(folder / "checkpoints" / CHECKPOINTS[0])
    return cache.report()[0]["bytes"]


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(share * len(ordered)))], 3) if ordered else 0.0


def run(mode: str, lookahead: int, args, models: Path, budget: int, folder: Path) -> dict:
    from tests.workflows import seed_workflow

    with contextlib.ExitStack() as stack:
        redis_url = stack.enter_context(redis_database(args.redis_url))
        database_url = stack.enter_context(postgres_database(args.postgres_url))
        env = {"FARM_DATABASE_URL": database_url, "FARM_BROKER_URL": redis_url, "FARM_EVENTS_URL": redis_url,
               "FARM_DATA_DIR": str(folder / mode / "data"), "FARM_MODELS_DIR": str(models),
               "FARM_MODEL_CACHE_BYTES": str(budget), "FARM_AFFINITY_LOOKAHEAD": str(lookahead),
               "FARM_AFFINITY_MAX_WAIT_SECONDS": str(args.max_wait), "FARM_WORKER_NICE": "0",
               "FARM_HEARTBEAT_SECONDS": "1"}
        (folder / mode).mkdir()
        processes = Processes(folder, env)
        stack.callback(processes.stop)
        farm = Farm(processes, mode, database_url)
        farm.start()
        workers = farm.start_workers(args.workers)
        farm.session.post(f"{farm.url}/api/dispatch/pause", timeout=10)
        ids = []
        for index in range(args.prompts):
            body = {"prompt": seed_workflow(CHECKPOINTS[index % 3], seed=index, steps=args.steps, size=64,
                                            prefix=f"{mode}{index}")}
            ids.append(farm.session.post(f"{farm.url}/prompt", data=json.dumps(body), timeout=30).json()["prompt_id"])
        started = time.monotonic()
        farm.session.post(f"{farm.url}/api/dispatch/resume", timeout=10)
        farm.wait(lambda: farm.queue_remaining() == 0, 600, "the workload to finish", every=0.05)
        wall = time.monotonic() - started
        statuses = {farm.history(prompt_id)["status"]["status_str"] for prompt_id in ids}
        rows = farm.prompt_rows(ids)
        loads = sum(len(re.findall(r"farm\.engine\.model_cache: loaded ",
                                   (folder / f"{mode}-worker-1-{index}.log").read_text(errors="replace")))
                    for index in range(len(workers)))
    queue_waits = [(row.dispatched_at - row.created_at).total_seconds() for row in rows]
    passed_waits = [(row.started_at - row.passed_at).total_seconds() for row in rows if row.passed_at is not None]
    return {"lookahead": lookahead, "prompts": len(ids), "statuses": sorted(statuses), "checkpoint_loads": loads,
            "wall_s": round(wall, 2), "queue_wait_s": {"p50": percentile(queue_waits, 0.5),
                                                        "p95": percentile(queue_waits, 0.95)},
            "passed_over": len(passed_waits), "longest_passed_wait_s": round(max(passed_waits, default=0.0), 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=30)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--max-wait", type=float, default=10.0, help="FARM_AFFINITY_MAX_WAIT_SECONDS (default 10)")
    parser.add_argument("--postgres-url", default=os.environ.get("FARM_TEST_DATABASE_URL",
                                                                 "postgresql://postgres@127.0.0.1:5432/test"))
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/7")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="farm-bench-affinity-"))
    budget = int(make_models(folder / "models") * 1.5)
    result = {"bench": "affinity", "workers": args.workers, "checkpoints": len(CHECKPOINTS),
              "model_cache_bytes": budget, "max_wait_s": args.max_wait, "cpus": os.cpu_count()}
    for mode, lookahead in (("fifo", 0), ("affinity", 16)):
        print(f"bench: {mode}: {args.prompts} prompts on {args.workers} workers", file=sys.stderr)
        result[mode] = run(mode, lookahead, args, folder / "models", budget, folder)
    fifo, affine = result["fifo"], result["affinity"]
    result["loads_ratio"] = round(affine["checkpoint_loads"] / max(fifo["checkpoint_loads"], 1), 3)
    result["wall_ratio"] = round(affine["wall_s"] / fifo["wall_s"], 3)
    print(f"\n{'mode':10} {'loads':>6} {'wall s':>7} {'wait p50':>9} {'wait p95':>9} {'passed':>7} {'longest':>8}",
          file=sys.stderr)
    for mode in ("fifo", "affinity"):
        r = result[mode]
        print(f"{mode:10} {r['checkpoint_loads']:>6} {r['wall_s']:>7} {r['queue_wait_s']['p50']:>9} "
              f"{r['queue_wait_s']['p95']:>9} {r['passed_over']:>7} {r['longest_passed_wait_s']:>8}", file=sys.stderr)
    print(f"affinity/fifo: loads {result['loads_ratio']}, wall {result['wall_ratio']} (logs in {folder})",
          file=sys.stderr)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
