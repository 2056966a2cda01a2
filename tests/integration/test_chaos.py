"""The short, bounded version of bench/chaos.py: a load while a worker is killed with SIGKILL,
Redis and PostgreSQL restart and the output storage is full; every accepted prompt must end in
exactly one terminal state, none may run twice. The farm runs on services of its own (a throwaway
PostgreSQL and Redis server), so the shared ones are never touched."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def test_every_accepted_prompt_ends_once_through_kills_restarts_and_a_full_disk():
    if not shutil.which("redis-server"):
        pytest.skip("redis-server is not installed")
    run = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "chaos.py"), "--prompts", "240", "--rate", "24", "--clients", "4",
         "--workers", "2", "--spacing", "2.5", "--outage", "2", "--drain-timeout", "120"],
        cwd=ROOT, capture_output=True, text=True, timeout=400,
        env={k: v for k, v in os.environ.items() if not k.startswith("FARM_")})
    assert run.returncode == 0, run.stderr[-4000:]
    found = json.loads(run.stdout.strip().splitlines()[-1])
    assert found["accepted"] == 240 and not found["refused"], found
    assert found["lost"] == found["never_ended"] == 0 and not found["ran_twice"], found
    assert sum(found["states"].values()) == 240, found
    # Prompts that could not save while the storage was full went back to the queue and ran again
    # once it had room: none of these faults is a prompt's own, and none fails one.
    assert found["states"] == {"success": 240} and not found["errors"], found
