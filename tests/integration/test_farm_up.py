"""The whole farm as a user runs it: `farm up` in a subprocess, driven through the HTTP API."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import socket
import time

import pytest
import requests
from PIL import Image

from tests.integration.farm_process import children_of, farm_env, farm_up, start_farm_up, wait_history
from tests.services import fresh_postgres_database, service_url
from tests.workflows import invert_workflow

pytestmark = pytest.mark.integration

# The first line of Celery's start banner: " -------------- <worker>@<host> v5.x.y (codename)".
# (A supervised worker's lines carry its name in front.)
CELERY_BANNER = re.compile(r"^(\[\S+\] )? -------------- \S+@\S+ v\d", re.MULTILINE)


def render_and_check(url: str) -> None:
    prompt = invert_workflow(color=0x336699, size=16, prefix="e2e/run")
    body = {"prompt": prompt, "client_id": "e2e", "extra_data": {"extra_pnginfo": {"workflow": {"id": "w1"}}}}
    answer = requests.post(f"{url}/prompt", data=json.dumps(body), timeout=10)
    assert answer.status_code == 200, answer.text
    prompt_id = answer.json()["prompt_id"]
    entry = wait_history(url, prompt_id)
    assert entry["status"]["status_str"] == "success", entry["status"]
    image = entry["outputs"]["3"]["images"][0]
    assert image == {"filename": "run_00001_.png", "subfolder": "e2e", "type": "output"}
    response = requests.get(f"{url}/view", params=image, timeout=10)
    assert response.status_code == 200 and response.headers["Content-Type"] == "image/png"
    png = Image.open(io.BytesIO(response.content))
    assert png.size == (16, 16)
    # ComfyUI converts by truncating 255 * value, so a channel may sit one below the exact inverse.
    expected = (255 - 0x33, 255 - 0x66, 255 - 0x99)
    assert all(0 <= e - got <= 1 for got, e in zip(png.getpixel((5, 5)), expected)), png.getpixel((5, 5))
    assert json.loads(png.text["prompt"]) == prompt
    assert json.loads(png.text["workflow"]) == {"id": "w1"}


def test_farm_up_on_embedded_defaults_renders_and_stops_cleanly(tmp_path):
    with farm_up(tmp_path / "data") as farm:
        children = children_of(farm.process.pid)
        assert len(children) >= 3  # embedded Redis, web, worker
        render_and_check(farm.url)
        stats = requests.get(f"{farm.url}/api/system_stats", timeout=5).json()
        assert [device["type"] for device in stats["devices"]] == ["cpu"]
    time.sleep(0.5)
    assert [pid for pid in children if os.path.exists(f"/proc/{pid}")] == []


def test_farm_up_on_real_redis_and_postgresql(tmp_path):
    redis_url = service_url("redis")
    with fresh_postgres_database(service_url("database")) as database_url:
        with farm_up(tmp_path / "data", broker_url=redis_url, database_url=database_url) as farm:
            children = children_of(farm.process.pid)
            render_and_check(farm.url)
        assert not any(os.path.exists(f"/proc/{pid}") for pid in children)


def test_farm_up_with_rabbitmq_broker(tmp_path):
    with farm_up(tmp_path / "data", broker_url=service_url("rabbitmq")) as farm:
        render_and_check(farm.url)


def test_restart_with_prompts_queued_loses_none_and_runs_none_twice(tmp_path):
    data = tmp_path / "data"
    submitted = []
    with farm_up(data) as farm:
        # Closed before the stop: a kept-alive connection holds the web's graceful stop ~2 s.
        with requests.Session() as session:
            for color in range(40):
                answer = session.post(f"{farm.url}/prompt", timeout=10,
                                      data=json.dumps({"prompt": invert_workflow(color=color, size=256)}))
                submitted.append(answer.json()["prompt_id"])
        remaining = requests.get(f"{farm.url}/prompt", timeout=5).json()["exec_info"]["queue_remaining"]
        # SIGTERM now, with prompts still waiting (farm_up's exit stops the farm)
    assert remaining > 0
    with farm_up(data) as farm:
        entries = [wait_history(farm.url, prompt_id) for prompt_id in submitted]
    assert all(entry["status"]["status_str"] == "success" for entry in entries)
    names = [entry["outputs"]["3"]["images"][0]["filename"] for entry in entries]
    assert len(set(names)) == len(submitted)
    assert sorted(os.listdir(data / "output")) == sorted(names)  # one file per prompt, none twice


def test_farm_up_killed_leaves_no_orphans(tmp_path):
    farm = start_farm_up(tmp_path / "data")
    farm.wait_ready()
    children = children_of(farm.process.pid)
    assert len(children) >= 3
    farm.stop(signal.SIGKILL)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and any(os.path.exists(f"/proc/{pid}") for pid in children):
        time.sleep(0.2)
    alive = [pid for pid in children if os.path.exists(f"/proc/{pid}")
             and open(f"/proc/{pid}/stat").read().split(") ", 1)[1].split()[0] != "Z"]
    assert alive == []


def test_farm_up_prints_a_start_summary_instead_of_celery_s_banner(tmp_path):
    data, models = tmp_path / "data", tmp_path / "data" / "models"
    for path in ("checkpoints/a.safetensors", "checkpoints/sd/b.ckpt", "checkpoints/notes.txt", "loras/style.pt"):
        (models / path).parent.mkdir(parents=True, exist_ok=True)
        (models / path).write_bytes(b"weights")
    with farm_up(data) as farm:
        farm.wait_stdout("  editor:")
        render_and_check(farm.url)
    from importlib.metadata import version

    # First on stdout; at the end Celery says "worker: Warm shutdown" there.
    assert farm.stdout().splitlines()[:6] == [
        f"farm ready: {farm.url}",
        f"  workers: {socket.gethostname()}-cpu (cpu)",
        f"  models:  2 checkpoints, 1 lora, 0 vae (in {models.resolve()})",
        f"  data:    {data.resolve()}",
        "  auth:    off (FARM_AUTH=auto, loopback only)",
        f"  editor:  ComfyUI frontend {version('comfyui-frontend-package')} at {farm.url}/",
    ]
    everything = farm.stdout() + farm.output()
    assert not CELERY_BANNER.search(everything), everything
    for noise in ("[config]", "superuser", "alembic", "Connected to"):
        assert noise not in everything, everything


def test_farm_up_verbose_shows_every_process_s_log(tmp_path):
    with farm_up(tmp_path / "data", flags=("--cpu", "--verbose")) as farm:
        farm.wait_stdout("  auth:")
    stdout, log = farm.stdout(), farm.output()
    assert CELERY_BANNER.search(stdout) and "[config]" in stdout
    assert "Running upgrade" in log and "embedded Redis on" in log
    if os.geteuid() == 0:
        assert "superuser privileges" in log


def test_farm_up_runs_one_supervised_worker_per_gpu_in_cuda_visible_devices(tmp_path):
    host = socket.gethostname()
    # Two GPU ids on a machine that may have none: each worker is pinned to one and runs on
    # whatever torch then finds (the CPU here), which is all this test needs.
    with farm_up(tmp_path / "data", flags=(), env={"CUDA_VISIBLE_DEVICES": "1,0"}) as farm:
        farm.wait_stdout("  auth:")
        render_and_check(farm.url)
    lines = farm.stdout().splitlines()
    assert lines[0] == f"farm ready: {farm.url}"
    assert re.fullmatch(rf"  workers: {host}-gpu1 \(.+\)", lines[1]), lines
    assert re.fullmatch(rf"           {host}-gpu0 \(.+\)", lines[2]), lines
    log = farm.output()
    for gpu in ("0", "1"):
        name = f"{host}-gpu{gpu}"
        assert re.search(rf"^\[{name}\] .* worker {name} registered", log, re.MULTILINE), log


def test_a_model_copied_into_a_running_farm_up_is_accepted_at_once_by_every_web_process(tmp_path):
    data = tmp_path / "data"
    (data / "models" / "checkpoints").mkdir(parents=True)
    (data / "models" / "checkpoints" / "old.safetensors").write_bytes(b"x")
    # Two web processes (the default) answer on one port: requests land on either of them.
    with farm_up(data, env={"FARM_NODE_MODULES": "tests.nodepack", "FARM_WEB_PROCESSES": "2"}) as farm:
        session = requests.Session()
        assert session.get(f"{farm.url}/models/checkpoints", timeout=5).json() == ["old.safetensors"]
        (data / "models" / "checkpoints" / "new.safetensors").write_bytes(b"x")
        ids = []
        for value in range(12):
            body = {"prompt": {"1": {"class_type": "ModelName", "inputs": {"ckpt_name": "new.safetensors",
                                                                           "value": value}}}}
            # A fresh connection per request, so both web processes are asked.
            answer = requests.post(f"{farm.url}/prompt", data=json.dumps(body), timeout=10)
            assert answer.status_code == 200, answer.text
            ids.append(answer.json()["prompt_id"])
        for prompt_id in ids:
            entry = wait_history(farm.url, prompt_id, timeout=30)
            assert entry["status"]["status_str"] == "success" and entry["outputs"]["1"]["text"] == ["new.safetensors"]
        assert "new.safetensors" in session.get(f"{farm.url}/models/checkpoints", timeout=5).json()
        session.close()  # before the stop: a kept-alive connection holds the web's graceful stop ~2 s


def test_farm_up_reachable_from_the_network_turns_keys_on_and_still_starts(tmp_path):
    """On 0.0.0.0 auth is on (FARM_AUTH=auto): the API answers 401 without a key, yet farm up waits on
    /readyz (no key needed) and prints its summary."""
    import subprocess
    import sys

    data = tmp_path / "data"
    farm = start_farm_up(data, ("--cpu", "--host", "0.0.0.0"))
    try:
        farm.wait_stdout("  auth:", timeout=120)
        assert "  auth:    on (FARM_AUTH=auto, listening on 0.0.0.0): requests need an API key" in farm.stdout()
        assert requests.get(f"{farm.url}/queue", timeout=5).status_code == 401
        assert requests.get(f"{farm.url}/healthz", timeout=5).json() == {"status": "ok"}
        ready = requests.get(f"{farm.url}/readyz", timeout=5).json()
        assert ready == {"status": "ready", "checks": {"database": "ok", "broker": "ok", "storage": "ok"}}
        made = subprocess.run([sys.executable, "-m", "farm.cli", "keys", "create", "--team", "default"],
                              env={**os.environ, **farm_env(data)}, capture_output=True, text=True, timeout=60)
        key = made.stdout.strip()
        assert requests.get(f"{farm.url}/queue", headers={"X-API-Key": key}, timeout=5).status_code == 200
    finally:
        assert farm.stop() == 0, farm.output()
