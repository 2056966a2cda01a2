"""`farm workers ls | drain | lock | unlock` and `farm dispatch pause | resume`: the operator's
actions from a shell, through the farm's HTTP API (so they work from any host, and the API's
checks apply to them as to every client)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request

COLUMNS = (("NAME", "name"), ("STATE", "state"), ("HOST", "host"), ("DEVICE", "device"), ("PROMPT", "prompt"),
           ("DONE", "prompts_done"), ("FAILED", "prompts_failed"), ("BEAT", "beat"), ("TAGS", "tags"))


def add_commands(commands) -> None:
    workers = commands.add_parser("workers", help="list and steer workers (through the farm's API)")
    actions = workers.add_subparsers(dest="workers_command", required=True)
    listing = actions.add_parser("ls", help="every worker with its state")
    listing.add_argument("--json", action="store_true", help="the API's JSON instead of a table")
    _add_url(listing)
    for action, text in (("drain", "finish the running prompt, then take no more"),
                         ("lock", "take no new prompts until unlocked"),
                         ("unlock", "take prompts again (clears drain, lock and the loss streak)")):
        parser = actions.add_parser(action, help=text)
        parser.add_argument("name", help="the worker's name (farm workers ls)")
        if action == "lock":
            parser.add_argument("--reason", help="shown in farm workers ls and GET /api/workers")
        _add_url(parser)

    dispatch = commands.add_parser("dispatch", help="pause or resume dispatch farm-wide")
    dispatch_actions = dispatch.add_subparsers(dest="dispatch_command", required=True)
    for action, text in (("pause", "queued prompts wait; running ones finish"), ("resume", "dispatch again"),
                         ("status", "whether dispatch is paused")):
        _add_url(dispatch_actions.add_parser(action, help=text))


def _add_url(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", help="the farm's address (default FARM_URL, else http://FARM_HOST:FARM_PORT, as "
                                      "farm up serves)")
    parser.add_argument("--key", help="an admin API key (default FARM_API_KEY); not needed with auth off")


def farm_url(args, settings) -> str:
    return (args.url or os.environ.get("FARM_URL") or f"http://{settings.host}:{settings.port}").rstrip("/")


def api_key(args) -> str | None:
    return getattr(args, "key", None) or os.environ.get("FARM_API_KEY") or None


def run(args, settings) -> int:
    base = farm_url(args, settings)
    global _KEY
    _KEY = api_key(args)
    try:
        if args.command == "dispatch":
            if args.dispatch_command == "status":
                answer = _call(base, "GET", "/api/dispatch")
            else:
                answer = _call(base, "POST", f"/api/dispatch/{args.dispatch_command}")
            print("dispatch paused" if answer["paused"] else "dispatch running")
            return 0
        if args.workers_command == "ls":
            answer = _call(base, "GET", "/api/workers")
            if args.json:
                print(json.dumps(answer, indent=2))
            else:
                print(format_table(answer["workers"]))
                if answer["dispatch"]["paused"]:
                    print("dispatch is paused farm-wide (farm dispatch resume)")
            return 0
        body = {"reason": args.reason} if getattr(args, "reason", None) else None
        worker = _call(base, "POST", f"/api/workers/{urllib.request.quote(args.name, safe='')}/{args.workers_command}",
                       body)
        print(f"{worker['name']}: {worker['state']}")
        return 0
    except ApiError as error:
        print(f"farm: {error}", file=sys.stderr)
        return 1


class ApiError(RuntimeError):
    pass


_KEY: str | None = None  # the key of this command (one command per process)


def _call(base: str, method: str, path: str, body: dict | None = None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if _KEY:
        headers["Authorization"] = f"Bearer {_KEY}"
    request = urllib.request.Request(base + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.load(response)
    except urllib.error.HTTPError as error:
        try:
            detail = json.load(error)["error"]
            message = f"{detail['message']}: {detail['details']}" if detail.get("details") else detail["message"]
        except (ValueError, KeyError, TypeError):
            message = error.reason
        raise ApiError(f"{method} {path}: {error.code} {message}") from None
    except OSError as error:
        raise ApiError(f"cannot reach the farm at {base} ({error})") from None


def format_table(workers: list[dict]) -> str:
    rows = []
    for worker in workers:
        current = worker.get("current_prompt") or {}
        prompt = current.get("prompt_id", "")[:8]
        if current.get("node") is not None:
            prompt += f" node {current['node']}"
        progress = current.get("progress")
        if progress:
            prompt += f" {progress['value']}/{progress['max']}"
        state = worker["state"] + (f" ({worker['lock_reason']})" if worker.get("lock_reason") else "")
        rows.append({**worker, "state": state, "prompt": prompt or "-", "beat": f"{worker['last_heartbeat_age']:.0f}s",
                     "tags": ",".join(worker.get("tags") or []) or "-"})
    widths = [max([len(title)] + [len(str(row[key])) for row in rows]) for title, key in COLUMNS]
    lines = ["  ".join(title.ljust(width) for (title, _), width in zip(COLUMNS, widths))]
    for row in rows:
        lines.append("  ".join(str(row[key]).ljust(width) for (_, key), width in zip(COLUMNS, widths)))
    return "\n".join(line.rstrip() for line in lines) if rows else "no workers have registered"
