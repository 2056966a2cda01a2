"""A full output storage is told apart from a node's own failure (farm.storage.full): on a real,
tiny tmpfs a write fails with ENOSPC, leaves no truncated file, and reaches the executor as
StorageFull; the worker's wait after such failures doubles and starts over after a success."""

from __future__ import annotations

import contextlib
import errno
import os

import pytest

from farm.attempt_outputs import AttemptOutputs
from farm.storage.full import Backoff, StorageFull, is_full, is_full_error
from farm.storage.local import LocalStorage
from tests.services import small_storage


@contextlib.contextmanager
def tiny_tmpfs(folder, kilobytes: int):
    with small_storage(folder, kilobytes / 1024) as mounted:
        if not mounted:
            pytest.skip("could not mount a tmpfs (needs root)")
        yield folder


def test_what_counts_as_a_full_storage():
    class QuotaError(Exception):  # botocore's ClientError carries its answer as `response`
        response = {"Error": {"Code": "XMinioAdminBucketQuotaExceeded"}}

    assert is_full(OSError(errno.ENOSPC, "No space left on device"))
    assert is_full(OSError(errno.EDQUOT, "Disk quota exceeded"))
    assert is_full(QuotaError()) and is_full(StorageFull(errno.ENOSPC, "full"))
    assert not is_full(OSError(errno.EACCES, "Permission denied")) and not is_full(ValueError("no"))
    assert is_full_error({"exception_type": "StorageFull"}) and not is_full_error({"exception_type": "OSError"})
    assert not is_full_error(None)


def test_a_write_that_finds_no_room_leaves_nothing_behind_and_says_storage_full(tmp_path):
    with tiny_tmpfs(tmp_path / "output", 64) as output:
        storage = LocalStorage({"output": output, "temp": tmp_path / "temp"})
        assert storage.write_numbered("output", "", "small", ".png", b"x" * 1000)
        with pytest.raises(OSError) as full:
            storage.write_numbered("output", "", "big", ".png", b"x" * 200_000)
        assert full.value.errno == errno.ENOSPC
        assert sorted(os.listdir(output)) == ["small_00001_.png"]  # no truncated big_00001_.png
        attempt = AttemptOutputs(storage, "p", 1)
        with pytest.raises(StorageFull) as through_attempt:
            attempt.write_numbered("output", "", "big", ".png", b"x" * 200_000)
        assert type(through_attempt.value).exception_type == "StorageFull"
        assert sorted(os.listdir(output)) == ["small_00001_.png"]


def test_the_wait_after_a_full_storage_doubles_to_its_cap_and_starts_over():
    backoff = Backoff(first=1.0, most=5.0)
    assert [backoff.failed() for _ in range(5)] == [1.0, 2.0, 4.0, 5.0, 5.0]
    backoff.succeeded()
    assert backoff.failed() == 1.0
