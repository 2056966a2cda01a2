"""Settings from FARM_* variables and flags; storage paths that cannot leave the store."""

from __future__ import annotations

import pytest

from farm.config import load_settings, settings_environment
from farm.storage import LocalStorage, PathRejected, split_prefix


def test_defaults_are_the_single_machine_values(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = load_settings(env={})
    assert settings.data_dir == tmp_path / "farm-data"
    assert settings.models_dir == tmp_path / "models"
    assert settings.output_dir == tmp_path / "farm-data" / "output"
    assert settings.database_url == f"sqlite:///{tmp_path / 'farm-data' / 'farm.db'}"
    assert settings.broker_url is None and settings.events_url is None
    assert (settings.host, settings.port) == ("127.0.0.1", 8188)


def test_environment_then_flags(tmp_path):
    env = {"FARM_DATA_DIR": str(tmp_path / "d"), "FARM_BROKER_URL": "redis://r:6379/1", "FARM_PORT": "9000",
           "FARM_OUTPUT_DIR": str(tmp_path / "out")}
    settings = load_settings(env=env, port=9100)
    assert settings.port == 9100
    assert settings.events_url == "redis://r:6379/1"  # the broker, when it is Redis
    assert settings.output_dir == tmp_path / "out" and settings.input_dir == tmp_path / "d" / "input"
    assert load_settings(env={"FARM_BROKER_URL": "amqp://x"}).events_url is None
    assert load_settings(env=settings_environment(settings)) == settings


def test_the_preview_method_flag_of_farm_up_and_farm_worker_reaches_the_workers(tmp_path):
    from farm.cli import build_parser

    assert build_parser().parse_args(["up"]).preview_method is None
    for argv in (["up", "--preview-method", "auto"], ["worker", "--cpu", "--preview-method", "auto"]):
        flag = build_parser().parse_args(argv).preview_method
        settings = load_settings(env={"FARM_PREVIEW_METHOD": "none"}, preview_method=flag)
        assert settings.preview_method == "auto"  # the flag wins, and `farm up` hands it to its workers:
        assert settings_environment(settings)["FARM_PREVIEW_METHOD"] == "auto"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["up", "--preview-method", "vae"])
    assert load_settings(env={"FARM_PREVIEW_METHOD": "latent2rgb"}).preview_method == "latent2rgb"


@pytest.fixture
def storage(tmp_path):
    return LocalStorage({"output": tmp_path / "out", "input": tmp_path / "in", "temp": tmp_path / "temp"})


@pytest.mark.parametrize("subfolder,filename", [
    ("..", "x.png"), ("../..", "x.png"), ("/etc", "passwd"), ("a/../../b", "x.png"),
    ("", "../x.png"), ("", "a/b.png"), ("", ""), ("", ".."),
])
def test_paths_cannot_leave_the_store(storage, subfolder, filename):
    with pytest.raises(PathRejected):
        storage.resolve("output", subfolder, filename)


def test_symlinks_are_followed_before_the_check(storage, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.png").write_bytes(b"x")
    root = storage.root("output")
    (root / "door").symlink_to(outside)
    (root / "file.png").symlink_to(outside / "secret.png")
    with pytest.raises(PathRejected):
        storage.resolve("output", "door", "secret.png")
    with pytest.raises(PathRejected):
        storage.resolve("output", "", "file.png")
    assert storage.resolve("output", "sub/dir", "a.png") == root / "sub" / "dir" / "a.png"


def test_unknown_kind_is_rejected(storage):
    with pytest.raises(PathRejected):
        storage.resolve("models", "", "x.safetensors")


def test_numbered_files_continue_the_counter_and_never_overwrite(storage):
    names = [storage.write_numbered("output", "s", "img", ".png", b"%d" % i) for i in range(3)]
    assert names == ["img_00001_.png", "img_00002_.png", "img_00003_.png"]
    folder = storage.root("output") / "s"
    (folder / "img_00009_.png").write_bytes(b"old")
    (folder / "img_00004_.png").write_bytes(b"other worker")
    assert storage.write_numbered("output", "s", "img", ".png", b"new") == "img_00005_.png"
    # A fresh process scans the folder and continues after the highest counter (ComfyUI's rule).
    again = LocalStorage(storage.roots)
    assert again.write_numbered("output", "s", "img", ".png", b"new") == "img_00010_.png"
    assert (folder / "img_00009_.png").read_bytes() == b"old"
    assert (folder / "img_00004_.png").read_bytes() == b"other worker"
    assert storage.write_numbered("output", "s", "other", ".png", b"x") == "other_00001_.png"


def test_prefix_split_and_escape():
    assert split_prefix("portraits/run1/img") == ("portraits/run1", "img")
    assert split_prefix("ComfyUI") == ("", "ComfyUI")
    for prefix in ("../x", "/abs/x", "a/../../x"):
        with pytest.raises(PathRejected):
            split_prefix(prefix)
