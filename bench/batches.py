"""Studio batch figures (issue 10): accepting a big sweep, the dispatch decision with many teams and
a deep queue, and listing many batches.

1. accept: a real `farm web` (throwaway PostgreSQL database, Redis database 7) is sent one
   `POST /api/batches` of an N-cell seed sweep (`--cells`, 10,000) of the 7-node model-free
   workflow; the time from sending to the answer (validated, every cell stored, answered), over
   `--repeat` batches (goal <= 2 s for 10,000 cells).
2. dispatch: the decision a free worker's `take_next` makes, in process on the same kind of
   database: `--queued` (100,000) queued prompts spread over 20 teams (with shares) vs the same
   queue in one team, a live worker; each sample is one take_next in a transaction that is rolled
   back (the queue stays as it is), p50/p99 over `--samples`.
3. list: `GET /api/batches` (first page of 50, and a deep page by cursor) with `--batches`
   (10,000) batches in the database, p50/p99 over 50 requests.

A table goes to stderr, then ONE JSON line to stdout; the database is dropped at the end.

    .venv/bin/python bench/batches.py
    .venv/bin/python bench/batches.py --cells 2000 --queued 20000 --batches 2000   # quicker
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
import uuid


from farm_cluster import ROOT, BenchError, Farm, logs_folder, web_farm


def workflow() -> dict:
    """A 7-node model-free workflow (the accept-rate benches' larger one)."""
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "ImageInvert", "inputs": {"image": ["2", 0]}},
        "4": {"class_type": "ImageInvert", "inputs": {"image": ["3", 0]}},
        "5": {"class_type": "ImageInvert", "inputs": {"image": ["4", 0]}},
        "6": {"class_type": "ImageInvert", "inputs": {"image": ["5", 0]}},
        "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": "bench"}},
    }


def summary(values: list[float]) -> dict:
    ordered = sorted(values)
    p99 = ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)]
    return {"p50": round(statistics.median(ordered), 2), "p99": round(p99, 2), "max": round(ordered[-1], 2),
            "n": len(ordered)}


# 1. accepting a sweep ---------------------------------------------------------------------------
def accept(farm: Farm, cells: int, repeat: int) -> dict:
    seconds = []
    for index in range(repeat):
        body = {"workflow": workflow(), "name": f"accept {index}",
                "sweep": {"1.color": {"range": [index * cells, index * cells + cells - 1]}}}
        started = time.perf_counter()
        answer = farm.session.post(f"{farm.url}/api/batches", data=json.dumps(body), timeout=600)
        seconds.append(time.perf_counter() - started)
        if answer.status_code != 201 or answer.json()["cells"] != cells:
            raise BenchError(f"POST /api/batches: {answer.status_code} {answer.text[:500]}")
    return {"cells": cells, "seconds": summary(seconds), "cells_per_s": round(cells / statistics.median(seconds))}


# 2. the dispatch decision -----------------------------------------------------------------------
def fill_queue(database, queued: int, teams: list[str]) -> None:
    """`queued` queued prompts, dealt round-robin to `teams`, inserted in bulk."""
    from sqlalchemy import insert, text

    from farm.db.models import Prompt

    graph = workflow()
    with database.write_connection() as connection:
        for start in range(0, queued, 5000):
            rows = [{"prompt_id": str(uuid.uuid4()), "number": float(n), "front": False, "client_id": None,
                     "prompt": graph, "extra_data": {}, "outputs_to_execute": ["7"], "request_hash": "x",
                     "node_errors": {}, "state": "queued", "attempt": 0, "team": teams[n % len(teams)],
                     "queue_rank": 51}
                    for n in range(start, min(queued, start + 5000))]
            connection.execute(insert(Prompt.__table__).values(created_at=text("CURRENT_TIMESTAMP")), rows)
        connection.execute(text("ANALYZE prompts"))


def decision(database_url: str, settings_env: dict, queued: int, samples: int) -> dict:
    sys.path.insert(0, str(ROOT))
    from sqlalchemy import text

    from farm.config import load_settings
    from farm.db.session import make_database
    from farm.queue.dispatch import Dispatcher, team_book
    from farm.services import teams, workers
    from farm.services.principal import LOCAL

    settings = load_settings(env=settings_env)
    results = {}
    for label, team_count in (("1 team", 1), ("20 teams", 20)):
        database = make_database(database_url)
        try:
            with database.write_connection() as connection:
                connection.execute(text("DELETE FROM prompts"))
                connection.execute(text("DELETE FROM teams WHERE name <> 'default'"))
            names = ["default"] if team_count == 1 else [f"team{index:02d}" for index in range(team_count)]
            for index, name in enumerate(names):
                if name != "default":
                    teams.create_team(database, name, teams.TeamLimits(share=1 + index % 4), LOCAL)
            fill_queue(database, queued, names)
            info = workers.WorkerInfo(name="bench-w", session="s", queue="q", host="h", pid=1, gpu_index=None,
                                      device_name="cpu", device_type="cpu", version="bench")
            workers.register(database, info, settings)
            dispatcher = Dispatcher(database, None, settings, team_book(database))
            timings = []
            for index in range(samples + 5):
                connection = database.writer.connect()
                transaction = connection.begin()
                try:
                    started = time.perf_counter()
                    taken = dispatcher.take_next(connection, "bench-w", frozenset(), frozenset())
                    elapsed = (time.perf_counter() - started) * 1000
                finally:
                    transaction.rollback()
                    connection.close()
                if taken is None:
                    raise BenchError(f"{label}: take_next found nothing in a queue of {queued}")
                if index >= 5:  # the first ones warm the caches
                    timings.append(elapsed)
            results[label] = summary(timings)
        finally:
            database.dispose()
    return {"queued": queued, "ms": results}


# 3. listing batches -----------------------------------------------------------------------------
def fill_batches(database, count: int) -> None:
    import datetime as dt

    from sqlalchemy import insert, text

    from farm.db.models import Batch

    now = dt.datetime.now(dt.timezone.utc)
    with database.write_connection() as connection:
        for start in range(0, count, 5000):
            connection.execute(insert(Batch.__table__), [
                {"id": str(uuid.uuid4()), "team": "default", "name": f"shot {n:05d}", "priority": 50, "paused": False,
                 "cancelled": False, "max_workers": None, "tags": [], "webhook": None, "sweep": {}, "cells": 1,
                 "created_at": now - dt.timedelta(seconds=n), "created_by": "bench"}
                for n in range(start, min(count, start + 5000))])
        connection.execute(text("ANALYZE batches"))


def listing(farm: Farm, database_url: str, count: int) -> dict:
    from farm.db.session import make_database

    database = make_database(database_url)
    try:
        fill_batches(database, count)
    finally:
        database.dispose()
    first, deep = [], []
    cursor = None
    for _ in range(50):
        started = time.perf_counter()
        page = farm.session.get(f"{farm.url}/api/batches?limit=50", timeout=60).json()
        first.append((time.perf_counter() - started) * 1000)
        cursor = page["next"]
    # A deep page: walk 100 pages down by cursor, then time that page.
    for _ in range(100):
        cursor = farm.session.get(f"{farm.url}/api/batches?limit=50&before={cursor}", timeout=60).json()["next"]
    for _ in range(50):
        started = time.perf_counter()
        farm.session.get(f"{farm.url}/api/batches?limit=50&before={cursor}", timeout=60).json()
        deep.append((time.perf_counter() - started) * 1000)
    return {"batches": count, "first_page_ms": summary(first), "page_100_ms": summary(deep)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cells", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--queued", type=int, default=100_000)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--batches", type=int, default=10_000)
    parser.add_argument("--postgres-url", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/7")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    result = {"bench": "batches", "cpus": os.cpu_count()}
    with logs_folder("farm-bench-batches-") as folder:
        with web_farm(folder, "batches", args.postgres_url, args.redis_url) as (farm, database_url, env):
            print(f"bench: accepting {args.cells}-cell sweeps", file=sys.stderr)
            result["accept"] = accept(farm, args.cells, args.repeat)
            print(f"bench: dispatch decisions over {args.queued} queued prompts", file=sys.stderr)
            result["dispatch"] = decision(database_url, env, args.queued, args.samples)
            print(f"bench: listing {args.batches} batches", file=sys.stderr)
            result["list"] = listing(farm, database_url, args.batches)
    accept_s = result["accept"]["seconds"]
    print(f"\naccept a {args.cells}-cell sweep: p50 {accept_s['p50']} s, max {accept_s['max']} s "
          f"({result['accept']['cells_per_s']} cells/s; goal <= 2 s)", file=sys.stderr)
    for label, ms in result["dispatch"]["ms"].items():
        print(f"dispatch decision, {args.queued} queued, {label}: p50 {ms['p50']} ms, p99 {ms['p99']} ms",
              file=sys.stderr)
    for key in ("first_page_ms", "page_100_ms"):
        ms = result["list"][key]
        print(f"GET /api/batches ({args.batches} batches), {key[:-3].replace('_', ' ')}: p50 {ms['p50']} ms, "
              f"p99 {ms['p99']} ms", file=sys.stderr)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
