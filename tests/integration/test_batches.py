"""A batch on a real farm: its cells run on workers, it pauses between cells and resumes, and its
detail counts, times and lists what it made."""

from __future__ import annotations

import json
import time

import pytest

from tests.integration.scheduler_farm import saving_prompt

pytestmark = pytest.mark.integration


def batch(farm, batch_id: str) -> dict:
    return farm.http.get(f"{farm.url}/api/batches/{batch_id}", timeout=10).json()


def wait_batch(farm, batch_id: str, predicate, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        found = batch(farm, batch_id)
        if predicate(found):
            return found
        assert time.monotonic() < deadline, json.dumps(found)
        time.sleep(0.1)


def test_a_sweep_runs_pauses_between_cells_resumes_and_lists_its_images(farm):
    farm.start_worker("render")
    answer = farm.http.post(f"{farm.url}/api/batches", timeout=30, data=json.dumps({
        "workflow": saving_prompt(300, 0x112233), "name": "colours",
        "sweep": {"0.value": [8, 9, 10, 11, 12, 13]}}))  # the Sleep's value: no cell is served from cache
    assert answer.status_code == 201, answer.text
    batch_id = answer.json()["batch_id"]
    wait_batch(farm, batch_id, lambda b: b["counts"].get("success", 0) >= 1)
    paused = farm.http.post(f"{farm.url}/api/batches/{batch_id}/pause", timeout=10).json()
    assert paused["state"] == "paused"
    # The cell running at the pause finishes; nothing else starts.
    settled = wait_batch(farm, batch_id, lambda b: not b["counts"].get("running") and not b["counts"].get(
        "dispatched"))
    time.sleep(1.0)
    still = batch(farm, batch_id)
    assert still["counts"] == settled["counts"] and still["counts"].get("paused", 0) >= 1
    assert farm.http.post(f"{farm.url}/api/batches/{batch_id}/resume", timeout=10).json()["state"] in (
        "running", "queued")
    done = wait_batch(farm, batch_id, lambda b: b["state"] in ("done", "failed"))
    assert done["state"] == "done" and done["counts"] == {"success": 6} and done["progress"] == 1.0
    assert done["eta_seconds"] == 0.0
    assert [item["cell"] for item in done["outputs"]] == [0, 1, 2, 3, 4, 5]
    assert [item["values"] for item in done["outputs"]][:2] == [{"0.value": 8}, {"0.value": 9}]
    image = done["outputs"][0]
    view = farm.http.get(f"{farm.url}/view", params={"filename": image["filename"], "subfolder": image["subfolder"],
                                                       "type": image["type"]}, timeout=10)
    assert view.status_code == 200 and view.content[:4] == b"\x89PNG"
    cells = farm.http.get(f"{farm.url}/api/batches/{batch_id}/cells", timeout=10).json()["cells"]
    assert all(cell["worker"] == "render" and cell["seconds"] >= 0.3 for cell in cells)


def test_a_batch_webhook_is_posted_signed_by_the_farm_itself(farm):
    import subprocess
    import sys

    from tests.webhook_receiver import Receiver, verified

    receiver = Receiver(statuses=[500])  # the first post fails: the farm tries again
    try:
        farm.start_worker("render")
        answer = farm.http.post(f"{farm.url}/api/batches", timeout=30, data=json.dumps({
            "workflow": saving_prompt(10, 0x445566), "sweep": {"0.value": [8, 9, 10]},
            "webhook": receiver.url("/shots")}))
        assert answer.status_code == 201, answer.text
        batch_id = answer.json()["batch_id"]
        deadline = time.monotonic() + 60
        while [kind for kind, _ in receiver.events()].count("batch.completed") < 1 \
                or len({post["headers"]["webhook-id"] for post in receiver.posts}) < 4:
            assert time.monotonic() < deadline, receiver.events()
            time.sleep(0.1)
        secret = subprocess.run([sys.executable, "-m", "farm.cli", "teams", "secret", "default"], env=farm.env,
                                capture_output=True, text=True, timeout=60).stdout.strip()
        assert all(verified(post, secret) for post in receiver.posts)
        kinds = sorted(kind for kind, _ in receiver.events())
        assert kinds.count("prompt.completed") >= 3 and kinds.count("batch.completed") == 1
        shown = wait_batch(farm, batch_id, lambda b: all(w["status"] == "delivered" for w in b["webhooks"]))
        assert len(shown["webhooks"]) == 4
    finally:
        receiver.close()


def test_farm_submit_follows_a_sweep_with_progress_then_downloads_it(farm, tmp_path):
    import subprocess
    import sys

    def cli(*args, expect=0):
        done = subprocess.run([sys.executable, "-m", "farm.cli", *args, "--url", farm.url], capture_output=True,
                              text=True, timeout=120, env={**farm.env, "COLUMNS": "100"})
        assert done.returncode == expect, done.stdout + done.stderr
        return done

    farm.start_worker("render")
    workflow = tmp_path / "workflow_api.json"
    workflow.write_text(json.dumps(saving_prompt(50, 0x778899)))
    prompts = tmp_path / "values.txt"
    prompts.write_text("8\n9\n")
    dry = cli("submit", str(workflow), "--sweep", "0.value=8..10", "--dry-run")
    assert dry.stdout.strip().startswith("valid: 3 cells")
    done = cli("submit", str(workflow), "--sweep", "0.value=@" + str(prompts), "--sweep", "1.color=1,2",
               "--name", "cli sweep", "--download", str(tmp_path / "out"))
    batch_id = done.stdout.strip()
    assert f"batch {batch_id}: 4 cells queued" in done.stderr
    assert f"batch {batch_id}: done (4 success)" in done.stderr
    assert "cells" in done.stderr  # the progress bar's line
    images = sorted(path.relative_to(tmp_path / "out").parts[0] for path in (tmp_path / "out").rglob("*.png"))
    assert images == ["cell-00000", "cell-00001", "cell-00002", "cell-00003"]
    assert (tmp_path / "out" / "cells.csv").read_text().count("\n") == 5

    listing = cli("batch", "ls")
    assert listing.stdout.splitlines()[0].split()[:4] == ["ID", "NAME", "TEAM", "STATE"]
    assert batch_id in listing.stdout and "done" in listing.stdout
    assert "4 cells, 100% done" in cli("batch", "show", batch_id).stdout
    assert cli("batch", "priority", batch_id, "--to", "70").stdout.strip() == f"{batch_id}: done (priority 70)"

    ui = tmp_path / "ui.json"
    ui.write_text(json.dumps({"nodes": [], "links": [], "version": 0.4}))
    assert "Export (API)" in cli("submit", str(ui), expect=2).stderr
    bad = cli("submit", str(workflow), "--sweep", "0.ms=-5,9", expect=2)
    assert "Cell 0" in bad.stderr and "node 0 (Sleep)" in bad.stderr
