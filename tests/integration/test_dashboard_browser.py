"""The dashboard in a real browser: Playwright driving Debian's Chromium against `farm up --cpu` with a
tiny checkpoint and auth on. Screenshots of every step go to a folder the test prints."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tests.integration.farm_process import farm_env, farm_up
from tests.workflows import seed_workflow

pytestmark = pytest.mark.integration

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.skip("Chromium is not installed (apt-get install chromium; .ci/run does it)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (scripts/bootstrap dev)")
    with sync_api.sync_playwright() as playwright:
        # --no-sandbox: CI and this machine run as root, where Chromium's sandbox cannot start.
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield launched
        finally:
            launched.close()


def key(data: Path, team: str, role: str) -> str:
    made = subprocess.run([sys.executable, "-m", "farm.cli", "keys", "create", "--team", team, "--role", role],
                          env={**os.environ, **farm_env(data)}, capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    return made.stdout.strip()


class Shots:
    def __init__(self, folder: Path):
        self.folder = folder
        self.count = 0
        folder.mkdir(parents=True, exist_ok=True)
        print(f"dashboard screenshots: {folder}")

    def __call__(self, page, name: str) -> None:
        self.count += 1
        page.screenshot(path=str(self.folder / f"{self.count:02d}-{name}.png"), full_page=True)


def sign_in(browser, url: str, secret: str):
    context = browser.new_context()
    page = context.new_page()
    page.goto(f"{url}/dashboard/")
    assert "/dashboard/login" in page.url  # sent to sign in
    page.fill("input[name=key]", secret)
    page.click("text=Sign in")
    page.wait_for_selector("nav >> text=Overview")
    return page


def test_an_operator_follows_and_steers_a_sweep_in_the_browser(browser, tmp_path):
    from tests.engine.tiny_checkpoints import make_sd1

    data = tmp_path / "data"
    (data / "models" / "checkpoints").mkdir(parents=True)
    make_sd1(data / "models" / "checkpoints" / "tiny.safetensors", seed=11)
    (data / "models" / "checkpoints" / "broken.safetensors").write_bytes(b"not a checkpoint at all")
    shots = Shots(tmp_path / "screenshots")
    with farm_up(data, env={"FARM_AUTH": "on"}) as farm:
        subprocess.run([sys.executable, "-m", "farm.cli", "teams", "create", "lighting"],
                       env={**os.environ, **farm_env(data)}, check=True, capture_output=True, timeout=60)
        admin, lighting = key(data, "default", "admin"), key(data, "lighting", "submit")
        api = requests.Session()
        api.headers["Authorization"] = f"Bearer {admin}"

        page = sign_in(browser, farm.url, admin)
        page.wait_for_selector("#chart-images .uplot canvas")  # the charts drew (uPlot, served by the farm)
        shots(page, "overview")
        # A sweep submitted through the API; its page's progress moves without a reload.
        batch_id = api.post(f"{farm.url}/api/batches", timeout=30, data=json.dumps({
            "workflow": seed_workflow(steps=2), "name": "browser sweep",
            "sweep": {"3.seed": {"range": [1, 16]}}})).json()["batch_id"]
        page.goto(f"{farm.url}/dashboard/batches/{batch_id}")
        page.evaluate("window.__stillHere = true")
        first = page.inner_text("main h1 + p small")
        page.wait_for_function(f"document.querySelector('main h1 + p small').innerText !== {json.dumps(first)}",
                               timeout=60000)
        assert page.evaluate("window.__stillHere") is True  # updated in place, not reloaded
        shots(page, "sweep-moving")
        # Pause; cancel one cell that has not run yet (paused cells wait: the worker takes
        # several cells at a time, coalesced, so a queued cell would not wait long); resume.
        page.click("main form.actions >> text=pause")
        page.wait_for_selector("main h1 >> .state.paused")
        shots(page, "paused")
        page.click("main .cancel-cell >> nth=-1")
        page.wait_for_selector("main td >> .state.cancelled")
        shots(page, "cell-cancelled")
        page.click("main form.actions >> text=resume")
        page.wait_for_selector("main h1 >> .state:not(.paused)")
        deadline = time.monotonic() + 120
        while api.get(f"{farm.url}/api/batches/{batch_id}", timeout=10).json()["state"] not in ("done", "failed",
                                                                                                 "cancelled"):
            assert time.monotonic() < deadline
            time.sleep(0.5)
        # Drain and unlock the worker.
        page.goto(f"{farm.url}/dashboard/workers")
        page.click("main tr >> nth=1 >> text=drain")
        page.wait_for_selector("main .state.draining")
        shots(page, "worker-draining")
        page.click("main tr >> nth=1 >> text=unlock")
        page.wait_for_selector("main .state.idle, main .state.busy")
        # A prompt that fails at run time: its page shows the failing node and its message.
        failing = api.post(f"{farm.url}/prompt", timeout=30, data=json.dumps(
            {"prompt": seed_workflow(ckpt_name="broken.safetensors")})).json()["prompt_id"]
        deadline = time.monotonic() + 60
        while not api.get(f"{farm.url}/history/{failing}", timeout=10).json():
            assert time.monotonic() < deadline
            time.sleep(0.3)
        page.goto(f"{farm.url}/dashboard/prompts/{failing}")
        assert "in node 4 (CheckpointLoaderSimple)" in page.inner_text("#failure h2")
        assert page.inner_text("#failure .error").strip()
        assert "failed" in page.get_attribute("#node-4", "class")
        shots(page, "failed-prompt")

        # Another team's key sees none of it.
        other = sign_in(browser, farm.url, lighting)
        other.goto(f"{farm.url}/dashboard/batches")
        assert "browser sweep" not in other.inner_text("main")
        assert other.goto(f"{farm.url}/dashboard/batches/{batch_id}").status == 404
        assert other.goto(f"{farm.url}/dashboard/workers").status == 403
        shots(other, "other-team")
        # Closed before the farm stops: kept-alive connections hold the web's graceful stop ~2 s.
        api.close()
        page.context.close()
        other.context.close()
    assert shots.count == 7
