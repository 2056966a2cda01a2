"""Deep queues and long histories (issue 14): the read and submit paths with 1,000,000 ended prompts
and 100,000 queued ones in PostgreSQL.

Creates a throwaway PostgreSQL database (`--database-url`, default the local server, which must
let this user create databases), runs the migrations, and fills it in SQL: `--history` ended
prompts (90 % success, 7 % error, 3 % interrupted; three teams; 5,000 workflow ids; a 7-node
graph each, created 30 ms apart) and then `--queued` queued ones, then VACUUM ANALYZE as
autovacuum would. Requests go through the Flask app in this process (the test client: no
network), so the times are server times. For each route: p50 and p99 over `--runs` requests after
a warm-up, against the 20 ms goal. Then:

- submit p50/p99 (POST /prompt, `--submits` each) with an empty queue (in a second database of
  the same history) and with `--queued` waiting: the goal is the deep queue's p99 within 10 % of
  the empty one's;
- clearing the deep queue (POST /queue {"clear": true}): one statement, its time;
- pruning the history (FARM_HISTORY_RETENTION_DAYS): rows deleted per second over one prune call.

The databases are dropped at the end (`--keep` keeps them). A table goes to stderr and ONE JSON
line to stdout. About 4 minutes on 2 cores with the defaults.

    .venv/bin/python bench/scale.py
    .venv/bin/python bench/scale.py --history 100000 --queued 10000 --runs 20   # quick look
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import create_engine, text  # noqa: E402
from tests.services import fresh_postgres_database  # noqa: E402

GRAPH = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 255}},
    "2": {"class_type": "ImageScale", "inputs": {"image": ["1", 0], "upscale_method": "nearest-exact",
                                                 "width": 32, "height": 32, "crop": "disabled"}},
    "3": {"class_type": "ImageInvert", "inputs": {"image": ["2", 0]}},
    "4": {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 32, "batch_size": 1, "color": 0}},
    "5": {"class_type": "ImageBlend", "inputs": {"image1": ["3", 0], "image2": ["4", 0], "blend_factor": 0.5,
                                                 "blend_mode": "normal"}},
    "6": {"class_type": "ImageScale", "inputs": {"image": ["5", 0], "upscale_method": "nearest-exact",
                                                 "width": 64, "height": 64, "crop": "disabled"}},
    "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": "scale"}},
}
OUTPUTS = {"7": {"images": [{"filename": "scale_00001_.png", "subfolder": "", "type": "output"}]}}
GOAL_MS = 20.0


def fill(url: str, history: int, queued: int) -> None:
    """The rows, in SQL (fast), in chunks of 100,000 (each a transaction of its own)."""
    engine = create_engine(url)
    graph, outputs = json.dumps(GRAPH), json.dumps(OUTPUTS)
    ended = (
        "INSERT INTO prompts (prompt_id, number, front, client_id, prompt, extra_data, outputs_to_execute, "
        "request_hash, node_errors, state, attempt, worker, created_at, started_at, finished_at, outputs, "
        "messages, team, priority, queue_rank, retries, workflow_id) "
        "SELECT md5('h' || i)::uuid::text, i, false, 'bench', CAST(:graph AS jsonb), "
        "jsonb_build_object('client_id', 'bench', 'extra_pnginfo', jsonb_build_object('workflow', "
        "jsonb_build_object('id', 'wf-' || (i % 5000)))), '[\"7\"]', '', '{}', "
        "CASE WHEN i % 100 < 90 THEN 'success' WHEN i % 100 < 97 THEN 'error' ELSE 'interrupted' END, 1, 'w' || (i % 8), "
        "t0 + i * interval '30 ms', t0 + i * interval '30 ms' + interval '1 s', "
        "t0 + i * interval '30 ms' + interval '3 s', CAST(:outputs AS jsonb), "
        "jsonb_build_array(jsonb_build_array('execution_start', jsonb_build_object('timestamp', 1)), "
        "jsonb_build_array('execution_success', jsonb_build_object('timestamp', 2))), "
        "'team-' || (i % 3), 50, 51, 0, 'wf-' || (i % 5000) "
        "FROM generate_series(CAST(:start AS bigint), CAST(:stop AS bigint)) AS i, (SELECT now() - interval '400 days' AS t0) AS origin")
    waiting = (
        "INSERT INTO prompts (prompt_id, number, front, client_id, prompt, extra_data, outputs_to_execute, "
        "request_hash, node_errors, state, attempt, created_at, team, priority, queue_rank, retries) "
        "SELECT md5('q' || i)::uuid::text, CAST(:base AS bigint) + i, false, 'bench', CAST(:graph AS jsonb), '{}', '[\"7\"]', '', '{}', "
        "'queued', 0, now(), 'team-' || (i % 3), 50, 51, 0 FROM generate_series(CAST(:start AS bigint), CAST(:stop AS bigint)) AS i")
    for statement, total, extra in ((ended, history, {"outputs": outputs}), (waiting, queued, {"base": history})):
        for start in range(0, total, 100_000):
            with engine.begin() as connection:
                connection.execute(text(statement), {"graph": graph, "start": start,
                                                     "stop": min(start + 100_000, total) - 1, **extra})
    with engine.begin() as connection:
        connection.execute(text("SELECT setval('prompt_number_seq', :n)"), {"n": history + queued})
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text("VACUUM ANALYZE prompts"))
    engine.dispose()


class NoBroker:
    def send(self, assignment):  # no worker is registered: nothing is ever sent
        raise AssertionError("no worker should be dispatched to")


def app_for(url: str, data_dir: str):
    from farm.config import load_settings
    from farm.services.context import make_context
    from web import create_app

    settings = load_settings(env={}, data_dir=data_dir, models_dir=str(Path(data_dir) / "models"), database_url=url)
    context = make_context(settings, sender=NoBroker())
    return create_app(settings, context=context).test_client(), context


def timed(client, method: str, path: str, runs: int, body=None) -> dict:
    def once() -> float:
        started = time.perf_counter()
        response = client.open(path, method=method, data=None if body is None else json.dumps(body(i)))
        elapsed = (time.perf_counter() - started) * 1000
        assert response.status_code == 200, (path, response.status_code, response.get_data()[:300])
        return elapsed

    for i in range(3):
        once()
    samples = []
    for i in range(runs):
        samples.append(once())
    samples.sort()
    return {"p50_ms": round(statistics.median(samples), 2), "p99_ms": round(samples[min(len(samples) - 1, int(len(samples) * 0.99))], 2),
            "max_ms": round(samples[-1], 2)}


def submit_body(i: int) -> dict:
    graph = json.loads(json.dumps(GRAPH))
    graph["1"]["inputs"]["color"] = i % 0xFFFFFF
    return {"prompt": graph, "client_id": "bench"}


def cursor_deep(url: str, depth: int) -> str:
    """The next_cursor a client reaches after `depth` jobs, newest first (built from the row there)."""
    from farm.services.jobs import encode_cursor

    engine = create_engine(url)
    with engine.connect() as connection:
        created_at, prompt_id = connection.execute(text(
            "SELECT created_at, prompt_id FROM prompts ORDER BY created_at DESC, prompt_id DESC OFFSET :n LIMIT 1"),
            {"n": depth}).one()
    engine.dispose()
    return encode_cursor(created_at, prompt_id)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--history", type=int, default=1_000_000)
    parser.add_argument("--queued", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--submits", type=int, default=300)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()

    from farm.db.migrate import upgrade

    results: dict = {"history": args.history, "queued": args.queued, "routes": {}}
    with tempfile.TemporaryDirectory() as data_dir, fresh_postgres_database(args.database_url, args.keep) as url, \
            fresh_postgres_database(args.database_url, args.keep) as empty_url:
        for target, queued in ((url, args.queued), (empty_url, 0)):
            upgrade(target)
            started = time.perf_counter()
            fill(target, args.history, queued)
            print(f"filled {args.history:,} ended + {queued:,} queued in {time.perf_counter() - started:.0f} s",
                  file=sys.stderr)

        client, context = app_for(url, data_dir)
        some_id = str(uuid.UUID(hashlib.md5(f"h{args.history // 3}".encode()).hexdigest()))  # as fill() names it
        deep = cursor_deep(url, int(args.history * 0.9))
        routes = {
            "GET /history?max_items=50": "/history?max_items=50",
            "GET /history/<id>": f"/history/{some_id}",
            f"GET /history?offset={args.history // 2}&max_items=50": f"/history?offset={args.history // 2}&max_items=50",
            "GET /api/jobs": "/api/jobs",
            "GET /api/jobs (deep page by cursor)": f"/api/jobs?cursor={deep}",
            "GET /api/jobs?status=completed": "/api/jobs?status=completed",
            "GET /api/jobs?status=failed": "/api/jobs?status=failed",
            "GET /api/jobs?status=cancelled,failed": "/api/jobs?status=cancelled,failed",
            "GET /api/jobs?status=pending": "/api/jobs?status=pending",
            "GET /api/jobs?workflow_id=wf-77": "/api/jobs?workflow_id=wf-77",
            "GET /api/jobs?workflow_id=wf-77 (deep by cursor)": None,
            "GET /api/jobs/<id>": f"/api/jobs/{some_id}",
            f"GET /queue ({args.queued:,} queued)": "/queue",
            "GET /prompt (queue_remaining)": "/prompt",
        }
        per_page = 50 if args.history >= 500_000 else 1  # wf-77 has history / 5,000 jobs
        first = client.get(f"/api/jobs?workflow_id=wf-77&limit={per_page}").get_json()
        routes["GET /api/jobs?workflow_id=wf-77 (deep by cursor)"] = (
            f"/api/jobs?workflow_id=wf-77&limit={per_page}&cursor={first['pagination']['next_cursor']}")
        for name, path in routes.items():
            results["routes"][name] = timed(client, "GET", path, args.runs)

        # Interleaved, one submission to each in turn: the machine's noise falls on both alike.
        empty_client, empty_context = app_for(empty_url, data_dir)
        samples: dict[str, list[float]] = {"submit_deep": [], "submit_empty": []}
        for i in range(args.submits + 3):
            for name, target in (("submit_deep", client), ("submit_empty", empty_client)):
                started = time.perf_counter()
                answer = target.post("/prompt", data=json.dumps(submit_body(i)))
                assert answer.status_code == 200, answer.get_data()[:300]
                if i >= 3:
                    samples[name].append((time.perf_counter() - started) * 1000)
        for name, values in samples.items():
            values.sort()
            results[name] = {"p50_ms": round(statistics.median(values), 2),
                             "p99_ms": round(values[min(len(values) - 1, int(len(values) * 0.99))], 2),
                             "max_ms": round(values[-1], 2)}
        results["submit_p99_ratio"] = round(results["submit_deep"]["p99_ms"] / results["submit_empty"]["p99_ms"], 3)

        started = time.perf_counter()
        assert client.post("/queue", data=json.dumps({"clear": True})).status_code == 200
        results["clear_queue_s"] = round(time.perf_counter() - started, 2)
        assert client.get("/prompt").get_json()["exec_info"]["queue_remaining"] == 0

        from farm.services import retention

        started = time.perf_counter()
        pruned = retention.prune(context.database, 200, max_rows=100_000)
        seconds = time.perf_counter() - started
        results["prune"] = {"rows": pruned.prompts, "seconds": round(seconds, 2),
                            "rows_per_s": round(pruned.prompts / seconds)}
        context.database.dispose()
        empty_context.database.dispose()

    width = max(len(name) for name in results["routes"])
    print(f"\n{'route':<{width}}  p50 ms  p99 ms  goal {GOAL_MS:.0f} ms", file=sys.stderr)
    for name, figures in results["routes"].items():
        verdict = "ok" if figures["p99_ms"] <= GOAL_MS else "OVER"
        print(f"{name:<{width}}  {figures['p50_ms']:6.2f}  {figures['p99_ms']:6.2f}  {verdict}", file=sys.stderr)
    print(f"submit, empty queue: p50 {results['submit_empty']['p50_ms']} ms, p99 {results['submit_empty']['p99_ms']} ms; "
          f"{args.queued:,} queued: p50 {results['submit_deep']['p50_ms']} ms, p99 {results['submit_deep']['p99_ms']} ms "
          f"(p99 ratio {results['submit_p99_ratio']})", file=sys.stderr)
    print(f"clear {args.queued:,} queued: {results['clear_queue_s']} s; prune: {results['prune']}", file=sys.stderr)
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
