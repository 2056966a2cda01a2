"""An operator steering real workers: drain, lock, unlock and pausing dispatch, over HTTP and from
the `farm workers` / `farm dispatch` commands."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from tests.integration.scheduler_farm import sleep_prompt

pytestmark = pytest.mark.integration


def cli(farm, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "farm.cli", *args, "--url", farm.url], capture_output=True,
                          text=True, timeout=60)


def waiting_for(farm, prompt_id):
    return farm.http.get(f"{farm.url}/api/jobs/{prompt_id}").json().get("waiting_for")


def test_drain_lock_unlock_and_pause_over_http_and_the_cli(farm):
    farm.start_worker("steered")
    listing = cli(farm, "workers", "ls")
    assert listing.returncode == 0, listing.stderr
    assert listing.stdout.splitlines()[0].split()[:3] == ["NAME", "STATE", "HOST"]
    assert listing.stdout.splitlines()[1].split()[:2] == ["steered", "idle"]

    # Drain over HTTP while a prompt runs: it finishes; nothing new starts.
    running = farm.submit(sleep_prompt(1500))
    farm.wait_row(running, lambda row: row["state"] == "running")
    assert farm.http.post(f"{farm.url}/api/workers/steered/drain").json()["state"] == "draining"
    waiting = farm.submit(sleep_prompt(10))
    assert farm.history(running)["status"]["status_str"] == "success"
    time.sleep(1.5)
    assert farm.row(waiting)["state"] == "queued"
    assert waiting_for(farm, waiting) == "every live worker that can run it is draining or locked"
    unlocked = cli(farm, "workers", "unlock", "steered")
    assert unlocked.returncode == 0 and unlocked.stdout.strip() in ("steered: idle", "steered: busy")
    assert farm.history(waiting)["status"]["status_str"] == "success"

    # Lock from the CLI, with a reason the listing shows.
    locked = cli(farm, "workers", "lock", "steered", "--reason", "fan noise")
    assert locked.stdout.strip() == "steered: locked"
    assert "locked (fan noise)" in cli(farm, "workers", "ls").stdout
    held = farm.submit(sleep_prompt(10))
    time.sleep(1.5)
    assert farm.row(held)["state"] == "queued"
    cli(farm, "workers", "unlock", "steered")
    assert farm.history(held)["status"]["status_str"] == "success"

    # Pause dispatch farm-wide from the CLI; resume over HTTP.
    assert cli(farm, "dispatch", "pause").stdout.strip() == "dispatch paused"
    paused = farm.submit(sleep_prompt(10))
    time.sleep(1.5)
    assert farm.row(paused)["state"] == "queued"
    assert waiting_for(farm, paused) == "dispatch is paused farm-wide by an operator"
    assert "dispatch is paused" in cli(farm, "workers", "ls").stdout
    assert farm.http.post(f"{farm.url}/api/dispatch/resume").json() == {"paused": False}
    assert farm.history(paused)["status"]["status_str"] == "success"
    assert cli(farm, "dispatch", "status").stdout.strip() == "dispatch running"

    unknown = cli(farm, "workers", "drain", "nobody")
    assert unknown.returncode == 1 and "404 Unknown worker: nobody" in unknown.stderr
