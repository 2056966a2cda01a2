"""Which GPUs `farm worker` and `farm up` use: CUDA_VISIBLE_DEVICES, nvidia-smi, --gpus / --gpu."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys

import pytest

from farm.cli import build_parser
from farm.worker.device import GpuSelectionError, gpu_index, select_gpus, visible_gpus
from farm.worker.main import default_worker_name
from farm.worker.supervisor import Backoff

# What `nvidia-smi -L` prints on a host with a whole GPU and a GPU split into two MIG instances.
NVIDIA_SMI_LISTING = """\
GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-5d5ba0d6-1111-2222-3333-444455556666)
GPU 1: NVIDIA A100-SXM4-40GB (UUID: GPU-7e6cb1e7-1111-2222-3333-444455556666)
  MIG 3g.20gb     Device  0: (UUID: MIG-c6d4f1ef-aaaa-bbbb-cccc-ddddeeeeffff)
  MIG 3g.20gb     Device  1: (UUID: MIG-0a1b2c3d-aaaa-bbbb-cccc-ddddeeeeffff)
GPU 2: NVIDIA H100 80GB HBM3 (UUID: GPU-9f8e7d6c-1111-2222-3333-444455556666)
"""


@pytest.fixture
def fake_nvidia_smi(tmp_path, monkeypatch):
    """An `nvidia-smi` first on PATH that prints NVIDIA_SMI_LISTING for `-L`."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "nvidia-smi"
    listing = tmp_path / "listing.txt"
    listing.write_text(NVIDIA_SMI_LISTING)
    script.write_text(f'#!/bin/sh\n[ "$1" = "-L" ] || exit 9\ncat "{listing}"\n')
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    return script


def test_without_cuda_visible_devices_the_gpus_are_those_nvidia_smi_lists(fake_nvidia_smi):
    # A MIG-partitioned GPU gives one worker per instance (a CUDA process can use only one).
    assert visible_gpus() == ["0", "MIG-c6d4f1ef-aaaa-bbbb-cccc-ddddeeeeffff",
                              "MIG-0a1b2c3d-aaaa-bbbb-cccc-ddddeeeeffff", "2"]


def test_cuda_visible_devices_wins_over_nvidia_smi_in_its_order(fake_nvidia_smi, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2, GPU-5d5ba0d6-1111-2222-3333-444455556666,0")
    assert visible_gpus() == ["2", "GPU-5d5ba0d6-1111-2222-3333-444455556666", "0"]


def test_an_empty_cuda_visible_devices_means_no_gpu(fake_nvidia_smi, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert visible_gpus() == []


def test_no_gpu_without_nvidia_smi_or_when_it_fails(fake_nvidia_smi, monkeypatch, tmp_path):
    fake_nvidia_smi.write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed' >&2\nexit 9\n")
    assert visible_gpus() == []
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert visible_gpus() == []


def test_gpus_selects_visible_ids_in_the_order_given():
    visible = ["0", "1", "2", "GPU-abc"]
    assert select_gpus("all", visible) == visible
    assert select_gpus("2,0", visible) == ["2", "0"]
    assert select_gpus(" GPU-abc , 1,1", visible) == ["GPU-abc", "1"]


@pytest.mark.parametrize(("spec", "visible", "message"), [
    ("0,5", ["0", "1"], "unknown GPU id 5; visible GPUs: 0, 1"),
    ("1", [], "unknown GPU id 1; visible GPUs: none"),
    ("all", [], "no GPU is visible (CUDA_VISIBLE_DEVICES or nvidia-smi -L); use --cpu"),
    (" , ", ["0"], "--gpus needs 'all' or comma-separated GPU ids, e.g. --gpus 0,2"),
])
def test_gpus_naming_no_visible_gpu_is_refused_with_the_reason(spec, visible, message):
    with pytest.raises(GpuSelectionError) as raised:
        select_gpus(spec, visible)
    assert str(raised.value) == message


def _farm_worker(*args: str, cuda_visible_devices: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": cuda_visible_devices}
    return subprocess.run([sys.executable, "-m", "farm.cli", "worker", *args], env=env,
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(("args", "visible", "message"), [
    (["--gpus", "0,2"], "0,1", "farm worker: error: unknown GPU id 2; visible GPUs: 0, 1"),
    (["--gpus", "all"], "", "farm worker: error: no GPU is visible (CUDA_VISIBLE_DEVICES or nvidia-smi -L); use --cpu"),
    (["--gpu", "3"], "GPU-abc,1", "farm worker: error: unknown GPU id 3; visible GPUs: GPU-abc, 1"),
    (["--gpu", "0,1"], "0,1", "farm worker: error: --gpu takes one GPU id (use --gpus for several)"),
])
def test_farm_worker_with_an_unknown_gpu_exits_2_saying_which_are_visible(args, visible, message):
    result = _farm_worker(*args, cuda_visible_devices=visible)
    assert (result.returncode, result.stdout, result.stderr.strip()) == (2, "", message)


def test_worker_pins_a_gpu_uuid_and_reports_an_index_only_for_numeric_ids():
    code = (
        "import os\n"
        "from farm.worker.device import pin_device\n"
        "pin_device('GPU-5d5ba0d6-1111-2222-3333-444455556666')\n"
        "print(os.environ['CUDA_VISIBLE_DEVICES'], os.environ['CUDA_DEVICE_ORDER'])\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "CUDA_DEVICE_ORDER"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert result.stdout.split() == ["GPU-5d5ba0d6-1111-2222-3333-444455556666", "PCI_BUS_ID"], result.stderr
    assert [gpu_index(gpu) for gpu in ("3", 1, "GPU-5d5b", "MIG-c6d4", None)] == [3, 1, None, None, None]


def test_worker_names_per_device_and_with_a_base():
    host = socket.gethostname()
    assert default_worker_name(None) == f"{host}-cpu"
    assert default_worker_name("2") == f"{host}-gpu2"
    assert default_worker_name("0", "rack1") == "rack1-gpu0"
    # Old-style MIG ids hold slashes; a worker's name goes into URLs and queue names.
    assert default_worker_name("MIG-GPU-5d5b/1/0", "rack1") == "rack1-mig-gpu-5d5b-1-0"


def test_worker_flags_tags_and_verbose():
    args = build_parser().parse_args(["worker", "--gpus", "0,2", "--name", "rack1", "--tags", "sdxl, fast,",
                                      "--verbose"])
    assert (args.gpus, args.name, args.tags, args.verbose) == ("0,2", "rack1", ("sdxl", "fast"), True)
    assert build_parser().parse_args(["worker", "--cpu"]).verbose is None  # FARM_VERBOSE decides
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["worker", "--gpu", "0", "--cpu"])
    assert exited.value.code == 2


def test_restart_delay_doubles_from_1_to_60_s_and_starts_over_after_a_minute_up():
    backoff = Backoff()
    assert [backoff.next_delay(ran_seconds=0.5) for _ in range(8)] == [1, 2, 4, 8, 16, 32, 60, 60]
    assert backoff.next_delay(ran_seconds=60) == 1
    assert backoff.next_delay(ran_seconds=59) == 2
