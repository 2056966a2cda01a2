"""The start summary `farm up` prints once its web answers and its workers have registered."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Callable

from farm.config import Settings, loopback_only
from farm.models import inventory

SHOWN_FOLDERS = (("checkpoints", "checkpoint", "checkpoints"), ("loras", "lora", "loras"), ("vae", "vae", "vae"))


def worker_rows(database, names: list[str]) -> dict[str, tuple[str, str]]:
    """name -> (session, device name) of the workers table rows named in `names`."""
    from sqlalchemy import select

    from farm.db.models import Worker

    with database.reading() as session:
        rows = session.execute(
            select(Worker.name, Worker.session, Worker.device_name).where(Worker.name.in_(names))
        ).all()
    return {row.name: (row.session, row.device_name) for row in rows}


def wait_for_workers(database, names: list[str], before: dict[str, tuple[str, str]], timeout: float,
                     keep_waiting: Callable[[], bool]) -> dict[str, str]:
    """name -> device name of the workers in `names` that registered after `before` was read.

    A row left by an earlier run (a killed farm) keeps its session, so only a new session counts.
    Returns early when all registered, or when `keep_waiting()` turns false.
    """
    from sqlalchemy.exc import SQLAlchemyError

    deadline = time.monotonic() + timeout
    found: dict[str, str] = {}
    while True:
        try:
            found = {name: device for name, (session, device) in worker_rows(database, names).items()
                     if before.get(name, (None, None))[0] != session}
        except SQLAlchemyError:
            pass  # a busy SQLite file or a database restarting: look again
        if len(found) == len(names) or time.monotonic() >= deadline or not keep_waiting():
            return found
        time.sleep(0.25)


def format_summary(settings: Settings, names: list[str], devices: dict[str, str], waited: float) -> str:
    lines = [f"farm ready: http://{settings.host}:{settings.port}"]
    for index, name in enumerate(names):
        device = _device(devices[name]) if name in devices else f"not registered after {waited:.0f} s"
        lines.append(f"  {'workers:' if index == 0 else '':<9}{name} ({device})")
    lines.append(f"  models:  {models_line(settings.models_dir)}")
    lines.append(f"  data:    {settings.data_dir}")
    if settings.storage_url:
        where = f" at {settings.s3_endpoint_url}" if settings.s3_endpoint_url else ""
        lines.append(f"  files:   {settings.storage_url}{where}")
    lines.append(f"  auth:    {auth_line(settings)}")
    lines.append(f"  editor:  {editor_line(settings)}")
    return "\n".join(lines)


def editor_line(settings: Settings) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"ComfyUI frontend {version('comfyui-frontend-package')} at http://{settings.host}:{settings.port}/"
    except PackageNotFoundError:
        return "not installed (pip install 'comfy-farm[frontend]' for ComfyUI's editor at /)"


def models_line(models_dir: Path) -> str:
    found = inventory(models_dir)
    parts = []
    for folder, one, many in SHOWN_FOLDERS:
        count = len(found.get(folder, []))
        parts.append(f"{count} {one if count == 1 else many}")
    others = sum(len(files) for folder, files in found.items() if folder not in {f for f, _, _ in SHOWN_FOLDERS})
    if others:
        parts.append(f"{others} other")
    return f"{', '.join(parts)} (in {models_dir})"


def auth_line(settings: Settings) -> str:
    """Which auth mode applies, and why (FARM_AUTH)."""
    why = f"FARM_AUTH={settings.auth}"
    if settings.auth == "auto":
        why += f", {'loopback only' if not settings.auth_enabled else f'listening on {settings.host}'}"
    if settings.auth_enabled:
        return f"on ({why}): requests need an API key (farm keys create)"
    if loopback_only(settings.host):
        return f"off ({why})"
    return f"off ({why}): anyone who can reach {settings.host}:{settings.port} may do everything"


def _device(device_name: str) -> str:
    # A pinned worker sees its GPU as cuda:0; the worker's name already says which GPU it is.
    return re.sub(r"^cuda:\d+ ", "", device_name) or "unknown device"
