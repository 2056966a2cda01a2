"""The storage contract, run on both backends: local folders and an S3 bucket on a real S3 API
server (moto in server mode). What a node, /view, an upload or a batch download sees must not
depend on where the files are."""

from __future__ import annotations

import io
import threading

import pytest

from farm.attempt_outputs import AttemptOutputs, discard_attempts
from farm.config import load_settings
from farm.storage import PathRejected, StorageUnavailable, make_storage


@pytest.fixture(params=["local", "s3"])
def storage(request, tmp_path):
    if request.param == "local":
        yield make_storage(load_settings(env={}, data_dir=str(tmp_path / "data")))
        return
    server = request.getfixturevalue("s3_server")
    request.getfixturevalue("s3_env")
    bucket = server.new_bucket()
    yield make_storage(load_settings(env={}, data_dir=str(tmp_path / "data"), storage_url=f"s3://{bucket}/farm",
                                     s3_endpoint_url=server.endpoint))


def a_second_host(storage, tmp_path):
    """The same store opened afresh, as another host would: no memory shared with `storage`."""
    if hasattr(storage, "bucket"):
        from farm.storage.s3 import S3Storage, _Client

        return S3Storage(storage.bucket, storage.prefix, _Client(storage._client.endpoint_url, None, 10))
    from farm.storage import LocalStorage

    return LocalStorage(storage.roots, storage.teams_root)


def test_numbered_outputs_continue_after_the_highest_and_read_back(storage):
    storage.save_upload("output", "shots", "img_00007_.png", io.BytesIO(b"old"), overwrite=False)
    first = storage.write_numbered("output", "shots", "img", ".png", b"one")
    second = storage.write_numbered("output", "shots", "img", ".png", b"two")
    assert (first, second) == ("img_00008_.png", "img_00009_.png")
    with storage.open("output", "shots", second) as handle:
        assert handle.read() == b"two"
    assert storage.stat("output", "shots", first).size == 3
    assert storage.exists("output", "shots", first) and not storage.exists("output", "shots", "img_00010_.png")
    with pytest.raises(FileNotFoundError):
        storage.open("output", "shots", "missing.png")


def test_two_hosts_saving_at_once_never_overwrite_each_other(storage, tmp_path):
    hosts = [storage, a_second_host(storage, tmp_path)]
    names: list[str] = []

    def save(host, label):
        for index in range(12):
            names.append(host.write_numbered("output", "", "race", ".png", f"{label}-{index}".encode()))

    threads = [threading.Thread(target=save, args=(host, label)) for label, host in enumerate(hosts)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(names)) == 24
    contents = set()
    for name in names:
        with storage.open("output", "", name) as handle:
            contents.add(handle.read())
    assert contents == {f"{label}-{index}".encode() for label in (0, 1) for index in range(12)}


def test_uploads_follow_comfyuis_naming(storage):
    assert storage.save_upload("input", "", "a.png", io.BytesIO(b"1"), overwrite=False) == "a.png"
    assert storage.save_upload("input", "", "a.png", io.BytesIO(b"1"), overwrite=False) == "a.png"  # same bytes
    assert storage.save_upload("input", "", "a.png", io.BytesIO(b"2"), overwrite=False) == "a (1).png"
    assert storage.save_upload("input", "", "a.png", io.BytesIO(b"3"), overwrite=False) == "a (2).png"
    assert storage.save_upload("input", "", "a.png", io.BytesIO(b"2"), overwrite=False) == "a (1).png"
    assert storage.save_upload("input", "", "a.png", io.BytesIO(b"4"), overwrite=True) == "a.png"
    with storage.open("input", "", "a.png") as handle:
        assert handle.read() == b"4"


def test_image_choices_are_the_top_level_images_sorted(storage):
    for subfolder, name in (("", "b.png"), ("", "a.jpg"), ("", "notes.txt"), ("deep", "c.png")):
        storage.save_upload("input", subfolder, name, io.BytesIO(b"x"), overwrite=False)
    assert storage.list_images("input") == ["a.jpg", "b.png"]
    assert storage.list_images("output") == []


@pytest.mark.parametrize("kind, subfolder, filename", [
    ("output", "..", "x.png"), ("output", "../input", "x.png"), ("output", "/etc", "passwd"),
    ("output", "a/../../b", "x.png"), ("output", "", ".."), ("output", "", "a/b.png"), ("output", "", "a\\b.png"),
    ("output", "", ""), ("output", "a\x00", "x.png"), ("models", "", "x.safetensors"),
])
def test_paths_leaving_the_store_are_refused_before_any_call(storage, kind, subfolder, filename):
    for action in (lambda: storage.open(kind, subfolder, filename), lambda: storage.stat(kind, subfolder, filename),
                   lambda: storage.save_upload(kind, subfolder, filename, io.BytesIO(b"x"), False),
                   lambda: storage.delete(kind, subfolder, filename)):
        with pytest.raises(PathRejected):
            action()


def test_subfolders_inside_the_store_are_normalized(storage):
    storage.save_upload("output", "a/./b/../c", "x.png", io.BytesIO(b"x"), overwrite=False)
    with storage.open("output", "a/c", "x.png") as handle:
        assert handle.read() == b"x"
    storage.check_folder("output", "a/../a")
    with pytest.raises(PathRejected):
        storage.check_folder("output", "a/../..")


def test_a_team_sees_its_own_files_only(storage):
    storage.for_team("blue").save_upload("output", "", "mine.png", io.BytesIO(b"blue"), overwrite=False)
    assert storage.for_team("blue").exists("output", "", "mine.png")
    assert not storage.exists("output", "", "mine.png")
    assert not storage.for_team("red").exists("output", "", "mine.png")
    with pytest.raises(PathRejected):
        storage.for_team("../blue")


def test_a_retried_prompt_keeps_one_set_of_outputs(storage, tmp_path):
    first = AttemptOutputs(storage, "p1", 1, team="blue")
    lost = first.write_numbered("output", "", "shot", ".png", b"attempt 1")
    other_host = a_second_host(storage, tmp_path)
    assert discard_attempts(other_host, "p1", keep=2) == 1  # attempt 2 claimed on another host
    assert not storage.for_team("blue").exists("output", "", lost)
    second = AttemptOutputs(other_host, "p1", 2, team="blue")
    kept = second.write_numbered("output", "", "shot", ".png", b"attempt 2")
    second.keep()
    assert storage.journal_names("p1.") == []
    assert discard_attempts(storage, "p1") == 0
    with storage.for_team("blue").open("output", "", kept) as handle:
        assert handle.read() == b"attempt 2"


def test_a_missing_bucket_or_refused_access_is_said_at_start(s3_server, s3_env, tmp_path):
    from tests.s3_server import running_s3_server

    missing = make_storage(load_settings(env={}, data_dir=str(tmp_path), storage_url="s3://farm-no-such-bucket/x",
                                         s3_endpoint_url=s3_server.endpoint))
    with pytest.raises(StorageUnavailable, match="bucket 'farm-no-such-bucket' does not exist"):
        missing.check_available()
    with running_s3_server(tmp_path / "strict.log", check_credentials=True) as strict:
        refused = make_storage(load_settings(env={}, data_dir=str(tmp_path), storage_url="s3://farm-bucket/x",
                                             s3_endpoint_url=strict.endpoint))
        with pytest.raises(StorageUnavailable, match="access to bucket 'farm-bucket' is denied"):
            refused.check_available()
    unreachable = make_storage(load_settings(env={}, data_dir=str(tmp_path), storage_url="s3://farm-bucket/x",
                                             s3_endpoint_url="http://127.0.0.1:9"))
    with pytest.raises(StorageUnavailable, match="cannot reach the store"):
        unreachable.check_available()


def test_farm_commands_refuse_to_start_on_a_missing_bucket(s3_server, s3_env, tmp_path, monkeypatch, capsys):
    from farm.cli import main

    monkeypatch.setenv("FARM_STORAGE_URL", "s3://farm-no-such-bucket/x")
    monkeypatch.setenv("FARM_S3_ENDPOINT_URL", s3_server.endpoint)
    for command in (["web"], ["worker", "--cpu"], ["up", "--cpu"]):
        assert main([*command, "--data-dir", str(tmp_path)]) == 2
        assert "bucket 'farm-no-such-bucket' does not exist" in capsys.readouterr().err


def test_a_malformed_storage_url_is_refused_with_the_expected_form():
    with pytest.raises(ValueError, match="s3://bucket/prefix"):
        load_settings(env={"FARM_STORAGE_URL": "/srv/outputs"})
    with pytest.raises(ValueError, match="s3://bucket/prefix"):
        load_settings(env={"FARM_STORAGE_URL": "s3:///prefix"})
