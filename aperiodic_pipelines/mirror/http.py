"""A local HTTP archive mirror for tests and the demo: serves a directory on 127.0.0.1 with fault switches.

    with ArchiveMirror(root) as mirror:
        config = SourceConfig(binance_url=mirror.url, ...)
        mirror.fail_next("data/futures/um/monthly/*", status=503, times=2)
        mirror.require_bearer("secret", "tardis/v1/*")   # 401 without `Authorization: Bearer secret`, as Tardis
        mirror.stall_next("data/*.zip")                   # accept, then answer nothing (until the mirror stops)
        mirror.trickle_next("data/*.zip", interval=2.0)   # headers, then one body byte every 2 s

Faults are matched against the request path without the leading slash (`fnmatch`, `*` crosses `/`) and
consumed in order. Every request is logged as (method, path, status) so tests can assert what was fetched.
"""

from __future__ import annotations

import email.utils
import fnmatch
import hmac
import socket
import struct
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Self
from urllib.parse import unquote, urlsplit

from aperiodic_pipelines.mirror.server import LocalHTTPServer

_CHUNK = 64 * 1024


@dataclass
class _Fault:
    kind: str  # "fail" | "drop" | "truncate" | "stall" | "trickle"
    pattern: str
    remaining: int
    status: int = 503
    interval: float = 1.0  # trickle: seconds between body bytes


class ArchiveMirror(LocalHTTPServer):
    """A `ThreadingHTTPServer` on 127.0.0.1 (port 0) in a background thread, serving `root`."""

    thread_name = "archive-mirror"

    def __init__(self, root: Path) -> None:
        super().__init__()
        self.root = Path(root).resolve()
        self.requests: list[tuple[str, str, int]] = []
        self._faults: list[_Fault] = []
        self._bearer: tuple[str, str] | None = None  # (token, path glob)
        self._lock = threading.Lock()
        self.stopping = threading.Event()  # releases stalled and trickling answers when the mirror stops

    # --- lifecycle ----------------------------------------------------------------------------------------

    def handler_class(self) -> type[BaseHTTPRequestHandler]:
        mirror = self

        class Handler(_MirrorHandler):
            owner = mirror

        return Handler

    def start(self) -> Self:
        self.stopping.clear()
        return super().start()

    def stop(self) -> None:
        self.stopping.set()
        super().stop()

    @property
    def url(self) -> str:
        return self.address

    # --- fault switches -----------------------------------------------------------------------------------

    def fail_next(self, path_glob: str, status: int = 503, times: int = 1) -> None:
        """Answer the next `times` matching requests with `status` and an empty body."""
        self._add(_Fault("fail", path_glob, times, status))

    def drop_next(self, path_glob: str, times: int = 1) -> None:
        """Send headers and half the body of the next `times` matching GETs, then reset the connection."""
        self._add(_Fault("drop", path_glob, times))

    def truncate_next(self, path_glob: str, times: int = 1) -> None:
        """Declare the full Content-Length but send only half the body, then close cleanly."""
        self._add(_Fault("truncate", path_glob, times))

    def stall_next(self, path_glob: str, times: int = 1) -> None:
        """Accept the next `times` matching requests and answer nothing (no status line) until the mirror stops:
        a server that hangs."""
        self._add(_Fault("stall", path_glob, times))

    def trickle_next(self, path_glob: str, times: int = 1, *, interval: float = 1.0) -> None:
        """Send the headers of the next `times` matching GETs at once, then the body one byte every `interval`
        seconds: a server that never quite stops answering."""
        self._add(_Fault("trickle", path_glob, times, interval=interval))

    def require_bearer(self, token: str, path_glob: str = "*") -> None:
        """Answer 401 to requests for `path_glob` without `Authorization: Bearer <token>` (compared in constant
        time), as the Tardis datasets API does for a missing or wrong key."""
        self._bearer = (token, path_glob)

    def authorized(self, path: str, header: str | None) -> bool:
        if self._bearer is None or not fnmatch.fnmatch(path, self._bearer[1]):
            return True
        expected = f"Bearer {self._bearer[0]}".encode()
        return hmac.compare_digest(expected, (header or "").encode())

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def count(self, path_glob: str, method: str = "GET") -> int:
        """How many `method` requests matched `path_glob` so far."""
        with self._lock:
            return sum(1 for m, p, _ in self.requests if m == method and fnmatch.fnmatch(p, path_glob))

    def _add(self, fault: _Fault) -> None:
        with self._lock:
            self._faults.append(fault)

    def _take_fault(self, method: str, path: str) -> _Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.remaining > 0 and fnmatch.fnmatch(path, fault.pattern):
                    if fault.kind not in ("fail", "stall") and method != "GET":
                        continue  # body faults only make sense where there is a body
                    fault.remaining -= 1
                    return fault
        return None

    def _log(self, method: str, path: str, status: int) -> None:
        with self._lock:
            self.requests.append((method, path, status))


class _MirrorHandler(BaseHTTPRequestHandler):
    owner: ArchiveMirror
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # else keep-alive responses stall ~40 ms on delayed ACKs

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - keep test output quiet
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server naming
        self._serve(send_body=True)

    def do_HEAD(self) -> None:  # noqa: N802
        self._serve(send_body=False)

    def _serve(self, *, send_body: bool) -> None:
        path = unquote(urlsplit(self.path).path).lstrip("/")
        if not self.owner.authorized(path, self.headers.get("Authorization")):
            self.owner._log(self.command, path, 401)
            self._empty(401)
            return
        fault = self.owner._take_fault(self.command, path)
        if fault is not None and fault.kind == "stall":
            self.owner._log(self.command, path, 0)
            self.owner.stopping.wait()
            self.close_connection = True
            return
        if fault is not None and fault.kind == "fail":
            self.owner._log(self.command, path, fault.status)
            self._empty(fault.status)
            return
        file = (self.owner.root / path).resolve()
        if not file.is_relative_to(self.owner.root) or not file.is_file():
            self.owner._log(self.command, path, 404)
            self._empty(404)
            return
        stat = file.stat()
        etag = f'"{stat.st_size:x}-{stat.st_mtime_ns:x}"'
        if self.headers.get("If-None-Match") == etag:
            self.owner._log(self.command, path, 304)
            self.send_response(304)
            self.send_header("ETag", etag)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.owner._log(self.command, path, 200)
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(stat.st_size))
        self.send_header("ETag", etag)
        self.send_header("Last-Modified", email.utils.formatdate(stat.st_mtime, usegmt=True))
        self.end_headers()
        if not send_body:
            return
        if fault is not None and fault.kind == "trickle":
            self._trickle(file, fault.interval)
            return
        limit = stat.st_size // 2 if fault is not None else stat.st_size
        sent = 0
        with open(file, "rb") as handle:
            while sent < limit:
                chunk = handle.read(min(_CHUNK, limit - sent))
                if not chunk:
                    break
                self.wfile.write(chunk)
                sent += len(chunk)
        if fault is not None:
            self.wfile.flush()
            self.close_connection = True
            if fault.kind == "drop":
                # SO_LINGER with timeout 0 makes close() send a RST: a connection reset mid-body.
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    def _trickle(self, file: Path, interval: float) -> None:
        self.close_connection = True
        try:
            for byte in file.read_bytes():
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
                if self.owner.stopping.wait(interval):
                    return
        except OSError:  # the client gave up: what a trickle is for
            return

    def _empty(self, status: int) -> None:
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()
