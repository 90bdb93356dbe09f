"""The one home of "write a temporary file next to the target, then `os.replace` it" (a shared leaf: sources,
flow and storage may all import it).

Readers of `target` see the previous file or the complete new one, never a partial one: the bytes go to a
`.tmp-*` file in the target's directory (same filesystem, so the rename is atomic), are flushed and fsynced,
and only then renamed over the target; the directory is fsynced so the rename itself survives a crash. On any
error (or a `BaseException` such as KeyboardInterrupt) the temporary file is removed and the target is untouched.
A process killed with SIGKILL leaves at most a `.tmp-*` file, which `remove_stale_temp_files` cleans up later.
Also the home of `flocked`, the exclusive file lock of the store's leases and of the download cache.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

TEMP_PREFIX = ".tmp-"


def fsync_dir(directory: Path) -> None:
    """Make a rename in `directory` durable; not every platform lets you open a directory."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(
    target: Path | str, *, suffix: str = ".part", mode: int = 0o644, durable: bool = True
) -> Iterator[Path]:
    """A temporary path next to `target`; whatever the body writes there replaces `target` when it returns.

    For writers that want a path (pyarrow, polars, a copy). The temporary file exists (empty) when the body
    starts. `mode` is applied before the rename (mkstemp creates 0600; published files are readable like any other).
    `durable=False` skips the fsyncs, for a scratch file that is copied (durably) into a store afterwards: the
    rename still shows it whole or not at all, and a crash loses nothing that is not made again.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=suffix, dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        if durable:
            with open(tmp, "rb+") as fh:  # the body may have written through its own handle: flush it to disk
                os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(target.parent)


@contextlib.contextmanager
def atomic_write(target: Path | str, *, suffix: str = ".part", mode: int = 0o644) -> Iterator[BinaryIO]:
    """A binary handle whose bytes replace `target` whole when the `with` block ends without an error.

        with atomic_write(path) as out:
            out.write(data)
    """
    with atomic_path(target, suffix=suffix, mode=mode) as tmp, open(tmp, "wb") as out:
        yield out
        out.flush()
        os.fsync(out.fileno())


def atomic_replace(source: Path | str, target: Path | str) -> None:
    """Move the complete file `source` over `target` (same filesystem): flushed to disk, renamed, directory fsynced.

    For files staged elsewhere in the target's filesystem (a scratch directory, a verified download) that are
    whole before they move: readers of `target` see the old file or the new one.
    """
    target = Path(target)
    with open(source, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(source, target)
    fsync_dir(target.parent)


def atomic_link(source: Path, target: Path) -> bool:
    """Make `target` a hard link to `source`, replacing `target` atomically; False when links are not possible.

    The link is made under a temporary name next to `target`, then renamed over it, so readers of `target`
    see the old file or `source`'s bytes, never a partial file. No bytes are copied.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f"{TEMP_PREFIX}{os.getpid()}-{time.monotonic_ns()}.link"
    try:
        os.link(source, tmp)
    except OSError:  # a filesystem without hard links, or source and target on different devices
        return False
    try:
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(target.parent)
    return True


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


@contextlib.contextmanager
def flocked(path: Path, *, blocking: bool = True, wait_seconds: float | None = None) -> Iterator[int | None]:
    """Hold an exclusive `flock` on `path` (created if needed): the file descriptor, or None when it could not
    be had: at once with `blocking=False`, or within `wait_seconds` (polled) when that is given.

    The kernel releases the lock when its holder dies, even by SIGKILL, so a dead holder never blocks the next.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = None if wait_seconds is None else time.monotonic() + wait_seconds
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking and deadline is None else fcntl.LOCK_NB))
                break
            except BlockingIOError:
                if deadline is None or time.monotonic() > deadline:
                    yield None
                    return
                time.sleep(0.05)
        try:
            yield fd
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
