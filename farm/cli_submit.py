"""`farm submit`: post one API-format workflow with sweeps as a batch, follow its cells live on /ws
with progress bars (overall, and each running cell's steps), read the batch's own counts every
few seconds (so a dropped socket or a retried cell never leaves it waiting forever), then
download every output into a folder."""

from __future__ import annotations

import io
import json
import sys
import threading
import time
import uuid
import zipfile
from pathlib import Path

from farm.cli_batch import Api, CliError

FINAL_STATES = ("done", "failed", "cancelled")
CELL_ENDS = ("execution_success", "execution_error", "execution_interrupted")
CHECK_SECONDS = 2.0


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
