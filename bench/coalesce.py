"""Coalescing on the CPU: a seed sweep (64 prompts by default) on a tiny SD1 checkpoint through
`farm up --cpu`, timed with coalescing off (FARM_COALESCE_MAX=1, the CPU default), exact (each
member's UNet calls as alone, in one group) and batched (FARM_COALESCE_MODE=batched: one UNet
call for the group), one after the other in one run on one data folder.

For each: the sweep is submitted with dispatch paused, then resumed; the time to the batch's end
gives prompts/s. The images of the run without coalescing are the reference: exact must give the
same bytes, batched is reported as the largest pixel difference (0-255). Prints a table and one
JSON line. `python bench/coalesce.py [--prompts 64] [--steps 8] [--size 64] [--group 4]`
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
import zipfile
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import requests  # noqa: E402
from PIL import Image, ImageChops  # noqa: E402

from tests.engine.tiny_checkpoints import make_sd1  # noqa: E402
from tests.integration.farm_process import farm_up  # noqa: E402
from tests.workflows import seed_workflow  # noqa: E402

RUNS = {"off": {"FARM_COALESCE_MAX": "1"}, "exact": {"FARM_COALESCE_MODE": "exact"},
        "batched": {"FARM_COALESCE_MODE": "batched"}}


def run_sweep(data: Path, env: dict, prompts: int, steps: int, size: int) -> tuple[float, dict[int, Image.Image], str]:
    with farm_up(data, env={"FARM_COALESCE_WAIT_MS": "0", **env}) as farm:
        http = requests.Session()
        http.post(f"{farm.url}/api/dispatch/pause", timeout=10).raise_for_status()
        body = {"workflow": seed_workflow(steps=steps, size=size), "sweep": {"3.seed": {"range": [1, prompts]}}}
        batch_id = http.post(f"{farm.url}/api/batches", data=json.dumps(body), timeout=60).json()["batch_id"]
        started = time.perf_counter()
        http.post(f"{farm.url}/api/dispatch/resume", timeout=10).raise_for_status()
        while (state := http.get(f"{farm.url}/api/batches/{batch_id}", timeout=10).json())["state"] not in (
                "done", "failed", "cancelled"):
            time.sleep(0.05)
        seconds = time.perf_counter() - started
        if state["state"] != "done":
            raise SystemExit(f"the sweep ended {state['state']}: {state['counts']}")
        archive = zipfile.ZipFile(io.BytesIO(http.get(f"{farm.url}/api/batches/{batch_id}/outputs.zip",
                                                      timeout=120).content))
        images = {int(name.split("/")[0].split("-")[1]): Image.open(io.BytesIO(archive.read(name))).convert("RGB")
                  for name in archive.namelist() if name.endswith(".png")}
        groups = farm.output().count("as one group")
    return seconds, images, f"{groups} groups"


def largest_difference(images: dict, reference: dict) -> int:
    return max(max(channel[1] for channel in ImageChops.difference(images[i], reference[i]).getextrema())
               for i in reference)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--group", type=int, default=4, help="FARM_COALESCE_MAX for the coalesced runs")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-coalesce-") as folder:
        data = Path(folder) / "data"
        (data / "models" / "checkpoints").mkdir(parents=True)
        make_sd1(data / "models" / "checkpoints" / "tiny.safetensors", seed=5)
        figures, reference = {}, None
        for name, env in RUNS.items():
            env = env if name == "off" else {**env, "FARM_COALESCE_MAX": str(args.group)}
            seconds, images, groups = run_sweep(data, env, args.prompts, args.steps, args.size)
            if reference is None:
                reference = images
            figures[name] = {"seconds": round(seconds, 2), "prompts_per_s": round(args.prompts / seconds, 2),
                             "groups": groups, "max_pixel_difference": largest_difference(images, reference)}
    base = figures["off"]["prompts_per_s"]
    for name, figure in figures.items():
        figure["ratio"] = round(figure["prompts_per_s"] / base, 3)
        print(f"{name:8} {figure['prompts_per_s']:7.2f} prompts/s  x{figure['ratio']:.3f}  {figure['groups']:>10}  "
              f"max pixel difference {figure['max_pixel_difference']}")
    print(json.dumps({"prompts": args.prompts, "steps": args.steps, "size": args.size, "group": args.group,
                      "runs": figures}))


if __name__ == "__main__":
    main()
