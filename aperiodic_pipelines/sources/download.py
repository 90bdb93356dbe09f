"""Streamed, verified, cached HTTP downloads for the archive sources (no Dagster here).

A file is streamed to a temporary file next to its cache slot, hashed on the way, checked (Content-Length,
published checksum, archive integrity) and only then renamed into the cache, so the cache never holds a
file that failed a check. Each cached file has a small JSON sidecar (`<file>.meta.json`) recording the
validators the server sent (ETag, Last-Modified, Content-Length) and the sha256, which is how a rerun
decides that it need not fetch again and how it notices that upstream changed.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import json
import random
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO, NoReturn, TypeVar

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from aperiodic_pipelines.atomic import atomic_path, atomic_write, flocked
from aperiodic_pipelines.domain.errors import (
    AperiodicError,
    ChecksumMismatchError,
    CorruptArchiveError,
    NotPublishedError,
)
from aperiodic_pipelines.domain.settings import HttpSettings
from aperiodic_pipelines.sources.base import SourceObject
from aperiodic_pipelines.sources.config import SourceConfig
from aperiodic_pipelines.sources.limits import CSV_LIMITS, ReadLimits

_T = TypeVar("_T")
CHUNK_BYTES = 1 << 20
PROGRESS_MIN_BYTES = 32 << 20  # a progress bar only for downloads big enough to watch
TEXT_MAX_BYTES = 1 << 20  # a checksum sidecar is ~100 bytes: a larger answer is not one
THROUGHPUT_GRACE_SECONDS = 30.0  # the minimum throughput is averaged from here on (slow starts are normal)


class DownloadError(AperiodicError):
    """A download that kept failing after all retries, or that the server refused."""


class _Retryable(Exception):
    """A transient failure worth another attempt (5xx, reset connection, truncated body, a stall, a trickle).
    `slow`: a stall or a trickle, which gets fewer attempts (a silent server seldom recovers within seconds)."""

    def __init__(self, message: str, *, slow: bool = False) -> None:
        super().__init__(message)
        self.slow = slow


class _OutOfTime(Exception):
    """The download's total deadline has passed: no further attempt."""


# --- the deadline watchdog -------------------------------------------------------------------------------------
# Socket timeouts bound each wait, not a sum of them: a server sending its status line and headers a byte at a time
# would never time out. A timer shuts the sockets of the attempt in flight down at the deadline, which ends any
# blocked read at once; the connections record their socket with the watchdog of the thread that uses them.

_watched = threading.local()


class _Watchdog:
    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.sockets: list[socket.socket] = []
        self.fired = False
        self._lock = threading.Lock()
        self._timer = threading.Timer(max(0.0, deadline - time.monotonic()) + 0.01, self._fire)
        self._timer.daemon = True

    def __enter__(self) -> _Watchdog:
        self._outer = getattr(_watched, "dog", None)
        _watched.dog = self
        self._timer.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._timer.cancel()
        _watched.dog = self._outer

    def arm(self, sock: socket.socket | None) -> None:
        if sock is None:
            return
        with self._lock:
            self.sockets.append(sock)
            fired = self.fired
        if fired:
            _shut(sock)

    def _fire(self) -> None:
        with self._lock:
            self.fired = True
            sockets = list(self.sockets)
        for sock in sockets:
            _shut(sock)


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


class _WatchedHTTPConnection(HTTPConnection):
    def getresponse(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        dog = getattr(_watched, "dog", None)
        if dog is not None:
            dog.arm(self.sock)
        return super().getresponse(*args, **kwargs)


class _WatchedHTTPSConnection(HTTPSConnection):
    def getresponse(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        dog = getattr(_watched, "dog", None)
        if dog is not None:
            dog.arm(self.sock)
        return super().getresponse(*args, **kwargs)


class _WatchedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _WatchedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


class _WatchedAdapter(HTTPAdapter):
    def init_poolmanager(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _WatchedHTTPPool, "https": _WatchedHTTPSPool}


# Per-key lock files (`Downloader._fetching`), under the cache directory; not cache entries.
LOCKS_DIR = ".locks"


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry transient failures. Tests use tiny backoffs."""

    attempts: int = 5
    backoff_seconds: float = 1.0  # first wait; doubles each attempt
    max_backoff_seconds: float = 30.0
    jitter: float = 0.5  # each wait is multiplied by a random factor in [1 - jitter, 1 + jitter]
    # OKX's CDN answers 404 for a file that appears seconds later: a 404 is asked again this many times in all
    # (same backoff) before the file counts as not published.
    not_found_attempts: int = 3
    # A stall (no byte for a read timeout) or a trickle (below the minimum throughput) is tried this many times in
    # all, counted within `attempts`: each costs a read timeout or the throughput grace, and seldom ends sooner.
    slow_attempts: int = 2

    @classmethod
    def from_settings(cls, http: HttpSettings) -> RetryPolicy:
        return cls(attempts=http.attempts, backoff_seconds=http.backoff_seconds,
                   not_found_attempts=http.not_found_attempts)

    def wait_seconds(self, attempt: int) -> float:
        base = min(self.max_backoff_seconds, self.backoff_seconds * (2**attempt))
        return base * random.uniform(1 - self.jitter, 1 + self.jitter)


@dataclass(frozen=True)
class Download:
    """A verified file in the cache."""

    url: str
    path: Path
    size: int
    sha256: str
    from_cache: bool

    def source_object(self) -> SourceObject:
        """Where it came from, its size and its sha256, as a `SourceResult` lists it."""
        return SourceObject(location=self.url, size=self.size, sha256=self.sha256)


def parse_checksum_sidecar(text: str, *, filename: str, url: str) -> str:
    """The hex digest from a sha256sum-format line (`<hex>  <filename>`), checking it names `filename`."""
    for line in text.splitlines():
        parts = line.strip().split()
        if len(parts) == 2 and parts[1].lstrip("*") == filename and len(parts[0]) == 64:
            try:
                int(parts[0], 16)
            except ValueError:
                break
            return parts[0].lower()
    raise CorruptArchiveError(f"checksum file {url} has no sha256 line for {filename}: {text[:200]!r}")


def check_zip(path: Path, *, name: str, limits: ReadLimits | None = None) -> None:
    """Raise `CorruptArchiveError` naming `name` unless `path` is a readable one-member zip whose member inflates
    within `limits` (default `CSV_LIMITS`, `sources/limits.py`) and passes its CRC (streamed: bounded memory)."""
    from aperiodic_pipelines.sources.archive_stream import zip_csv

    for _piece in zip_csv(path, name=name, limits=limits or CSV_LIMITS).chunks():
        pass


class Downloader:
    """Fetch files over HTTP(S) into `cache_dir` with retries, verification, revalidation and deadlines.

    `http` (`domain.settings.HttpSettings`) sets the attempts and backoff, the longest silence on a connection
    (`read_timeout_seconds`), the total time one download may take, its retries and waits included
    (`deadline_seconds`), and the slowest transfer tolerated (`min_bytes_per_second`, averaged once
    `THROUGHPUT_GRACE_SECONDS` or the read timeout, whichever is shorter, have passed). `retry` overrides the
    attempts and backoff (tests use tiny backoffs)."""

    def __init__(
        self,
        cache_dir: Path,
        *,
        http: HttpSettings | None = None,
        retry: RetryPolicy | None = None,
        session: requests.Session | None = None,
        progress: bool | None = None,
    ) -> None:
        self.cache_dir = Path(cache_dir)
        self.http = http or HttpSettings()
        self.retry = retry or RetryPolicy.from_settings(self.http)
        self.session = session or requests.Session()
        for scheme in ("http://", "https://"):  # every connection of this session answers to the deadline watchdog
            self.session.mount(scheme, _WatchedAdapter())
        self.progress = sys.stderr.isatty() if progress is None else progress

    @classmethod
    def from_config(cls, config: SourceConfig, http: HttpSettings | None = None) -> Downloader:
        """A downloader caching under `config.cache_dir` with `http`'s retries and deadlines (default:
        `HttpSettings()`'s defaults; the caller passes the operator's, e.g. `HttpSettings.from_env()`)."""
        return cls(config.cache_dir, http=http)

    def impatient(self) -> Downloader:
        """The same downloader (cache, session, retries) taking a 404 at its word: for a first look at many
        objects, before deciding which are worth waiting for (`sources.days`)."""
        clone = copy.copy(self)
        clone.retry = replace(self.retry, not_found_attempts=1)
        return clone

    # --- public -------------------------------------------------------------------------------------------

    def fetch_text(self, url: str, *, headers: dict[str, str] | None = None) -> str:
        """GET a small text resource (e.g. a CHECKSUM sidecar), with the same retry rules; not cached."""

        def attempt(deadline: float) -> str:
            response = self._get(url, deadline=deadline, headers=headers)
            with response:
                sink = io.BytesIO()
                size, _digest = self._stream_body(response, sink, url, deadline, max_bytes=TEXT_MAX_BYTES)
                self._check_length(response, size, url)
                return sink.getvalue().decode("utf-8", errors="replace")

        return self._with_retries(url, attempt)

    def exists(self, url: str, *, headers: dict[str, str] | None = None) -> bool:
        """Whether `url` answers 200 to one HEAD (a 404 is taken at its word; server errors are retried as
        usual): a cheap probe, e.g. whether a later day is out while this one is missing."""

        def attempt(deadline: float) -> int:
            timeout = self._timeout(url, deadline)
            response = self.session.head(url, timeout=timeout, allow_redirects=True, headers=headers)
            if response.status_code >= 500:
                raise _Retryable(f"HTTP {response.status_code}")
            return response.status_code

        return self._with_retries(url, attempt) == 200

    def fetch(
        self,
        url: str,
        cache_key: str,
        *,
        expected_sha256: str | None = None,
        verify: Callable[[Path], None] | None = None,
        headers: dict[str, str] | None = None,
    ) -> Download:
        """Return the verified file for `url`, downloading it only when the cached copy is missing or stale.

        With `expected_sha256` (a published checksum) the cached copy is current when its recorded digest
        matches, and no request is made; without it a HEAD request compares ETag / Last-Modified /
        Content-Length with what was recorded. `verify(path)` runs on the temporary file before it is
        renamed into the cache (e.g. `check_zip`); it raises to reject the file. `headers` (e.g. an API key)
        go with every request and are never recorded.
        """
        with self._fetching(cache_key):
            return self._fetch(url, cache_key, expected_sha256, verify, headers)

    def _fetch(
        self, url: str, cache_key: str, expected_sha256: str | None, verify: Callable[[Path], None] | None,
        headers: dict[str, str] | None,
    ) -> Download:
        target = self.cache_dir / cache_key
        cached = self._cached(target, url, expected_sha256, headers)
        if cached is not None:
            return cached
        self._evict(target)  # stale or unverifiable: never leave it looking good
        target.parent.mkdir(parents=True, exist_ok=True)
        name = target.name

        def attempt(deadline: float) -> Download:
            response = self._get(url, deadline=deadline, headers=headers)
            with response:
                with atomic_path(target) as tmp_path:
                    with open(tmp_path, "wb") as sink:
                        size, digest = self._stream_body(response, sink, url, deadline)
                    self._check_length(response, size, url)
                    if expected_sha256 is not None and digest != expected_sha256.lower():
                        raise ChecksumMismatchError(
                            f"{name}: sha256 mismatch for {url}: published {expected_sha256.lower()}, "
                            f"downloaded {digest}"
                        )
                    if verify is not None:
                        verify(tmp_path)
                self._write_meta(target, url, response, size, digest)
                return Download(url=url, path=target, size=size, sha256=digest, from_cache=False)

        return self._with_retries(url, attempt)

    # --- cache --------------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _fetching(self, cache_key: str) -> Iterator[None]:
        """One fetch of `cache_key` at a time, across threads and processes sharing the cache.

        Runs of consecutive months fetch the same archive (a month's and the next month's lookback): without
        this, a fetcher that had not yet seen the other's finished download evicted it as unverified, under the
        feet of the run that had just verified it and was opening it. Waiting is bounded: the holder's check
        and download each end within the download deadline.
        """
        wait = 2 * self.http.deadline_seconds
        with flocked(self.cache_dir / LOCKS_DIR / f"{cache_key}.lock", wait_seconds=wait) as held:
            if held is None:
                raise DownloadError(f"{cache_key}: another fetch of it held the cache for more than {wait:g} s")
            yield

    @staticmethod
    def _meta_path(target: Path) -> Path:
        return target.with_name(target.name + ".meta.json")

    def _cached(
        self, target: Path, url: str, expected_sha256: str | None, headers: dict[str, str] | None
    ) -> Download | None:
        meta_path = self._meta_path(target)
        if not (target.is_file() and meta_path.is_file()):
            return None
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError):
            return None
        if meta.get("url") != url or meta.get("size") != target.stat().st_size:
            return None
        if expected_sha256 is not None:
            current = meta.get("sha256") == expected_sha256.lower()
        else:
            current = self._unchanged_upstream(url, meta, headers)
        if not current:
            return None
        return Download(url=url, path=target, size=meta["size"], sha256=meta["sha256"], from_cache=True)

    def _unchanged_upstream(self, url: str, meta: dict, headers: dict[str, str] | None) -> bool:
        """HEAD the URL and compare its validators with the recorded ones; any difference means changed."""

        def attempt(deadline: float) -> requests.Response:
            timeout = self._timeout(url, deadline)
            response = self.session.head(url, timeout=timeout, allow_redirects=True, headers=headers)
            if response.status_code >= 500:
                raise _Retryable(f"HTTP {response.status_code}")
            return response

        response = self._with_retries(url, attempt)
        if response.status_code != 200:  # a 404 included: the GET that follows decides, with its own retries
            return False
        seen = {
            "etag": response.headers.get("ETag"),
            "last_modified": response.headers.get("Last-Modified"),
            "content_length": response.headers.get("Content-Length"),
        }
        if not any(seen.values()):
            return False  # nothing to compare: fetch again rather than trust a guess
        return all(meta.get(key) == value for key, value in seen.items() if value is not None)

    def _write_meta(self, target: Path, url: str, response: requests.Response, size: int, digest: str) -> None:
        meta = {
            "url": url,
            "size": size,
            "sha256": digest,
            "etag": response.headers.get("ETag"),
            "last_modified": response.headers.get("Last-Modified"),
            "content_length": response.headers.get("Content-Length"),
        }
        meta_path = self._meta_path(target)
        # A private temp name: two runs caching the same file at once must not rename each other's half-file.
        with atomic_write(meta_path) as out:
            out.write(json.dumps(meta, sort_keys=True).encode())

    def evict(self, cache_key: str) -> None:
        """Forget a cached file (e.g. one that turned out corrupt when it was read)."""
        self._evict(self.cache_dir / cache_key)

    def evict_downloads(self, downloads: Iterable[Download]) -> None:
        """Forget the cached files of `downloads` (archives that turned out corrupt when they were read)."""
        for download in downloads:
            self.evict(str(download.path.relative_to(self.cache_dir)))

    def _evict(self, target: Path) -> None:
        self._meta_path(target).unlink(missing_ok=True)
        target.unlink(missing_ok=True)

    # --- HTTP ---------------------------------------------------------------------------------------------

    def _timeout(self, url: str, deadline: float) -> float:
        """The socket timeout of the next wait: the read timeout, cut short by the download's deadline."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _OutOfTime()
        return min(self.http.read_timeout_seconds, remaining)

    def _get(self, url: str, *, deadline: float, headers: dict[str, str] | None = None) -> requests.Response:
        timeout = self._timeout(url, deadline)
        response = self.session.get(url, stream=True, timeout=timeout, headers=headers)
        status = response.status_code
        if status == 200:
            return response
        response.close()
        if status == 404:
            raise NotPublishedError(f"not published (yet): {url} (HTTP 404)")
        if status >= 500 or status == 429:
            raise _Retryable(f"HTTP {status}")
        if status in (401, 403):
            # Never echo the credential: only say which kind of refusal it was.
            raise DownloadError(f"GET {url} refused: HTTP {status} (missing or wrong API key?)")
        raise DownloadError(f"GET {url} failed: HTTP {status}")

    def _stream_body(
        self, response: requests.Response, sink: BinaryIO, url: str, deadline: float, *, max_bytes: int | None = None
    ) -> tuple[int, str]:
        """Copy the body to `sink`, hashing it, in reads that return what has arrived, so that the deadline and
        the minimum throughput are checked however slowly the bytes come (a trickle never fills a buffer)."""
        digest = hashlib.sha256()
        size = 0
        total = int(response.headers.get("Content-Length") or 0)
        started = time.monotonic()
        grace = min(THROUGHPUT_GRACE_SECONDS, self.http.read_timeout_seconds)
        raw = response.raw
        bar = None
        if self.progress and total >= PROGRESS_MIN_BYTES:
            from tqdm import tqdm

            bar = tqdm(total=total, unit="B", unit_scale=True, desc=url.rsplit("/", 1)[-1], file=sys.stderr)
        try:
            while True:
                self._set_socket_timeout(raw, self._timeout(url, deadline))
                try:
                    chunk = raw.read1(CHUNK_BYTES, decode_content=True)
                except (urllib3.exceptions.HTTPError, requests.exceptions.RequestException, OSError) as exc:
                    raise self._read_failure(exc, size, deadline) from None
                if not chunk:
                    break
                sink.write(chunk)  # a local write error (disk full) is not a transfer failure: never retried
                digest.update(chunk)
                size += len(chunk)
                if bar is not None:
                    bar.update(len(chunk))
                if max_bytes is not None and size > max_bytes:
                    raise DownloadError(f"GET {url}: answer larger than {max_bytes} bytes, not what was asked for")
                elapsed = time.monotonic() - started
                if elapsed > grace and size < self.http.min_bytes_per_second * elapsed:
                    raise _Retryable(
                        f"too slow: {size} bytes in {elapsed:.1f} s, below the minimum of "
                        f"{self.http.min_bytes_per_second:g} bytes/s", slow=True,
                    )
        finally:
            if bar is not None:
                bar.close()
        return size, digest.hexdigest()

    @staticmethod
    def _read_failure(exc: Exception, size: int, deadline: float) -> Exception:
        if time.monotonic() >= deadline:  # the wait was cut short by the deadline
            return _OutOfTime(f"the last attempt had received {size} bytes")
        stalled = isinstance(exc, (urllib3.exceptions.TimeoutError, requests.exceptions.Timeout, TimeoutError))
        what = "stalled" if stalled else "connection broke"
        return _Retryable(f"{what} after {size} bytes: {type(exc).__name__}: {exc}", slow=stalled)

    @staticmethod
    def _set_socket_timeout(raw: urllib3.response.BaseHTTPResponse, seconds: float) -> None:
        sock = getattr(getattr(raw, "connection", None), "sock", None)
        if sock is not None:
            sock.settimeout(seconds)

    @staticmethod
    def _check_length(response: requests.Response, size: int, url: str) -> None:
        declared = response.headers.get("Content-Length")
        plain = response.headers.get("Content-Encoding") in (None, "identity")
        if declared is not None and plain and int(declared) != size:
            raise _Retryable(f"truncated body: got {size} of {declared} bytes")

    def _with_retries(self, url: str, attempt: Callable[[float], _T]) -> _T:
        """Transient failures get `attempts` tries; a 404 gets `not_found_attempts` (it may appear seconds later).
        Anything else (a checksum mismatch, a corrupt archive) is final at once. Every attempt, wait and retry
        fits in `deadline_seconds`: past it the download fails, naming the URL."""
        started = time.monotonic()
        deadline = started + self.http.deadline_seconds
        last_problem = ""
        failures = not_found = slow = 0
        while True:
            try:
                with _Watchdog(deadline):
                    return attempt(deadline)
            except NotPublishedError:
                not_found += 1
                if not_found >= self.retry.not_found_attempts:
                    raise
                self._wait(url, deadline, self.retry.wait_seconds(not_found - 1), started, "HTTP 404")
                continue
            except _OutOfTime as exc:
                self._out_of_time(url, started, _problems(str(exc) or "no answer in time", last_problem))
            except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
                problem = f"{type(exc).__name__}: {exc}"
                if time.monotonic() >= deadline:
                    self._out_of_time(url, started, _problems(problem, last_problem))
                last_problem = problem
                slow += isinstance(exc, requests.exceptions.Timeout)
            except _Retryable as exc:
                last_problem = str(exc)
                slow += exc.slow
            failures += 1
            if slow and slow >= self.retry.slow_attempts:
                raise DownloadError(
                    f"GET {url} failed: stalled or too slow {slow} times in {time.monotonic() - started:.1f} s "
                    f"(read timeout {self.http.read_timeout_seconds:g} s, minimum "
                    f"{self.http.min_bytes_per_second:g} bytes/s): {last_problem}"
                )
            if failures >= self.retry.attempts:
                raise DownloadError(
                    f"GET {url} failed after {self.retry.attempts} attempts in {time.monotonic() - started:.1f} s: "
                    f"{last_problem}"
                )
            self._wait(url, deadline, self.retry.wait_seconds(failures - 1), started, last_problem)

    def _wait(self, url: str, deadline: float, seconds: float, started: float, problem: str) -> None:
        if time.monotonic() + seconds >= deadline:
            self._out_of_time(url, started, problem)
        time.sleep(seconds)

    def _out_of_time(self, url: str, started: float, problem: str) -> NoReturn:
        raise DownloadError(
            f"GET {url} failed: no complete answer within the deadline of {self.http.deadline_seconds:g} s "
            f"(APERIODIC_HTTP_DEADLINE_SECONDS; {time.monotonic() - started:.1f} s spent): {problem}"
        )


def _problems(last: str, before: str) -> str:
    return f"{last}; before that: {before}" if before else last


@contextlib.contextmanager
def scratch_dir(near: Path) -> Iterator[Path]:
    """A temporary working directory next to `near` (same filesystem, so renames are atomic)."""
    near.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".aperiodic-work-", dir=near) as name:
        yield Path(name)
