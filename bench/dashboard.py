"""Dashboard figures (issue 11): server time to render its pages on a big farm, and how long a
worker's event takes to show on an open page.

1. render: a real `farm web` (two gunicorn processes) on a throwaway PostgreSQL database with
   `--prompts` (100,000) prompts (a tenth queued, the rest finished over the last 30 days) and
   `--batches` (10,000) batches; the overview, batches, history and workers pages are fetched
   `--samples` (30) times each after 3 unmeasured: p50/p99 ms from request to the last byte
   (goal <= 300 ms each).
2. live: `farm up --cpu`-like processes (web + one CPU worker, the test node pack) and Debian's
   Chromium driven by Playwright on a batch's page; each cell sleeps `--cell-ms` (300 ms) and
   ends; the page's script re-reads its main section when the event arrives. Latency = the
   moment the page swapped in its new main section (browser clock) minus the cell's
   execution_success timestamp (worker clock; same machine): p50/p99 ms (goal p50 <= 100 ms).

    .venv/bin/python bench/dashboard.py
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import sys
import time
import uuid
from pathlib import Path

from batches import fill_batches, summary, workflow
from farm_cluster import ROOT, BenchError, Farm, Processes, logs_folder, postgres_database, redis_database, web_farm


def populate(database_url: str, prompts: int, batches: int) -> None:
    from sqlalchemy import insert, text

    from farm.db.models import Prompt
    from farm.db.session import make_database

    database = make_database(database_url)
    now = dt.datetime.now(dt.timezone.utc)
    chooser = random.Random(5)
    graph = workflow()
    outputs = {"7": {"images": [{"filename": "bench_00001_.png", "subfolder": "", "type": "output"}]}}
    try:
        with database.write_connection() as connection:
            for start in range(0, prompts, 5000):
                rows = []
                for n in range(start, min(prompts, start + 5000)):
                    queued = n < prompts // 10
                    finished = now - dt.timedelta(seconds=chooser.uniform(0, 30 * 86400))
                    rows.append({"prompt_id": str(uuid.uuid4()), "number": float(n), "front": False, "client_id": None,
                                 "prompt": graph, "extra_data": {}, "outputs_to_execute": ["7"], "request_hash": "x",
                                 "node_errors": {}, "state": "queued" if queued else "success", "attempt": 0 if queued else 1,
                                 "team": "default", "queue_rank": 51, "created_at": finished - dt.timedelta(seconds=30),
                                 "started_at": None if queued else finished - dt.timedelta(seconds=2),
                                 "finished_at": None if queued else finished, "worker": None if queued else "bench-w",
                                 "outputs": None if queued else outputs, "messages": None if queued else []})
                connection.execute(insert(Prompt.__table__), rows)
            connection.execute(text("ANALYZE prompts"))
        fill_batches(database, batches)
    finally:
        database.dispose()


def render(farm: Farm, samples: int) -> dict:
    import requests

    pages = {"overview": "/dashboard/", "batches": "/dashboard/batches", "history": "/dashboard/history",
             "workers": "/dashboard/workers"}
    results = {}
    session = requests.Session()
    for name, path in pages.items():
        timings = []
        for index in range(samples + 3):
            started = time.perf_counter()
            answer = session.get(farm.url + path, timeout=60)
            elapsed = (time.perf_counter() - started) * 1000
            if answer.status_code != 200:
                raise BenchError(f"{path}: {answer.status_code} {answer.text[:300]}")
            if index >= 3:
                timings.append(elapsed)
        results[name] = summary(timings)
    return results


def live(folder: Path, cells: int, cell_ms: int, redis_url: str, postgres_url: str) -> dict:
    import shutil as which

    import requests
    from playwright.sync_api import sync_playwright

    chromium = which.which("chromium") or which.which("chromium-browser")
    if chromium is None:
        raise BenchError("Chromium is not installed (apt-get install chromium)")
    with postgres_database(postgres_url) as database_url:
        env = {"FARM_DATABASE_URL": database_url, "FARM_BROKER_URL": redis_url, "FARM_EVENTS_URL": redis_url,
               "FARM_DATA_DIR": str(folder / "live-data"), "FARM_MODELS_DIR": str(folder / "models"),
               "FARM_NODE_MODULES": "tests.nodepack", "FARM_WORKER_NICE": "0"}
        processes = Processes(folder, env)
        try:
            farm = Farm(processes, "live", database_url)
            farm.start()
            farm.start_workers(1)
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
                page = browser.new_page()
                body = {"workflow": {"1": {"class_type": "Sleep", "inputs": {"value": 0, "ms": cell_ms}},
                                     "2": {"class_type": "Show", "inputs": {"value": ["1", 0]}}},
                        "sweep": {"1.value": {"range": [1, cells]}}}
                farm.set_dispatch(paused=True)
                batch_id = requests.post(f"{farm.url}/api/batches", data=json.dumps(body), timeout=30).json()["batch_id"]
                page.goto(f"{farm.url}/dashboard/batches/{batch_id}")
                page.wait_for_selector("#live.on")
                page.evaluate("window.__swaps = []; document.addEventListener('farm:refreshed', "
                              "() => window.__swaps.push(Date.now()))")
                farm.set_dispatch(paused=False)
                deadline = time.monotonic() + 60 + cells * cell_ms / 1000 * 3
                while requests.get(f"{farm.url}/api/batches/{batch_id}", timeout=10).json()["state"] != "done":
                    if time.monotonic() > deadline:
                        raise BenchError("the live batch did not finish")
                    time.sleep(0.2)
                time.sleep(1.0)
                swaps = sorted(page.evaluate("window.__swaps"))
                browser.close()
            ends = []
            for cell in requests.get(f"{farm.url}/api/batches/{batch_id}/cells?limit=500", timeout=10).json()["cells"]:
                entry = farm.history(cell["prompt_id"])
                ends += [data["timestamp"] for event, data in entry["status"]["messages"]
                         if event == "execution_success"]
            latencies = []
            for end in sorted(ends):
                later = [swap for swap in swaps if swap >= end]
                if later:
                    latencies.append(later[0] - end)
            if not latencies:
                raise BenchError("the page never changed after a cell ended")
            return {"cells": cells, "cell_ms": cell_ms, "swaps": len(swaps), "latency_ms": summary(latencies)}
        finally:
            processes.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, default=100_000)
    parser.add_argument("--batches", type=int, default=10_000)
    parser.add_argument("--samples", type=int, default=30)
    parser.add_argument("--cells", type=int, default=20)
    parser.add_argument("--cell-ms", type=int, default=300)
    parser.add_argument("--postgres-url", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/7")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    result = {"bench": "dashboard", "cpus": os.cpu_count(), "prompts": args.prompts, "batches": args.batches}
    with logs_folder("farm-bench-dashboard-") as folder:
        with web_farm(folder, "render", args.postgres_url, args.redis_url, web_processes=2) as (farm, database_url, _):
            print(f"bench: {args.prompts} prompts, {args.batches} batches", file=sys.stderr)
            populate(database_url, args.prompts, args.batches)
            result["render_ms"] = render(farm, args.samples)
        print("bench: live updates in Chromium", file=sys.stderr)
        with redis_database(args.redis_url) as redis_url:
            result["live"] = live(folder, args.cells, args.cell_ms, redis_url, args.postgres_url)
    for name, ms in result["render_ms"].items():
        print(f"render {name}: p50 {ms['p50']} ms, p99 {ms['p99']} ms (goal <= 300 ms)", file=sys.stderr)
    ms = result["live"]["latency_ms"]
    print(f"event -> page changed: p50 {ms['p50']} ms, p99 {ms['p99']} ms over {ms['n']} cells "
          f"(goal p50 <= 100 ms)", file=sys.stderr)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
