"""ComfyUI's own editor (comfyui-frontend-package) served by `farm up --cpu` with auth on, in Debian's
Chromium driven by Playwright: an artist of a team signs in, the editor loads without errors, a
workflow opened from a file runs on the farm's worker, and its image shows in the page's queue panel;
the editor's settings land in that team's user folder only."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import requests

from tests.integration.farm_process import farm_env, farm_up
from tests.integration.test_dashboard_browser import CHROMIUM, Shots, key
from tests.workflows import seed_workflow

pytestmark = pytest.mark.integration


def allowed(failure: tuple[str, str, int]) -> bool:
    """Failed requests the editor makes on any ComfyUI server: a user file it looks for before one
    was ever saved (ComfyUI's answer is a 404 too)."""
    method, path, status = failure
    return method == "GET" and status == 404 and path.startswith("/api/userdata/")


def test_an_artist_runs_a_workflow_in_comfyuis_editor_on_the_farm(tmp_path):
    if CHROMIUM is None:
        pytest.skip("Chromium is not installed (apt-get install chromium; .ci/run does it)")
    pytest.importorskip("comfyui_frontend_package", reason="the [frontend] extra is not installed")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (scripts/bootstrap dev)")
    from tests.engine.tiny_checkpoints import make_sd1

    data = tmp_path / "data"
    (data / "models" / "checkpoints").mkdir(parents=True)
    make_sd1(data / "models" / "checkpoints" / "tiny.safetensors", seed=11)
    workflow_file = tmp_path / "seed.json"
    workflow_file.write_text(json.dumps(seed_workflow(steps=2, size=64)))
    shots = Shots(tmp_path / "screenshots")
    with farm_up(data, env={"FARM_AUTH": "on"}) as farm, sync_api.sync_playwright() as playwright:
        subprocess.run([sys.executable, "-m", "farm.cli", "teams", "create", "lighting"],
                       env={**os.environ, **farm_env(data)}, check=True, capture_output=True, timeout=60)
        artist = key(data, "lighting", "submit")
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_context(viewport={"width": 1400, "height": 900}).new_page()
            # This machine has no internet: the editor's calls to comfy.org (release notes) get an
            # empty answer instead of a DNS failure. Everything else goes to the farm.
            page.route(lambda url: not url.startswith(farm.url),
                       lambda route: route.fulfill(status=200, content_type="application/json", body="[]"))
            errors, failures = [], []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.on("console", lambda message: errors.append(f"{message.text} ({message.location.get('url')})")
                    if message.type == "error" else None)
            page.on("response", lambda response: failures.append(
                (response.request.method, response.url[len(farm.url):].split("?")[0], response.status))
                if response.url.startswith(farm.url) and response.status >= 400 else None)

            page.goto(f"{farm.url}/")
            assert "/dashboard/login" in page.url  # auth on: sign in first, then back to the editor
            page.fill("input[name=key]", artist)
            page.click("text=Sign in")
            page.wait_for_function("window.app && app.graph && document.querySelector('#comfy-file-input')",
                                   timeout=90000)
            page.wait_for_load_state("networkidle")
            assert page.url == f"{farm.url}/"
            shots(page, "editor-loaded")  # a new user: ComfyUI opens its template browser
            page.keyboard.press("Escape")
            page.get_by_role("button", name="Run", exact=True).wait_for()

            page.set_input_files("#comfy-file-input", str(workflow_file))  # Workflow > Open
            page.wait_for_function("app.graph.nodes.some(n => n.type === 'CheckpointLoaderSimple')")
            page.get_by_role("button", name="Run", exact=True).click()
            image = page.wait_for_selector("img[src*='/view?'][src*='filename=ComfyUI_00001_.png']",
                                           state="attached", timeout=180000)
            shots(page, "image-in-queue-panel")
            assert page.evaluate("src => fetch(src).then(r => r.headers.get('content-type'))",
                                 image.get_attribute("src")) == "image/png"

            bad_failures = [failure for failure in failures if not allowed(failure)]
            assert bad_failures == [], bad_failures
            unexplained = [error for error in errors if "/api/userdata/" not in error]
            assert unexplained == [], unexplained
        finally:
            browser.close()

        # The run is the team's, and so are the settings the editor saved on its first start.
        api = requests.Session()
        api.headers["Authorization"] = f"Bearer {artist}"
        history = api.get(f"{farm.url}/history", timeout=10).json()
        assert [entry["status"]["status_str"] for entry in history.values()] == ["success"]
        settings = api.get(f"{farm.url}/api/settings", timeout=10).json()
        assert "Comfy.InstalledVersion" in settings
        admin = key(data, "default", "admin")
        other = requests.get(f"{farm.url}/api/settings", headers={"Authorization": f"Bearer {admin}"}, timeout=10)
        assert "Comfy.InstalledVersion" not in other.json()  # the default team's folder is its own
        api.close()  # before the farm stops: a kept-alive connection holds the web's graceful stop ~2 s
