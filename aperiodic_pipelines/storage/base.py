"""The object-store contract shared by the local-directory and S3 implementations."""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol, runtime_checkable

from aperiodic_pipelines.domain.errors import StoreError
from aperiodic_pipelines.hashing import HASH_CHUNK, sha256_file  # noqa: F401  (re-exported for the stores)

PARQUET_MAGIC = b"PAR1"
# A writer's leftovers (a local `.tmp-*` file, an S3 multipart upload) older than this are a dead writer's:
# a live local writer touches its temp file with every chunk, and publishing one object takes minutes, not
# an hour. Override with APERIODIC_STALE_WRITE_SECONDS (see `store_from_uri`).
STALE_WRITE_SECONDS = 3600.0


class ObjectNotFoundError(StoreError, FileNotFoundError):
    """A key the store does not hold."""


class PreconditionFailedError(StoreError):
    """A conditional write lost: the object changed (or appeared) since the writer read it."""


@dataclass(frozen=True)
class PublishedObject:
    """What `publish_file` made visible: where, under which key, and the verified size and sha256."""

    uri: str
    key: str
    size: int
    sha256: str


@runtime_checkable
class ObjectStore(Protocol):
    """Keys are '/'-separated paths relative to the store's root (see `storage.keys`)."""

    def uri(self, key: str) -> str: ...

    def exists(self, key: str) -> bool: ...

    def list(self, prefix: str = "") -> list[str]: ...

    def open_read(self, key: str) -> BinaryIO: ...

    def read_bytes(self, key: str) -> bytes: ...

    def download(self, key: str, local_path: Path | str) -> Path: ...

    def pinned(self, key: str) -> AbstractContextManager[Path]:
        """A private local file of `key` for the block's several reads, unchanged by a republication meanwhile."""
        ...

    def publish_file(
        self, local_path: Path | str, key: str, *, content_type: str | None = None
    ) -> PublishedObject: ...

    def delete(self, key: str) -> None: ...

    def remove_stale_leftovers(self, prefix: str = "", *, older_than: float | None = None) -> int: ...

    # What whole publication needs (storage.publication).

    def read_tagged(self, key: str) -> tuple[bytes, str] | None: ...

    def put_bytes_if(self, key: str, data: bytes, *, tag: str | None, content_type: str | None = None) -> str: ...

    def copy_object(self, source_key: str, target_key: str) -> PublishedObject: ...

    def same_object(self, key: str, other: str) -> bool: ...

    def stored_sha256(self, key: str) -> tuple[int, str | None]: ...

    def modified_at(self, key: str) -> float: ...


def check_key(key: str) -> str:
    """Reject keys that would escape the root or are not plain relative paths."""
    parts = key.split("/") if isinstance(key, str) else []
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise StoreError(f"invalid object key {key!r}: expected a relative path like 'flow/.../2024-01.parquet'")
    return key


def check_publishable(local_path: Path, key: str) -> None:
    """Refuse to publish something readers could not use: a missing file, or a `.parquet` that is not one.

    Checking the parquet magic at both ends catches truncated or foreign files before they replace a
    good object.
    """
    if not local_path.is_file():
        raise StoreError(f"cannot publish {key!r}: {local_path} is not a file")
    if key.endswith(".parquet"):
        size = local_path.stat().st_size
        with open(local_path, "rb") as fh:
            head = fh.read(4)
            fh.seek(max(size - 4, 0))
            tail = fh.read(4)
        if size < 12 or head != PARQUET_MAGIC or tail != PARQUET_MAGIC:
            raise StoreError(f"cannot publish {key!r}: {local_path} is not a complete parquet file")
