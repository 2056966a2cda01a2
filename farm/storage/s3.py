"""Inputs, outputs and temp files in an S3-compatible bucket (`FARM_STORAGE_URL=s3://bucket/prefix`).

Keys mirror the local layout: `<prefix>/<type>/<subfolder>/<filename>` for the default team,
`<prefix>/teams/<team>/<type>/...` for the others, and attempt journals under
`<prefix>/.attempts/`, outside every type, so no (type, subfolder, filename) reaches them.
Numbered outputs and uploads are created with a conditional write (`If-None-Match: *`), so hosts
sharing the bucket never replace each other's files, as the exclusive create does on disk; the
store must support it (AWS S3, MinIO, Ceph RGW and R2 do).
"""

from __future__ import annotations

import hashlib
import os
import socket
import tempfile
import threading
import time
import uuid
from typing import BinaryIO, Iterator
from urllib.parse import urlsplit

from farm.storage.numbering import NumberedNames
from farm.storage.paths import (
    DEFAULT_TEAM, StorageUnavailable, StoredFile, check_filename, check_kind, check_team, clean_subfolder,
    content_type, is_image_name, numbered_pattern,
)

JOURNALS = ".attempts/"
SPOOL_BYTES = 16 * 1024 * 1024  # reads bigger than this spill from memory to a temporary file
CHUNK = 256 * 1024
MISSING = {"404", "NoSuchKey", "NotFound"}
TAKEN = {"PreconditionFailed", "412", "ConditionalRequestConflict", "409"}


def parse_storage_url(url: str) -> tuple[str, str]:
    """`s3://bucket/some/prefix` -> ("bucket", "some/prefix/"); ValueError naming what is wrong."""
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc:
        raise ValueError(f"FARM_STORAGE_URL must look like s3://bucket/prefix, not {url!r}")
    prefix = parts.path.strip("/")
    return parts.netloc, f"{prefix}/" if prefix else ""


class _Client:
    """One boto3 client per process: clients are thread-safe but must not cross a fork."""

    def __init__(self, endpoint_url: str | None, region: str | None, pool: int):
        self.endpoint_url, self.region, self.pool = endpoint_url, region, pool
        self._lock = threading.Lock()
        self._made: tuple[int, object] | None = None

    def get(self):
        made = self._made
        if made is None or made[0] != os.getpid():
            with self._lock:
                made = self._made
                if made is None or made[0] != os.getpid():
                    made = self._made = (os.getpid(), self._make())
        return made[1]

    def _make(self):
        import boto3
        from botocore.config import Config

        config = Config(
            retries={"max_attempts": 5, "mode": "standard"}, max_pool_connections=self.pool,
            connect_timeout=5, read_timeout=60,
            # Stores other than AWS (MinIO, Ceph, moto) are reached at their endpoint by path.
            s3={"addressing_style": "path" if self.endpoint_url else "auto"},
        )
        return boto3.session.Session().client("s3", endpoint_url=self.endpoint_url, region_name=self.region,
                                              config=config)


def _code(error) -> str:
    response = getattr(error, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


class S3Storage:
    """The same methods as LocalStorage, on keys of one bucket."""

    def __init__(self, bucket: str, prefix: str, client: _Client, *, presign: bool = False,
                 presign_seconds: int = 3600, base: str | None = None):
        self.bucket, self.prefix, self._client = bucket, prefix, client
        self.presign, self.presign_seconds = presign, presign_seconds
        self.base = prefix if base is None else base  # where this team's type folders start
        self._names = NumberedNames()
        self._teams: dict[str, S3Storage] = {}

    @classmethod
    def from_settings(cls, settings) -> "S3Storage":
        bucket, prefix = parse_storage_url(settings.storage_url)
        client = _Client(settings.s3_endpoint_url, settings.s3_region, pool=max(10, settings.web_threads + 4))
        return cls(bucket, prefix, client, presign=settings.s3_presign, presign_seconds=settings.s3_presign_seconds)

    @property
    def client(self):
        return self._client.get()

    def describe(self) -> str:
        where = f" at {self._client.endpoint_url}" if self._client.endpoint_url else ""
        return f"s3://{self.bucket}/{self.prefix}{where}"

    def for_team(self, team: str | None) -> "S3Storage":
        if not team or team == DEFAULT_TEAM:
            return self
        found = self._teams.get(team)
        if found is None:
            found = S3Storage(self.bucket, self.prefix, self._client, presign=self.presign,
                              presign_seconds=self.presign_seconds, base=f"{self.prefix}teams/{check_team(team)}/")
            self._teams = {**self._teams, team: found}  # replaced, not changed: read without a lock
        return found

    # Names to keys, with the checks a folder on disk applies.

    def check_folder(self, kind: str, subfolder: str) -> None:
        clean_subfolder(check_kind(kind), subfolder)

    def folder_key(self, kind: str, subfolder: str) -> str:
        subfolder = clean_subfolder(check_kind(kind), subfolder)
        return f"{self.base}{kind}/{subfolder}/" if subfolder else f"{self.base}{kind}/"

    def key(self, kind: str, subfolder: str, filename: str) -> str:
        return self.folder_key(kind, subfolder) + check_filename(filename)

    # Start-up check

    def check_available(self, write: bool = True) -> None:
        """Raise StorageUnavailable, saying why, unless the bucket exists and (with `write`) takes a
        write and a delete with these credentials: a farm must not start and then fail at its first image."""
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

        where = self.describe()
        probe = f"{self.prefix}.farm-probe/{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            self.client.head_bucket(Bucket=self.bucket)
            if write:
                self.client.put_object(Bucket=self.bucket, Key=probe, Body=b"")
                self.client.delete_object(Bucket=self.bucket, Key=probe)
        except NoCredentialsError:
            raise StorageUnavailable(f"storage {where}: no S3 credentials found (set AWS_ACCESS_KEY_ID and "
                                     "AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or give the host a role)") from None
        except ClientError as error:
            code = _code(error)
            if code in ("404", "NoSuchBucket", "NotFound"):
                message = f"bucket {self.bucket!r} does not exist"
            elif code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "Forbidden"):
                message = f"access to bucket {self.bucket!r} is denied ({code}): check the credentials and the " \
                          "bucket's policy (the farm needs to list, read, write and delete objects)"
            else:
                message = f"the store answered {code or error}"
            raise StorageUnavailable(f"storage {where}: {message}") from None
        except BotoCoreError as error:
            raise StorageUnavailable(f"storage {where}: cannot reach the store: {error}") from None

    # Reading

    def exists(self, kind: str, subfolder: str, filename: str) -> bool:
        try:
            self.stat(kind, subfolder, filename)
            return True
        except FileNotFoundError:
            return False

    def stat(self, kind: str, subfolder: str, filename: str) -> StoredFile:
        key = self.key(kind, subfolder, filename)
        head = self._call("head_object", Key=key)
        return StoredFile(head["ContentLength"], head.get("ETag", "").strip('"'), head["LastModified"])

    def open(self, kind: str, subfolder: str, filename: str) -> BinaryIO:
        """The object's bytes as a seekable file (readers such as PIL seek); FileNotFoundError if missing."""
        body = self._call("get_object", Key=self.key(kind, subfolder, filename))["Body"]
        spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES)
        try:
            for chunk in body.iter_chunks(CHUNK):
                spool.write(chunk)
        finally:
            body.close()
        spool.seek(0)
        return spool

    def read(self, kind: str, subfolder: str, filename: str, first: int | None = None,
             last: int | None = None) -> Iterator[bytes]:
        """The object's bytes (from `first` to `last` inclusive when given), chunk by chunk: the
        range is read by the store, not skipped over here."""
        extra = {"Range": f"bytes={first}-{last}"} if first is not None else {}
        body = self._call("get_object", Key=self.key(kind, subfolder, filename), **extra)["Body"]

        def chunks():
            try:
                yield from body.iter_chunks(CHUNK)
            finally:
                body.close()

        return chunks()

    def local_path(self, kind: str, subfolder: str, filename: str) -> None:
        return None

    def presigned_url(self, kind: str, subfolder: str, filename: str, *, mimetype: str | None = None,
                      disposition: str | None = None) -> str | None:
        """A time-limited URL of the object at the store itself, when FARM_S3_PRESIGN is on; the
        headers it will be served with are signed into it."""
        if not self.presign:
            return None
        params = {"Bucket": self.bucket, "Key": self.key(kind, subfolder, filename)}
        if mimetype:
            params["ResponseContentType"] = mimetype
        if disposition:
            params["ResponseContentDisposition"] = disposition
        return self.client.generate_presigned_url("get_object", Params=params, ExpiresIn=self.presign_seconds)

    def list_images(self, kind: str) -> list[str]:
        """The image files at the top of the type's folder, sorted (LoadImage's choices)."""
        folder = self.folder_key(kind, "")
        names = []
        for page in self._pages(Prefix=folder, Delimiter="/"):
            names.extend(item["Key"][len(folder):] for item in page.get("Contents", ()))
        return sorted(name for name in names if name and is_image_name(name))

    # Writing

    def write_numbered(self, kind: str, subfolder: str, basename: str, suffix: str, data: bytes,
                       before_create=None) -> str:
        """LocalStorage.write_numbered on keys (farm.storage.numbering): the next counter is found
        by listing the basename's prefix; each name is created conditionally, so a name another
        host took meanwhile moves this one on."""
        folder = self.folder_key(kind, subfolder)

        def check(filename: str) -> None:
            check_filename(filename)
            if before_create is not None:
                before_create(kind, subfolder, filename)

        return self._names.create(folder, basename, suffix,
                                  lambda filename: self._create(folder + filename, data, content_type(filename)),
                                  lambda: self._scan_counter(folder, basename), check)

    def _scan_counter(self, folder: str, basename: str) -> int:
        pattern = numbered_pattern(basename)
        highest = 0
        for page in self._pages(Prefix=f"{folder}{basename}_"):
            for item in page.get("Contents", ()):
                match = pattern.match(item["Key"][len(folder):])
                if match:
                    highest = max(highest, int(match.group(1)))
        return highest + 1

    def save_upload(self, kind: str, subfolder: str, filename: str, stream: BinaryIO, overwrite: bool) -> str:
        """LocalStorage.save_upload's naming rule on keys: the upload is spooled (hashed on the
        way), then created under the first name that is free or already holds the same bytes."""
        self.key(kind, subfolder, filename)  # a bad name is refused before anything is read
        spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES)
        with spool:
            digest = hashlib.sha256()
            while chunk := stream.read(1 << 20):
                digest.update(chunk)
                spool.write(chunk)
            sha256, size = digest.hexdigest(), spool.tell()
            stem, extension = os.path.splitext(filename)
            candidate, number = filename, 0
            while True:
                key = self.key(kind, subfolder, candidate)
                spool.seek(0)
                if overwrite:
                    self._call("put_object", Key=key, Body=spool, ContentType=content_type(candidate),
                               Metadata={"sha256": sha256})
                    return candidate
                if self._create(key, spool, content_type(candidate), {"sha256": sha256}):
                    return candidate
                if self._same_content(key, sha256, size):
                    return candidate
                number += 1
                candidate = f"{stem} ({number}){extension}"

    def _same_content(self, key: str, sha256: str, size: int) -> bool:
        try:
            head = self._call("head_object", Key=key)
        except FileNotFoundError:
            return False  # deleted meanwhile: the next name is as good
        if head["ContentLength"] != size:
            return False
        recorded = head.get("Metadata", {}).get("sha256")
        if recorded:
            return recorded == sha256
        digest = hashlib.sha256()  # an object put there by something else: read it
        body = self._call("get_object", Key=key)["Body"]
        for chunk in body.iter_chunks(CHUNK):
            digest.update(chunk)
        return digest.hexdigest() == sha256

    def _create(self, key: str, body, mimetype: str, metadata: dict | None = None) -> bool:
        """Put `body` at `key` unless the key exists; whether it was created."""
        from botocore.exceptions import ClientError

        try:
            self.client.put_object(Bucket=self.bucket, Key=key, Body=body, ContentType=mimetype,
                                   Metadata=metadata or {}, IfNoneMatch="*")
            return True
        except ClientError as error:
            if _code(error) in TAKEN:
                return False
            if _code(error) in ("NotImplemented", "501"):
                raise StorageUnavailable(f"storage {self.describe()}: the store does not support conditional "
                                         "writes (If-None-Match), which the farm needs to never overwrite a file") from None
            raise

    def delete(self, kind: str, subfolder: str, filename: str) -> bool:
        self._call("delete_object", Key=self.key(kind, subfolder, filename))
        return True

    # Attempt journals (farm.attempt_outputs): S3 has no append, so each line is an object of its
    # own under `.attempts/<name>/`, and a journal is the list of them.

    def _journal_folder(self, name: str) -> str:
        return f"{self.prefix}{JOURNALS}{check_filename(name)}/"

    def journal_append(self, name: str, line: str) -> None:
        entry = f"{self._journal_folder(name)}{time.time_ns():020d}-{uuid.uuid4().hex[:8]}"
        self._call("put_object", Key=entry, Body=line.encode())

    def journal_names(self, prefix: str) -> list[str]:
        folder = f"{self.prefix}{JOURNALS}"
        names = []
        for page in self._pages(Prefix=folder + prefix, Delimiter="/"):
            names.extend(item["Prefix"][len(folder):].rstrip("/") for item in page.get("CommonPrefixes", ()))
        return names

    def _journal_keys(self, name: str) -> list[str]:
        return sorted(item["Key"] for page in self._pages(Prefix=self._journal_folder(name))
                      for item in page.get("Contents", ()))

    def journal_lines(self, name: str) -> list[str]:
        lines = []
        for key in self._journal_keys(name):
            try:
                lines.append(self._call("get_object", Key=key)["Body"].read().decode(errors="replace"))
            except FileNotFoundError:
                continue
        return lines

    def journal_drop(self, name: str) -> None:
        keys = self._journal_keys(name)
        for start in range(0, len(keys), 1000):  # DeleteObjects takes 1,000 keys at most
            self.client.delete_objects(Bucket=self.bucket, Delete={
                "Objects": [{"Key": key} for key in keys[start:start + 1000]], "Quiet": True})

    # Calls

    def _pages(self, **params):
        return self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, **params)

    def _call(self, operation: str, **params):
        """One S3 call on this bucket; a missing object is FileNotFoundError, as on disk."""
        from botocore.exceptions import ClientError

        try:
            return getattr(self.client, operation)(Bucket=self.bucket, **params)
        except ClientError as error:
            if _code(error) in MISSING:
                raise FileNotFoundError(params.get("Key", "")) from None
            raise
