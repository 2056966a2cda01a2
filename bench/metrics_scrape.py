"""How long a Prometheus scrape of `/metrics` takes on a busy farm's database (issue 11: goal
<= 50 ms): a real `farm web` (two gunicorn processes, multiprocess metrics) on a throwaway
PostgreSQL database holding `--prompts` (100,000) prompts, a tenth of them queued and the rest
finished, `--batches` (10,000) batches and `--workers` (16) worker rows; `/metrics` is fetched
`--samples` (50) times after 5 unmeasured ones. p50/p99 ms to stderr, then one JSON line.

    .venv/bin/python bench/metrics_scrape.py
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from batches import fill_batches, fill_queue, summary
from farm_cluster import ROOT, BenchError, logs_folder, web_farm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, default=100_000)
    parser.add_argument("--batches", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--samples", type=int, default=50)
    parser.add_argument("--postgres-url", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/7")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    result = {"bench": "metrics_scrape", "cpus": os.cpu_count(), "prompts": args.prompts,
              "batches": args.batches, "workers": args.workers}
    with logs_folder("farm-bench-metrics-") as folder:
        with web_farm(folder, "metrics", args.postgres_url, args.redis_url, web_processes=2) as (farm, database_url, _):
            populate(database_url, args)
            timings = []
            for index in range(args.samples + 5):
                started = time.perf_counter()
                answer = farm.session.get(f"{farm.url}/metrics", timeout=60)
                elapsed = (time.perf_counter() - started) * 1000
                if answer.status_code != 200 or "farm_prompts" not in answer.text:
                    raise BenchError(f"/metrics: {answer.status_code} {answer.text[:300]}")
                if index >= 5:
                    timings.append(elapsed)
            result["scrape_ms"] = summary(timings)
            result["bytes"] = len(answer.content)
    ms = result["scrape_ms"]
    print(f"/metrics with {args.prompts} prompts, {args.batches} batches, {args.workers} workers: "
          f"p50 {ms['p50']} ms, p99 {ms['p99']} ms ({result['bytes']} bytes; goal <= 50 ms)", file=sys.stderr)
    print(json.dumps(result))


def populate(database_url: str, args) -> None:
    from sqlalchemy import text

    from farm.config import load_settings
    from farm.db.session import make_database
    from farm.services import workers

    database = make_database(database_url)
    try:
        fill_queue(database, args.prompts, ["default"])
        with database.write_connection() as connection:  # nine in ten finished
            connection.execute(text("UPDATE prompts SET state = 'success', finished_at = created_at "
                                    "WHERE number >= :queued"), {"queued": args.prompts // 10})
            connection.execute(text("ANALYZE prompts"))
        fill_batches(database, args.batches)
        settings = load_settings(env={"FARM_DATABASE_URL": database_url})
        for index in range(args.workers):
            workers.register(database, workers.WorkerInfo(
                name=f"bench-{index:02d}", session=f"s{index}", queue="q", host="h", pid=index, gpu_index=index,
                device_name="cuda:0 NVIDIA H100", device_type="cuda", version="bench"), settings)
    finally:
        database.dispose()


if __name__ == "__main__":
    main()
