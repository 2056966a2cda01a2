"""A real S3 API server on 127.0.0.1 for the storage tests: moto in server mode, as a subprocess.

Every process of a test (the test itself, `farm web`, `farm worker`) reaches it over HTTP with
boto3, as they would reach AWS or MinIO; buckets are made per test, so tests never share files.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

# moto accepts any credentials unless it is told to check them; these are the ones the tests use.
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "farm-test", "AWS_SECRET_ACCESS_KEY": "farm-test-secret",
               "AWS_DEFAULT_REGION": "us-east-1"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class S3Server:
    def __init__(self, log: Path, check_credentials: bool = False):
        binary = Path(sys.executable).with_name("moto_server")
        if not binary.exists() and shutil.which("moto_server") is None:
            pytest.skip("moto_server is not installed: pip install 'moto[server]' (in the dev extra)")
        self.port = _free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, **CREDENTIALS}
        if check_credentials:
            env["INITIAL_NO_AUTH_ACTION_COUNT"] = "0"  # every request must carry keys moto knows
        self._log = open(log, "ab")
        self.process = subprocess.Popen(
            [str(binary) if binary.exists() else "moto_server", "-H", "127.0.0.1", "-p", str(self.port)],
            env=env, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                break
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"moto_server did not start: {log.read_text()[-2000:]}") from None
                time.sleep(0.1)

    def client(self):
        import boto3

        return boto3.session.Session(aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
                                     aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
                                     region_name="us-east-1").client("s3", endpoint_url=self.endpoint)

    def new_bucket(self) -> str:
        name = f"farm-{uuid.uuid4().hex[:16]}"
        self.client().create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return sorted(item["Key"] for page in pages for item in page.get("Contents", ()))

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(10)
        if self.process.poll() is None:
            self.process.kill()
        self._log.close()


@contextlib.contextmanager
def running_s3_server(log: Path, check_credentials: bool = False):
    server = S3Server(log, check_credentials)
    try:
        yield server
    finally:
        server.stop()
