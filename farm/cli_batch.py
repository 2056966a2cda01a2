"""`farm submit` and `farm batch ls | show | pause | resume | cancel | retry | priority`: a batch from a
shell, against any farm's HTTP API (FARM_URL and FARM_API_KEY, the local farm by default).

`farm submit` posts one API-format workflow with sweeps, follows its cells live on /ws with a
progress bar (overall, and each running cell's steps), checks the batch's own counts every few
seconds (so a dropped socket or a retried cell never leaves it waiting forever), and can then
download every output into a folder.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import threading
import time
import uuid
import zipfile
from pathlib import Path

FINAL_STATES = ("done", "failed", "cancelled")
CELL_ENDS = ("execution_success", "execution_error", "execution_interrupted")
CHECK_SECONDS = 2.0


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


# farm submit ------------------------------------------------------------------------------------
def load_workflow(path: str) -> dict:
    try:
        workflow = json.loads(Path(path).read_text())
    except OSError as error:
        raise CliError(f"cannot read {path}: {error.strerror}") from None
    except json.JSONDecodeError as error:
        raise CliError(f"{path} is not JSON: {error}") from None
    if isinstance(workflow, dict) and isinstance(workflow.get("nodes"), list) and "links" in workflow:
        # The UI format holds widget values by position, not by input name: turning it into the
        # API format needs every node's schema and the frontend's rules, and a guess would run
        # something other than what the artist built. Ask for the API format instead.
        raise CliError(f"{path} is a UI-format workflow (ComfyUI's Save). Export it in the API format "
                       "(Workflow > Export (API) in ComfyUI) and submit that file")
    if not isinstance(workflow, dict) or not workflow or not all(
            isinstance(node, dict) and "class_type" in node for node in workflow.values()):
        raise CliError(f"{path} is not an API-format workflow (an object of nodes with class_type and inputs)")
    return workflow


def parse_sweep_arg(text: str):
    """`NODE.INPUT=VALUES` -> (key, list or {"range": [...]})."""
    key, sep, spec = text.partition("=")
    if not sep or "." not in key:
        raise CliError(f"--sweep {text!r}: write NODE.INPUT=VALUES, e.g. 3.seed=1..100")
    spec = spec.strip()
    if spec.startswith("@"):
        try:
            lines = Path(spec[1:]).read_text().splitlines()
        except OSError as error:
            raise CliError(f"--sweep {key}: cannot read {spec[1:]}: {error.strerror}") from None
        values = [line for line in lines if line.strip()]
        if not values:
            raise CliError(f"--sweep {key}: {spec[1:]} has no values")
        return key, values
    if spec.startswith("["):
        try:
            values = json.loads(spec)
        except json.JSONDecodeError as error:
            raise CliError(f"--sweep {key}: {error}") from None
        return key, values
    if ".." in spec:
        parts = spec.split("..")
        try:
            numbers = [int(part) for part in parts]
        except ValueError:
            raise CliError(f"--sweep {key}: a range is START..STOP or START..STOP..STEP in whole numbers") from None
        if len(numbers) not in (2, 3):
            raise CliError(f"--sweep {key}: a range is START..STOP or START..STOP..STEP")
        return key, {"range": numbers}
    return key, [_value(part) for part in spec.split(",")]


def _value(text: str):
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return text
    return value if isinstance(value, (int, float, bool)) else text


def submit(args, base: str, key: str | None) -> int:
    api = Api(base, key)
    workflow = load_workflow(args.workflow)
    client_id = f"farm-cli-{uuid.uuid4().hex[:12]}"
    body: dict = {"workflow": workflow, "client_id": client_id}
    sweep = dict(parse_sweep_arg(text) for text in args.sweep)
    if sweep:
        body["sweep"] = sweep
    if args.zip:
        body["mode"] = "zip"
    for name, value in (("name", args.name), ("priority", args.priority), ("max_workers", args.max_workers),
                        ("webhook", args.webhook)):
        if value is not None:
            body[name] = value
    if args.batch_tags:
        body["tags"] = [tag.strip() for tag in args.batch_tags.split(",") if tag.strip()]
    if args.dry_run:
        body["dry_run"] = True
    if args.rows:
        try:
            rows = Path(args.rows).read_bytes()
        except OSError as error:
            raise CliError(f"cannot read {args.rows}: {error.strerror}") from None
        answer = api.json("POST", "/api/batches", data={"batch": json.dumps(body)},
                          files={"rows": (Path(args.rows).name, rows)})
    else:
        answer = api.json("POST", "/api/batches", json=body)
    if args.dry_run:
        estimate = answer.get("estimate") or {}
        seconds = estimate.get("prompt_seconds")
        print(f"valid: {answer['cells']} cells" + (f", about {seconds:.0f} s of worker time" if seconds else ""))
        return 0
    batch_id = answer["batch_id"]
    print(f"batch {batch_id}: {answer['cells']} cells queued", file=sys.stderr)
    print(batch_id)
    if not (args.wait or args.download):
        return 0
    final = follow(api, batch_id, client_id, answer["cells"])
    counts = ", ".join(f"{count} {state}" for state, count in sorted(final["counts"].items()))
    print(f"batch {batch_id}: {final['state']} ({counts})", file=sys.stderr)
    if args.download:
        saved = download(api, batch_id, Path(args.download))
        print(f"{saved} file(s) in {args.download}", file=sys.stderr)
    return 0 if final["state"] == "done" else 1


def follow(api: Api, batch_id: str, client_id: str, cells: int) -> dict:
    """Show the batch's progress until it ends; its final summary."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    listener = _Listener(api, client_id)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  transient=False, redirect_stdout=False, console=_console()) as progress:
        overall = progress.add_task("cells", total=cells)
        steps: dict[str, int] = {}
        summary = api.json("GET", f"/api/batches/{batch_id}")
        checked = time.monotonic()
        while summary["state"] not in FINAL_STATES:
            for event in listener.drain(timeout=0.2):
                kind, data = event.get("type"), event.get("data") or {}
                prompt_id = data.get("prompt_id")
                if kind == "progress" and prompt_id:
                    if prompt_id not in steps:
                        steps[prompt_id] = progress.add_task(f"  {prompt_id[:8]}", total=data.get("max") or 1)
                    progress.update(steps[prompt_id], completed=data.get("value", 0), total=data.get("max") or 1)
                elif kind in CELL_ENDS and prompt_id in steps:
                    progress.remove_task(steps.pop(prompt_id))
                if kind in CELL_ENDS:
                    checked = 0  # a cell ended: read the counts now
            if time.monotonic() - checked >= CHECK_SECONDS:
                summary = api.json("GET", f"/api/batches/{batch_id}")
                checked = time.monotonic()
                ended = sum(summary["counts"].get(state, 0)
                            for state in ("success", "error", "interrupted", "cancelled"))
                progress.update(overall, completed=ended,
                                description=f"cells ({summary['state']}"
                                + (f", ETA {summary['eta_seconds']:.0f} s" if summary.get("eta_seconds") else "")
                                + ")")
    listener.close()
    return summary


def _console():
    from rich.console import Console

    return Console(file=sys.stderr)


class _Listener:
    """The batch's events on /ws (its cells carry this client id), read by a thread; best effort:
    the counts read from the API decide when the batch has ended."""

    def __init__(self, api: Api, client_id: str):
        self.events: list[dict] = []
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self.ws = None
        try:
            import websocket

            url = "ws" + api.base[len("http"):] + f"/ws?clientId={client_id}"
            headers = [f"Authorization: Bearer {api.key}"] if api.key else None
            self.ws = websocket.create_connection(url, timeout=30, header=headers)
            threading.Thread(target=self._read, daemon=True).start()
        except Exception:  # noqa: BLE001 - no live steps then; the counts still come from the API
            self.ws = None

    def _read(self) -> None:
        try:
            while True:
                opcode, data = self.ws.recv_data()
                if opcode == 1:
                    with self._lock:
                        self.events.append(json.loads(data))
                    self._ready.set()
        except Exception:  # noqa: BLE001 - closed
            return

    def drain(self, timeout: float) -> list[dict]:
        self._ready.wait(timeout)
        with self._lock:
            events, self.events = self.events, []
            self._ready.clear()
        return events

    def close(self) -> None:
        if self.ws is not None:
            try:
                self.ws.close()
            except Exception:  # noqa: BLE001 - already gone
                pass


def download(api: Api, batch_id: str, folder: Path) -> int:
    """Every output of the batch into `folder` (cell-<index>/..., cells.csv); the number of files."""
    folder.mkdir(parents=True, exist_ok=True)
    answer = api.call("GET", f"/api/batches/{batch_id}/outputs.zip", stream=True, timeout=600)
    buffer = io.BytesIO()
    for chunk in answer.iter_content(1 << 20):
        buffer.write(chunk)
    saved = 0
    with zipfile.ZipFile(buffer) as archive:
        for member in archive.infolist():
            target = (folder / member.filename).resolve()
            if folder.resolve() not in target.parents:
                continue  # never write outside the folder, whatever a name says
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(archive.read(member))
            saved += member.filename != "cells.csv"
    return saved


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
            return submit(args, base, key)
        return batch_command(args, base, key)
    except CliError as error:
        print(f"farm: {error}", file=sys.stderr)
        return 2
