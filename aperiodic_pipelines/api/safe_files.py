"""Opening a published file of a local store without ever leaving the store's root.

`open_inside(root, key)` walks the key one component at a time from an open descriptor of the root, each step
with `O_NOFOLLOW`: a symlink anywhere on the way (a directory or the file itself) fails the open, and so does
anything but a regular file at the end. Nothing is resolved by name after the check, so a symlink swapped in
between check and read cannot redirect the read either.

`OpenFileResponse` is starlette's `FileResponse` (HEAD, byte ranges, large chunks) reading from that
descriptor instead of opening the path again.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
from fastapi.responses import FileResponse

_DIRECTORY_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0)


class NotInsideStore(Exception):
    """The key does not name a regular file reachable from the root without a symlink."""


def open_inside(root: Path, key: str) -> tuple[int, os.stat_result]:
    """An open read-only descriptor of `root/key` and its stat; `NotInsideStore` for anything else.

    `root` itself may be reached through symlinks (the operator chose it); nothing below it may.
    """
    parts = key.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise NotInsideStore(key)
    try:
        directory = os.open(root, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        raise NotInsideStore(key) from None
    try:
        for part in parts[:-1]:
            try:
                step = os.open(part, _DIRECTORY_FLAGS, dir_fd=directory)
            except OSError:  # ELOOP/ENOTDIR for a symlink, ENOENT for a missing directory
                raise NotInsideStore(key) from None
            os.close(directory)
            directory = step
        try:
            fd = os.open(parts[-1], _FILE_FLAGS, dir_fd=directory)
        except OSError as exc:
            if exc.errno not in (errno.ELOOP, errno.ENOENT, errno.ENOTDIR, errno.EACCES, errno.EISDIR):
                raise
            raise NotInsideStore(key) from None
    finally:
        os.close(directory)
    status = os.fstat(fd)
    if not stat.S_ISREG(status.st_mode):  # a FIFO or device must not be read (O_NONBLOCK kept the open quick)
        os.close(fd)
        raise NotInsideStore(key)
    os.set_blocking(fd, True)
    return fd, status


class OpenFileResponse(FileResponse):
    """A `FileResponse` over an already open descriptor (closed when the response is done)."""

    chunk_size = 1024 * 1024  # fewer, larger writes: bars files are tens of MB at 1s

    def __init__(self, fd: int, status: os.stat_result, *, filename: str, media_type: str,
                 headers: Mapping[str, str]) -> None:
        self._fd = fd
        # The path is never opened (see `_open_file`); it only names the download.
        super().__init__(filename, headers=headers, media_type=media_type, filename=filename, stat_result=status)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        # Without the pathsend extension starlette never hands the path to the server to open by name.
        scope = {**scope, "extensions": {k: v for k, v in scope.get("extensions", {}).items()
                                         if k != "http.response.pathsend"}}
        try:
            await super().__call__(scope, receive, send)
        finally:
            os.close(self._fd)

    @asynccontextmanager
    async def _open_file(self) -> AsyncIterator[anyio.AsyncFile[bytes]]:
        # Each use reads its own duplicate from the start, so the descriptor's offset is never shared.
        file = anyio.wrap_file(os.fdopen(os.dup(self._fd), "rb"))
        try:
            await file.seek(0)
            yield file
        finally:
            with anyio.CancelScope(shield=True):
                await file.aclose()
