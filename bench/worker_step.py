"""The busy worker's step between two prompts, alone: one transaction that records a prompt's end
and claims the worker's next (farm.services.execution.finish_then with the dispatcher's take_next),
exactly as the worker runs it. On SQLite that transaction holds the only write lock, so its length
is what every submission may wait behind while a worker executes (issue 14's accept rate).

In one process, with no other writer: a migrated farm database (SQLite in a temporary folder, or
with `--postgres URL` a throwaway database on that server, dropped at the end), one registered
worker, `--prompts` prompts of bench/overhead.py's workflow A accepted through the real POST
/prompt, then one step per prompt with outputs and status messages of the shape a SaveImage
prompt records. Prints one JSON line: microseconds per step (median, p90, mean). `--profile`
prints cProfile's top functions to stderr first (`--sort tottime`, `--top 40` to change them):

    .venv/bin/python bench/worker_step.py [--prompts 2000] [--postgres postgresql://postgres@127.0.0.1:5432/test]
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.farm_cluster import database  # noqa: E402
from bench.overhead import workflow_a  # noqa: E402
from farm.config import load_settings  # noqa: E402
from farm.db.migrate import upgrade  # noqa: E402
from farm.db.models import PromptState  # noqa: E402
from farm.services import execution, workers  # noqa: E402
from farm.services.context import make_context  # noqa: E402
from farm.services.webhooks import PromptHooks  # noqa: E402


class KeptSender:
    """The assignment of the first prompt (the worker is idle then); later ones it takes itself."""

    def __init__(self):
        self.sent = []

    def send(self, assignment) -> None:
        self.sent.append(assignment)


def finished_outputs(prompt_id: str, index: int) -> tuple[dict, list]:
    """What a workflow A prompt records: one saved image, and its status messages."""
    image = {"filename": f"bench_{index:05d}_.png", "subfolder": "", "type": "output"}
    now = int(time.time() * 1000)
    messages = [["execution_start", {"prompt_id": prompt_id, "timestamp": now}],
                ["execution_cached", {"nodes": [], "prompt_id": prompt_id, "timestamp": now}],
                ["execution_success", {"prompt_id": prompt_id, "timestamp": now}]]
    return {"3": {"images": [image]}}, messages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=2000)
    parser.add_argument("--postgres", default=None, help="a PostgreSQL server URL (default: SQLite)")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--sort", default="cumulative", help="cProfile's sort key (with --profile)")
    parser.add_argument("--top", type=int, default=25, help="functions shown (with --profile)")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="farm-bench-step-"))
    with database("postgres" if args.postgres else "sqlite", args.postgres, folder) as url:
        upgrade(url)
        print(json.dumps(run(args, folder, url)))


def run(args, folder: Path, database_url: str) -> dict:
    settings = load_settings(env={}, data_dir=str(folder / "data"), models_dir=str(folder / "models"),
                             database_url=database_url)
    sender = KeptSender()
    context = make_context(settings, sender=sender)
    from web import create_app

    client = create_app(settings, context=context).test_client()
    info = workers.WorkerInfo(name="bench-w1", session="s-bench", queue="farm.gpu.bench-w1", host="h", pid=os.getpid(),
                              gpu_index=None, device_name="cpu", device_type="cpu", version="bench")
    workers.register(context.database, info, settings)
    for _ in range(args.prompts + 1):
        response = client.post("/prompt", data=json.dumps({"prompt": workflow_a()}))
        assert response.status_code == 200, response.get_json()
    (first,) = sender.sent
    claimed = execution.claim(context.database, first.prompt_id, first.attempt, info.name)
    hooks = PromptHooks(context.dispatcher.teams)
    dispatcher, files, loaded = context.dispatcher, frozenset(), frozenset()
    times = []
    profile = cProfile.Profile() if args.profile else None
    for index in range(args.prompts):
        outputs, messages = finished_outputs(claimed.prompt_id, index)
        current = claimed
        start = time.perf_counter()
        if profile is not None:
            profile.enable()
        recorded, claimed = execution.finish_then(
            context.database, current, info.name, PromptState.SUCCESS, outputs, messages, None,
            then=lambda connection: dispatcher.take_next(connection, info.name, files, loaded),
            lock_after=settings.lock_after_failures, cell_retries=settings.cell_retries,
            notify=lambda connection: hooks.prompt_ended(connection, current.prompt_id, current.team,
                                                         current.batch_id, current.extra_data, "success",
                                                         outputs, None))
        if profile is not None:
            profile.disable()
        times.append((time.perf_counter() - start) * 1e6)
        assert recorded and claimed is not None, "every step records a prompt and takes the next"
    context.database.dispose()
    times.sort()
    result = {"bench": "worker_step", "database": context.database.engine.dialect.name, "prompts": args.prompts,
              "median_us": round(statistics.median(times), 1), "p90_us": round(times[int(len(times) * 0.9)], 1),
              "mean_us": round(statistics.fmean(times), 1)}
    if profile is not None:
        pstats.Stats(profile, stream=sys.stderr).sort_stats(args.sort).print_stats(args.top)
    return result


if __name__ == "__main__":
    main()
