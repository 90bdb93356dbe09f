"""The requester-pays bucket and the local caches: raw objects (as downloaded) and parsed hours (one parquet each).

Raw objects are kept because the bucket is requester-pays: a new parser version re-parses them without paying for
the transfer again. A parsed hour is `{key}.{etag}.p{PARSER_VERSION}.parquet` next to the raw copy: every coin of
the hour, sorted by coin, so one coin's rows are read with predicate pushdown and a changed upstream object (new
ETag) or a new parser never reuses a stale parse.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import urllib3

from aperiodic_pipelines.atomic import atomic_path, atomic_replace, atomic_write
from aperiodic_pipelines.domain.errors import (
    AperiodicError,
    ChecksumMismatchError,
    NotPublishedError,
)
from aperiodic_pipelines.domain.settings import HttpSettings
from aperiodic_pipelines.sources.hyperliquid.parse import PARSER_VERSION

log = logging.getLogger(__name__)

DEFAULT_REGION = "ap-northeast-1"  # where hl-mainnet-node-data lives
DEFAULT_WORKERS = 8
DOWNLOAD_ATTEMPTS = 4
CHUNK = 1 << 20
SLOW_ATTEMPTS = 2  # a stalled or trickling body is tried this many times (within DOWNLOAD_ATTEMPTS)
THROUGHPUT_GRACE_SECONDS = 30.0  # as for HTTP downloads (sources/download.py)


class _Slow(Exception):
    """A body that stalled (no byte for a read timeout) or trickled (below the minimum throughput)."""


def make_s3_client(*, max_workers: int = DEFAULT_WORKERS, http: HttpSettings | None = None) -> Any:
    """A boto3 S3 client with retries for throttling, 5xx and connection errors; endpoint and credentials from the
    environment as boto3 reads them; the read timeout from `http` (default 60 s)."""
    http = http or HttpSettings()
    import boto3
    from botocore.config import Config

    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or DEFAULT_REGION
    return boto3.client(
        "s3",
        region_name=region,
        config=Config(
            retries={"max_attempts": 8, "mode": "standard"},
            max_pool_connections=max(10, max_workers * 2),
            connect_timeout=min(10.0, http.read_timeout_seconds),
            read_timeout=http.read_timeout_seconds,
        ),
    )


@dataclass(frozen=True)
class LocalObject:
    uri: str
    path: Path  # where to read the bytes from (cache file, or a partial download not yet promoted)
    etag: str
    size: int
    from_cache: bool
    expected_sha256: str | None  # known for a cache hit


class BucketReader:
    """HEAD/GET with RequestPayer=requester, ETag/size checks and a local cache keyed by object key."""

    def __init__(self, client: Any, bucket: str, cache_root: Path, *, http: HttpSettings | None = None) -> None:
        self.client = client
        self.bucket = bucket
        self.cache_root = cache_root
        # Deadline and minimum throughput of each object's download (the client's own timeouts and retries
        # govern each request's headers).
        self.http = http or HttpSettings()

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def head(self, key: str) -> dict[str, Any] | None:
        """Object metadata, or None when the key does not exist."""
        from botocore.exceptions import ClientError

        try:
            return self.client.head_object(Bucket=self.bucket, Key=key, RequestPayer="requester")
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in {"404", "NoSuchKey", "NotFound"}:
                return None
            if code in {"NoSuchBucket"}:
                raise NotPublishedError(f"bucket s3://{self.bucket} does not exist") from None
            if code in {"403", "AccessDenied", "Forbidden"}:
                raise AperiodicError(
                    f"access denied to {self.uri(key)}: the bucket is requester-pays; set AWS credentials that may "
                    "read it (S3 also answers 403 for a missing key when listing is not allowed)"
                ) from None
            raise AperiodicError(f"HEAD {self.uri(key)} failed: {code or exc}") from None

    def list_day(self, day_prefix: str) -> dict[str, dict[str, Any]] | None:
        """ETag and size of every object under one day's prefix (one request instead of 24 HEADs), or None when
        listing is not allowed (then each object is HEADed)."""
        from botocore.exceptions import ClientError

        found: dict[str, dict[str, Any]] = {}
        token: str | None = None
        try:
            while True:
                extra = {"ContinuationToken": token} if token else {}
                page = self.client.list_objects_v2(
                    Bucket=self.bucket, Prefix=day_prefix, RequestPayer="requester", **extra
                )
                for item in page.get("Contents", []):
                    found[item["Key"]] = {"ETag": item["ETag"], "ContentLength": int(item["Size"])}
                if not page.get("IsTruncated"):
                    return found
                token = page["NextContinuationToken"]
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code == "NoSuchBucket":
                raise NotPublishedError(f"bucket s3://{self.bucket} does not exist") from None
            if code in {"403", "AccessDenied", "Forbidden"}:
                return None
            raise AperiodicError(f"listing s3://{self.bucket}/{day_prefix} failed: {code or exc}") from None

    def cache_paths(self, key: str) -> tuple[Path, Path]:
        path = self.cache_root / key
        return path, path.with_name(path.name + ".meta.json")

    def fetch(self, key: str, head: dict[str, Any]) -> LocalObject:
        """A local copy of `key` as HEAD described it: the cache when it matches, else a fresh partial download."""
        etag = str(head["ETag"]).strip('"')
        size = int(head["ContentLength"])
        path, meta_path = self.cache_paths(key)
        if path.exists() and meta_path.exists():
            try:
                meta = json.loads(meta_path.read_text())
            except (OSError, ValueError):
                meta = {}
            if meta.get("etag") == etag and meta.get("size") == size and path.stat().st_size == size:
                return LocalObject(self.uri(key), path, etag, size, True, meta.get("sha256"))
            log.info("upstream object changed or cache incomplete, refetching %s", self.uri(key))
        return self._download(key, etag, size)

    def _download(self, key: str, etag: str, size: int) -> LocalObject:
        """GET the object into a partial file, checking its size and MD5 ETag; transient failures are retried
        (a stall or a trickle at most `SLOW_ATTEMPTS` times), all within `http.deadline_seconds`."""
        from botocore.exceptions import BotoCoreError, ClientError

        path, _ = self.cache_paths(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        deadline = started + self.http.deadline_seconds
        last_error: Exception | None = None
        slow = 0
        for attempt in range(DOWNLOAD_ATTEMPTS):
            if time.monotonic() >= deadline:
                break
            part = path.with_name(f"{path.name}.part-{uuid.uuid4().hex}")
            try:
                response = self.client.get_object(
                    Bucket=self.bucket, Key=key, RequestPayer="requester", IfMatch=f'"{etag}"'
                )
                received, md5 = self._receive(response["Body"], part, deadline)
                if received != size:
                    raise ChecksumMismatchError(f"{self.uri(key)}: received {received} bytes, expected {size}")
                # A single-part upload's ETag is the MD5 of the body; multipart ETags ("...-N") are not.
                if re.fullmatch(r"[0-9a-f]{32}", etag) and md5 != etag:
                    raise ChecksumMismatchError(f"{self.uri(key)}: MD5 {md5} differs from ETag {etag}")
                return LocalObject(self.uri(key), part, etag, size, False, None)
            except ClientError as exc:
                part.unlink(missing_ok=True)
                code = str(exc.response.get("Error", {}).get("Code", ""))
                if code in {"404", "NoSuchKey"}:
                    raise NotPublishedError(f"{self.uri(key)} is not published") from None
                if code not in {"PreconditionFailed", "412"}:
                    raise AperiodicError(f"GET {self.uri(key)} failed: {code or exc}") from None
                # Replaced between HEAD and GET: take the new version's identity and try again.
                head = self.head(key)
                if head is None:
                    raise NotPublishedError(f"{self.uri(key)} is not published") from None
                etag, size = str(head["ETag"]).strip('"'), int(head["ContentLength"])
                last_error = exc
            except _Slow as exc:
                part.unlink(missing_ok=True)
                last_error, slow = exc, slow + 1
                if slow >= SLOW_ATTEMPTS:
                    break
            except (BotoCoreError, OSError, ChecksumMismatchError) as exc:
                part.unlink(missing_ok=True)
                last_error = exc
            pause = min(0.2 * 2**attempt, 5.0)
            if time.monotonic() + pause >= deadline:
                break
            time.sleep(pause)
        if isinstance(last_error, ChecksumMismatchError):
            raise last_error
        spent = time.monotonic() - started
        if spent >= self.http.deadline_seconds or slow >= SLOW_ATTEMPTS:
            raise AperiodicError(
                f"could not download {self.uri(key)}: stalled, too slow or out of time after {spent:.1f} s "
                f"(deadline {self.http.deadline_seconds:g} s, read timeout {self.http.read_timeout_seconds:g} s, "
                f"minimum {self.http.min_bytes_per_second:g} bytes/s): {last_error}"
            )
        raise AperiodicError(f"could not download {self.uri(key)} after {DOWNLOAD_ATTEMPTS} attempts: {last_error}")

    def _receive(self, body: Any, part: Path, deadline: float) -> tuple[int, str]:
        """Stream `body` to `part` in reads that return whatever has arrived, so the deadline and the minimum
        throughput are checked however slowly the bytes come. Returns (bytes, MD5 hex)."""
        raw = getattr(body, "_raw_stream", None)  # botocore's urllib3 response: read1 returns what has arrived
        read = raw.read1 if raw is not None and hasattr(raw, "read1") else body.read
        sock = getattr(getattr(raw, "connection", None), "sock", None)
        md5 = hashlib.md5(usedforsecurity=False)
        received = 0
        started = time.monotonic()
        grace = min(THROUGHPUT_GRACE_SECONDS, self.http.read_timeout_seconds)
        with open(part, "wb") as out:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise _Slow(f"out of time after {received} bytes")
                if sock is not None:
                    sock.settimeout(min(self.http.read_timeout_seconds, remaining))
                try:
                    chunk = read(CHUNK)
                except (urllib3.exceptions.TimeoutError, TimeoutError) as exc:
                    raise _Slow(f"stalled after {received} bytes: {type(exc).__name__}: {exc}") from None
                except urllib3.exceptions.HTTPError as exc:  # a reset or cut body: retried like botocore's own
                    raise OSError(f"connection broke after {received} bytes: {type(exc).__name__}: {exc}") from None
                if not chunk:
                    break
                out.write(chunk)
                md5.update(chunk)
                received += len(chunk)
                elapsed = time.monotonic() - started
                if elapsed > grace and received < self.http.min_bytes_per_second * elapsed:
                    raise _Slow(f"too slow: {received} bytes in {elapsed:.1f} s")
        return received, md5.hexdigest()

    def promote(self, key: str, local: LocalObject, sha256: str) -> None:
        """Make a fully parsed download the cached copy of `key` (file first, then its sidecar, both atomic)."""
        path, meta_path = self.cache_paths(key)
        if not local.from_cache:
            atomic_replace(local.path, path)
        elif local.expected_sha256 == sha256:
            return
        meta = {"uri": local.uri, "etag": local.etag, "size": local.size, "sha256": sha256}
        with atomic_write(meta_path) as out:
            out.write(json.dumps(meta, sort_keys=True).encode())

    def discard(self, key: str, local: LocalObject) -> None:
        """Forget a local copy that failed to parse: a partial download is removed, a cache entry is invalidated."""
        if not local.from_cache:
            local.path.unlink(missing_ok=True)
            self.forget_parsed(key)
            return
        path, meta_path = self.cache_paths(key)
        meta_path.unlink(missing_ok=True)
        path.unlink(missing_ok=True)
        self.forget_parsed(key)


    # --- parsed hours ------------------------------------------------------------------------------------------

    def parsed_path(self, key: str, etag: str) -> Path:
        path, _ = self.cache_paths(key)
        return path.with_name(f"{path.name}.{etag}.p{PARSER_VERSION}.parquet")

    def cached_parse(self, key: str, etag: str, size: int) -> tuple[Path, str] | None:
        """The parsed hour and the object's sha256, when both are cached for this exact version of the object."""
        parsed = self.parsed_path(key, etag)
        _, meta_path = self.cache_paths(key)
        if not parsed.exists():
            return None
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError):
            return None
        if meta.get("etag") != etag or meta.get("size") != size or not meta.get("sha256"):
            return None
        return parsed, str(meta["sha256"])

    def store_parsed(self, key: str, etag: str, write: Any) -> Path:
        """Write a parsed hour with `write(path)` aside, rename it in place, and drop parses of older versions."""
        target = self.parsed_path(key, etag)
        with atomic_path(target) as tmp:
            write(tmp)
        for stale in target.parent.glob(f"{Path(key).name}.*.parquet"):
            if stale != target:
                stale.unlink(missing_ok=True)
        return target

    def forget_parsed(self, key: str) -> None:
        path, _ = self.cache_paths(key)
        for parsed in path.parent.glob(f"{path.name}.*.parquet"):
            parsed.unlink(missing_ok=True)
