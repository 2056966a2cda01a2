"""Where inputs, outputs and temp files live, addressed as (type, subfolder, filename) like ComfyUI.

Two backends answer the same methods: `LocalStorage` (folders on disk, the default) and
`S3Storage` (`FARM_STORAGE_URL=s3://bucket/prefix`, any S3-compatible store). Code outside this
package reads and writes through those methods only, so a worker and a web process on different
hosts need to share nothing but the store.
"""

from __future__ import annotations

from farm.storage.local import LocalStorage
from farm.storage.paths import (
    DEFAULT_TEAM, IMAGE_SUFFIXES, KINDS, PathRejected, StorageUnavailable, StoredFile, content_type, split_prefix,
)

__all__ = ["DEFAULT_TEAM", "IMAGE_SUFFIXES", "KINDS", "LocalStorage", "PathRejected", "StorageUnavailable",
           "StoredFile", "content_type", "make_storage", "split_prefix"]


def make_storage(settings):
    """The store the settings name: S3 for an `s3://` storage URL, the local folders otherwise."""
    url = getattr(settings, "storage_url", None)
    if url:
        from farm.storage.s3 import S3Storage  # boto3 only where S3 is used

        return S3Storage.from_settings(settings)
    return LocalStorage.from_settings(settings)
