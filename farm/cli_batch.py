"""`farm submit` and `farm batch ls | show | pause | resume | cancel | retry | priority`: batches from a
shell, against any farm's HTTP API (FARM_URL and FARM_API_KEY, the local farm by default). The
parsers and the API client live here; `farm submit` itself is farm.cli_submit.
"""

from __future__ import annotations

import argparse
import json
import os
import sys



class CliError(Exception):
    """Something the user must fix: printed, exit code 2."""


def add_commands(commands) -> None:
    submit = commands.add_parser("submit", help="submit a workflow (with sweeps) as a batch, follow it, download it")
    submit.add_argument("workflow", help="an API-format workflow file (ComfyUI: Export (API))")
    submit.add_argument("--sweep", action="append", default=[], metavar="NODE.INPUT=VALUES",
                        help="values per cell: 1..100 (a range, both ends in), 0..100..10 (with a step), a,b,c "
                             "(a list), @file.txt (one value per line); repeat for more inputs")
    submit.add_argument("--zip", action="store_true", help="pair the sweeps' values (the i-th of each) instead of "
                                                           "combining every one with every other")
    submit.add_argument("--rows", help="a CSV (header of NODE.INPUT keys) or JSON Lines file: one cell per row")
    submit.add_argument("--name", help="the batch's name")
    submit.add_argument("--priority", type=int, help="0-100 (default 50)")
    submit.add_argument("--max-workers", type=int, help="run at most this many cells at once")
    submit.add_argument("--tags", dest="batch_tags", help="comma-separated worker tags the cells need")
    submit.add_argument("--webhook", help="post the batch's events to this URL")
    submit.add_argument("--dry-run", action="store_true", help="validate and count the cells; store nothing")
    submit.add_argument("--wait", action="store_true", help="follow the batch until it ends (exit 1 if it failed)")
    submit.add_argument("--download", metavar="DIR", help="when it ends, put every output in DIR (implies --wait)")
    _add_client(submit)

    batch = commands.add_parser("batch", help="list, show and act on batches")
    actions = batch.add_subparsers(dest="batch_command", required=True)
    listing = actions.add_parser("ls", help="batches, newest first")
    listing.add_argument("--state", choices=("queued", "running", "paused", "done", "failed", "cancelled"))
    listing.add_argument("--team")
    listing.add_argument("--name", help="names containing this")
    listing.add_argument("--limit", type=int, default=50)
    listing.add_argument("--json", action="store_true")
    _add_client(listing)
    show = actions.add_parser("show", help="one batch: state, counts, ETA, failures, webhooks")
    show.add_argument("id")
    show.add_argument("--json", action="store_true")
    _add_client(show)
    for action, text in (("pause", "hold its pending cells (running ones finish)"), ("resume", "run them again"),
                         ("cancel", "cancel pending cells, interrupt running ones"),
                         ("retry", "queue its failed, interrupted and cancelled cells again")):
        parser = actions.add_parser(action, help=text)
        parser.add_argument("ids", nargs="+", metavar="ID")
        _add_client(parser)
    priority = actions.add_parser("priority", help="set the priority (0-100) of batches")
    priority.add_argument("ids", nargs="+", metavar="ID")
    priority.add_argument("--to", type=int, required=True, dest="priority")
    _add_client(priority)


def _add_client(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", help="the farm (default FARM_URL, else http://FARM_HOST:FARM_PORT)")
    parser.add_argument("--key", help="an API key (default FARM_API_KEY; not needed with auth off)")


class Api:
    """The farm's HTTP API with the key, errors turned into CliError with the farm's message."""

    def __init__(self, base: str, key: str | None):
        import requests

        self.base = base.rstrip("/")
        self.key = key
        self.http = requests.Session()
        if key:
            self.http.headers["Authorization"] = f"Bearer {key}"

    def call(self, method: str, path: str, **kwargs):
        import requests

        try:
            answer = self.http.request(method, self.base + path, timeout=kwargs.pop("timeout", 60), **kwargs)
        except requests.RequestException as error:
            raise CliError(f"cannot reach the farm at {self.base} ({error})") from None
        if answer.status_code >= 400:
            raise CliError(_error_text(answer))
        return answer

    def json(self, method: str, path: str, **kwargs):
        return self.call(method, path, **kwargs).json()


def _error_text(answer) -> str:
    try:
        body = answer.json()
    except ValueError:
        return f"{answer.status_code} {answer.reason}"
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return f"{answer.status_code} {error or answer.reason}"
    text = f"{answer.status_code} {error.get('message')}"
    if error.get("details"):
        text += f": {error['details']}"
    for node_id, entry in (body.get("node_errors") or {}).items():
        for item in entry.get("errors", []):
            text += f"\n  node {node_id} ({entry.get('class_type')}): {item.get('message')}: {item.get('details')}"
    return text


# farm batch -------------------------------------------------------------------------------------
def batch_command(args, base: str, key: str | None) -> int:
    api = Api(base, key)
    if args.batch_command == "ls":
        params = {name: getattr(args, name) for name in ("state", "team", "name", "limit") if getattr(args, name)}
        found = api.json("GET", "/api/batches", params=params)["batches"]
        if args.json:
            print(json.dumps(found, indent=2))
        else:
            print(_table(found))
        return 0
    if args.batch_command == "show":
        found = api.json("GET", f"/api/batches/{args.id}")
        print(json.dumps(found, indent=2) if args.json else _describe(found))
        return 0
    body = {"action": args.batch_command, "ids": args.ids}
    if args.batch_command == "priority":
        body["priority"] = args.priority
    for summary in api.json("POST", "/api/batches/actions", json=body)["batches"]:
        print(f"{summary['id']}: {summary['state']} (priority {summary['priority']})")
    return 0


def _table(batches: list[dict]) -> str:
    if not batches:
        return "no batches"
    columns = ("ID", "NAME", "TEAM", "STATE", "PRIORITY", "CELLS", "PROGRESS", "CREATED")
    rows = [(b["id"], b["name"] or "-", b["team"], b["state"], str(b["priority"]), str(b["cells"]),
             f"{b['progress'] * 100:.0f}%", b["created_at"][:19]) for b in batches]
    widths = [max(len(column), *(len(row[i]) for row in rows)) for i, column in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in rows]
    return "\n".join(line.rstrip() for line in lines)


def _describe(batch: dict) -> str:
    lines = [f"batch {batch['id']} {batch['name']!r} (team {batch['team']}): {batch['state']}, "
             f"priority {batch['priority']}, {batch['cells']} cells, {batch['progress'] * 100:.0f}% done"]
    lines.append("  counts: " + ", ".join(f"{state} {count}" for state, count in sorted(batch["counts"].items())))
    if batch.get("eta_seconds"):
        lines.append(f"  eta: {batch['eta_seconds']:.0f} s")
    for failed in batch.get("workers_failed", []):
        lines.append(f"  worker {failed['worker']}: {failed['failures']} failed cells"
                     + (" (blocked)" if failed["blocked"] else ""))
    for hook in batch.get("webhooks", [])[:10]:
        lines.append(f"  webhook {hook['event']} -> {hook['url']}: {hook['status']} ({hook['last_status']})")
    lines.append(f"  outputs: {len(batch.get('outputs', []))} file(s)")
    return "\n".join(lines)


def run(args, settings) -> int:
    base = args.url or os.environ.get("FARM_URL") or f"http://{settings.host}:{settings.port}"
    key = args.key or os.environ.get("FARM_API_KEY") or None
    try:
        if args.command == "submit":
            from farm.cli_submit import submit

            return submit(args, base, key)
        return batch_command(args, base, key)
    except CliError as error:
        print(f"farm: {error}", file=sys.stderr)
        return 2
