"""A directory on the local filesystem as the object store."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import time
from pathlib import Path
from typing import BinaryIO

from aperiodic_pipelines.domain.errors import StoreError
from aperiodic_pipelines.storage.base import (
    HASH_CHUNK,
    STALE_WRITE_SECONDS,
    ObjectNotFoundError,
    PublishedObject,
    check_key,
    check_publishable,
    sha256_file,
)

TEMP_PREFIX = ".tmp-"


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable; not every platform lets you open a directory.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_copy(source: Path, target: Path) -> tuple[int, str]:
    """Copy `source` to `target` so `target` is either the old file or the complete new one.

    Writes a temp file next to `target`, fsyncs it, re-hashes what landed on disk, then `os.replace`s.
    Returns (size, sha256) of the published bytes. On any failure the temp file is removed.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=".part", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as out, open(source, "rb") as src:
            while chunk := src.read(HASH_CHUNK):
                digest.update(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        size, written_sha = sha256_file(tmp)
        if written_sha != digest.hexdigest():
            raise StoreError(f"{target}: bytes on disk differ from {source} after copy")
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; published files should be readable like any other
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(target.parent)
    return size, written_sha


def remove_stale_temp_files(directory: Path, older_than: float, *, recursive: bool = False) -> int:
    """Remove `.tmp-*` files in `directory` not modified for `older_than` seconds; returns how many.

    A live writer's temp file is written chunk by chunk, so its mtime stays fresh; only a dead writer's file
    ages. A writer stalled past the age loses its temp file and fails on the rename: no object is harmed.
    """
    if not directory.is_dir():
        return 0
    cutoff = time.time() - older_than
    removed = 0
    for tmp in directory.rglob(f"{TEMP_PREFIX}*") if recursive else directory.glob(f"{TEMP_PREFIX}*"):
        with contextlib.suppress(FileNotFoundError):  # another cleaner got there first
            if tmp.is_file() and tmp.stat().st_mtime < cutoff:
                tmp.unlink()
                removed += 1
    return removed


class LocalStore:
    """Objects are files under `root`; keys map to relative paths.

    Publishing a key also removes dead writers' temp files (older than `stale_after` seconds) from the
    key's directory, so a run killed mid-publish leaves nothing behind for long.
    """

    def __init__(self, root: Path | str, *, stale_after: float = STALE_WRITE_SECONDS) -> None:
        self.root = Path(root).expanduser().resolve()
        self.stale_after = stale_after

    def __repr__(self) -> str:
        return f"LocalStore(root={str(self.root)!r})"

    def path(self, key: str) -> Path:
        """Local filesystem path of `key`."""
        return self.root / check_key(key)

    def uri(self, key: str) -> str:
        return str(self.path(key))

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def list(self, prefix: str = "") -> list[str]:
        """Keys under `prefix` (a plain string prefix of the key, like S3), sorted; temp files excluded."""
        if prefix.startswith("/") or ".." in prefix.split("/"):
            raise StoreError(f"invalid list prefix {prefix!r}: expected a relative key prefix like 'flow/'")
        if not self.root.is_dir():
            return []
        # Walk only the deepest directory the prefix names, then filter by the full string prefix.
        base = self.root / prefix.rsplit("/", 1)[0] if "/" in prefix else self.root
        if not base.is_dir():
            return []
        keys = []
        for dirpath, _dirnames, filenames in os.walk(base):
            for name in filenames:
                if name.startswith(TEMP_PREFIX):
                    continue
                key = Path(dirpath, name).relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)

    def open_read(self, key: str) -> BinaryIO:
        try:
            return open(self.path(key), "rb")  # noqa: SIM115 - the caller owns the handle
        except FileNotFoundError:
            raise ObjectNotFoundError(f"no object {key!r} in {self!r}") from None

    def read_bytes(self, key: str) -> bytes:
        with self.open_read(key) as fh:
            return fh.read()

    def download(self, key: str, local_path: Path | str) -> Path:
        source = self.path(key)
        if not source.is_file():
            raise ObjectNotFoundError(f"no object {key!r} in {self!r}")
        target = Path(local_path)
        atomic_copy(source, target)
        return target

    def publish_file(
        self, local_path: Path | str, key: str, *, content_type: str | None = None
    ) -> PublishedObject:
        """Atomically place a copy of `local_path` at `key`; the previous object stays until the swap.

        `content_type` is accepted for interface parity with S3 and ignored on a filesystem.
        """
        source = Path(local_path)
        target = self.path(key)
        check_publishable(source, key)
        size, sha = atomic_copy(source, target)
        remove_stale_temp_files(target.parent, self.stale_after)
        return PublishedObject(uri=str(target), key=key, size=size, sha256=sha)

    def delete(self, key: str) -> None:
        """Remove `key` if present (no error when absent, like S3)."""
        self.path(key).unlink(missing_ok=True)

    def remove_stale_leftovers(self, prefix: str = "", *, older_than: float | None = None) -> int:
        """Remove dead writers' temp files under the directory `prefix` names (all of it by default).

        The maintenance form of what every publish does for its own directory; returns how many were removed.
        """
        if prefix.startswith("/") or ".." in prefix.split("/"):
            raise StoreError(f"invalid prefix {prefix!r}: expected a relative key prefix like 'flow/'")
        directory = self.root / prefix.rsplit("/", 1)[0] if "/" in prefix else self.root
        return remove_stale_temp_files(
            directory, self.stale_after if older_than is None else older_than, recursive=True
        )
