"""A directory on the local filesystem as the object store."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from aperiodic_pipelines.atomic import (
    TEMP_PREFIX,
    atomic_link,
    atomic_path,
    atomic_write,
    flocked,
    remove_stale_temp_files,
)
from aperiodic_pipelines.domain.errors import StoreError
from aperiodic_pipelines.storage.base import (
    HASH_CHUNK,
    STALE_WRITE_SECONDS,
    ObjectNotFoundError,
    PreconditionFailedError,
    PublishedObject,
    check_key,
    check_publishable,
    sha256_file,
)

__all__ = ["TEMP_PREFIX", "LocalStore", "atomic_copy", "remove_stale_temp_files"]


def atomic_copy(source: Path, target: Path) -> tuple[int, str]:
    """Copy `source` to `target` so `target` is either the old file or the complete new one.

    Writes a temp file next to `target` (`atomic_write`), re-hashes what landed on disk before the rename, and
    returns (size, sha256) of the published bytes. On any failure the temp file is removed.
    """
    digest = hashlib.sha256()
    with atomic_path(target) as tmp:
        with open(tmp, "wb") as out, open(source, "rb") as src:
            while chunk := src.read(HASH_CHUNK):
                digest.update(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        size, written_sha = sha256_file(tmp)
        if written_sha != digest.hexdigest():
            raise StoreError(f"{target}: bytes on disk differ from {source} after copy")
    return size, written_sha


LOCKS_DIR = ".locks"  # flock targets under the root: never listed, never deleted (deleting a lock file races)
PINS_DIR = ".pins"  # readers' private hard links (`LocalStore.pinned`): never listed
# No step holds a pin this long; older pin directories are a killed reader's, and would keep a replaced object's
# bytes on disk.
PIN_STALE_SECONDS = 86_400.0
PRIVATE_DIRS = (LOCKS_DIR, PINS_DIR)


def _remove_stale_pins(pins: Path) -> None:
    cutoff = time.time() - PIN_STALE_SECONDS
    for pin in pins.iterdir():
        with contextlib.suppress(FileNotFoundError):  # another reader's cleanup got there first
            if pin.stat().st_mtime < cutoff:
                shutil.rmtree(pin, ignore_errors=True)


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
        for dirpath, dirnames, filenames in os.walk(base):
            if Path(dirpath) == self.root:  # the writers' lock files and the readers' pins are not objects
                dirnames[:] = [name for name in dirnames if name not in PRIVATE_DIRS]
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

    @contextlib.contextmanager
    def pinned(self, key: str) -> Iterator[Path]:
        """A private file of `key` that no republication changes, for a step's several reads; removed after.

        A hard link under the root's `.pins/` (the store's own filesystem, so no bytes are copied, wherever the
        system's temp dir is): a republication replaces the key's file, never the link. A copy where the
        filesystem has no hard links.
        """
        source = self.path(key)
        pins = self.root / PINS_DIR
        pins.mkdir(parents=True, exist_ok=True)
        _remove_stale_pins(pins)
        with tempfile.TemporaryDirectory(prefix="pin-", dir=pins) as tmp:
            target = Path(tmp) / source.name
            if not atomic_link(source, target):
                if not source.is_file():
                    raise ObjectNotFoundError(f"no object {key!r} in {self!r}")
                atomic_copy(source, target)
            yield target

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

    # --- what whole publication needs (storage.publication): conditional writes, copies, ages -----------------

    def lock_path(self, key: str) -> Path:
        """The flock target guarding `key` (under `.locks/`, outside the listed keys)."""
        return self.root / LOCKS_DIR / f"{check_key(key)}.lock"

    def read_tagged(self, key: str) -> tuple[bytes, str] | None:
        """(bytes, tag) of `key`, or None when absent. The tag is the bytes' sha256 (S3: the ETag)."""
        try:
            data = self.path(key).read_bytes()
        except FileNotFoundError:
            return None
        return data, hashlib.sha256(data).hexdigest()

    def put_bytes_if(self, key: str, data: bytes, *, tag: str | None, content_type: str | None = None) -> str:
        """Replace `key` with `data` only if its tag is still `tag` (None: only if absent); returns the new tag.

        Compare and swap under an exclusive lock on the key, so of two writers that read the same tag only
        the first replaces it; the second gets `PreconditionFailedError`. `content_type` is ignored here.
        """
        target = self.path(key)
        with flocked(self.lock_path(key)):
            current = self.read_tagged(key)
            if (current[1] if current else None) != tag:
                raise PreconditionFailedError(
                    f"{target} changed since it was read (expected {'absent' if tag is None else 'tag ' + tag[:12]})"
                )
            with atomic_write(target) as out:
                out.write(data)
        return hashlib.sha256(data).hexdigest()

    def copy_object(self, source_key: str, target_key: str) -> PublishedObject:
        """Place `source_key`'s bytes at `target_key` atomically: a hard link (no copy) where the filesystem
        allows it, else an atomic copy."""
        source, target = self.path(source_key), self.path(target_key)
        if not source.is_file():
            raise ObjectNotFoundError(f"no object {source_key!r} in {self!r}")
        if atomic_link(source, target):
            size, sha = sha256_file(target)
        else:
            size, sha = atomic_copy(source, target)
        return PublishedObject(uri=str(target), key=target_key, size=size, sha256=sha)

    def stored_sha256(self, key: str) -> tuple[int, str | None]:
        """(size, sha256) of `key`'s bytes (hashed: a filesystem records no digest)."""
        try:
            return sha256_file(self.path(key))
        except FileNotFoundError:
            raise ObjectNotFoundError(f"no object {key!r} in {self!r}") from None

    def same_object(self, key: str, other: str) -> bool:
        """True when both keys name the same file (a hard link made by `copy_object`)."""
        try:
            return os.path.samefile(self.path(key), self.path(other))
        except FileNotFoundError:
            return False

    def modified_at(self, key: str) -> float:
        """When `key` was last written (epoch seconds)."""
        try:
            return self.path(key).stat().st_mtime
        except FileNotFoundError:
            raise ObjectNotFoundError(f"no object {key!r} in {self!r}") from None

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
