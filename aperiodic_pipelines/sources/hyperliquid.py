"""hyperliquid-perps: trades from the node data Hyperliquid publishes in the requester-pays S3 bucket
`hl-mainnet-node-data`, one LZ4-frame NDJSON object per hour: `{dataset}/hourly/{YYYYMMDD}/{H}.lz4` (H not padded).

Three eras, chosen by the hour's date (on an era's first day a missing key falls back to the previous era):

- `node_trades` (from 2025-03-22): one record per trade; `side` (B/A) is the aggressor, `time` an ISO string with
  nanoseconds. Real records carry no trade id: one is built as `ts_exchange_us * 1000 + k` (k = order of the trade
  within its µs), unique and increasing in time. A `tid` field, where present, is used instead.
- `node_fills` (from 2025-05-25): one `[user, fill]` record per fill, two fills per trade sharing `tid`;
  the taker's fill has `crossed: true`; `time` in ms.
- `node_fills_by_block` (from 2025-07-27): one block per line, `{local_time, block_time, block_number,
  events: [[user, fill], ...]}`; `local_time` (when the node saw the block) is the arrival time.

Objects spill into neighbouring hours, so the month's hours plus one on each side are read and trades are kept by
their own `time`. Each object is streamed into the cache, checked against its ETag and size, decompressed as a
stream and parsed line by line (only lines that mention the coin are decoded); a rerun reuses the cache unless a
HEAD shows the upstream object changed.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import re
import tempfile
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO

import lz4.frame
import polars as pl

from aperiodic_pipelines.errors import (
    AperiodicError,
    ChecksumMismatchError,
    CorruptArchiveError,
    NotPublishedError,
)
from aperiodic_pipelines.sources import validate_month
from aperiodic_pipelines.sources.base import SourceObject, SourceResult
from aperiodic_pipelines.sources.config import SourceConfig
from aperiodic_pipelines.sources.symbols import resolve_symbol
from aperiodic_pipelines.trades import CANONICAL_COLUMNS, CANONICAL_SCHEMA, validate_trades

log = logging.getLogger(__name__)

EXCHANGE = "hyperliquid-perps"
NODE_TRADES = "node_trades"
NODE_FILLS = "node_fills"
NODE_FILLS_BY_BLOCK = "node_fills_by_block"
DATASETS: tuple[str, ...] = (NODE_TRADES, NODE_FILLS, NODE_FILLS_BY_BLOCK)
# First day of each era (UTC). Hours before ARCHIVE_START do not exist in the bucket.
ERA_STARTS: dict[str, date] = {
    NODE_TRADES: date(2025, 3, 22),
    NODE_FILLS: date(2025, 5, 25),
    NODE_FILLS_BY_BLOCK: date(2025, 7, 27),
}
ARCHIVE_START = datetime(2025, 3, 22, tzinfo=UTC)
DEFAULT_REGION = "ap-northeast-1"  # where hl-mainnet-node-data lives
DEFAULT_WORKERS = 8
DOWNLOAD_ATTEMPTS = 4
_CHUNK = 1 << 20
_ISO_FORMAT = "%Y-%m-%dT%H:%M:%S%.f"
_MAX_TRADES_PER_MICROSECOND = 1000  # room in a built node_trades id (ts_us * 1000 + k)
_DECODER = json.JSONDecoder()
_LOCAL_TIME = re.compile(r'^\{\s*"local_time"\s*:\s*"([^"]*)"')

# Columns of a parsed hour, before the month is assembled. `_object`/`_line` keep file order for ids and errors.
_HOUR_SCHEMA: dict[str, pl.DataType] = {
    "ts_exchange": pl.Int64(),
    "ts_arrival": pl.Int64(),
    "trade_id": pl.Int64(),
    "price": pl.Float64(),
    "qty": pl.Float64(),
    "is_buy": pl.Boolean(),
    "crossed": pl.Boolean(),
    "_object": pl.Int32(),
    "_line": pl.Int64(),
}


@dataclass(frozen=True)
class HourObject:
    """One hourly object of the bucket that feeds a month."""

    dataset: str
    hour: datetime
    key: str


def fetch_month(
    symbol: str,
    month: str,
    *,
    dest: Path,
    config: SourceConfig | None = None,
    s3_client: Any | None = None,
    max_workers: int = DEFAULT_WORKERS,
) -> SourceResult:
    """Canonical trades of one Hyperliquid perpetual for one month, written as parquet to `dest`.

    `symbol` is an Atlas symbol (perpetual-BTC-USDC:USDC) or the coin (BTC, kPEPE, xyz:AAPL). `dest` is the parquet
    file to write, or a directory (then `{dest}/{month}.parquet`). `s3_client` is any boto3 S3 client (e.g. from
    dagster-aws `S3Resource.get_client()`); without one, boto3 builds one from the environment
    (`AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL`, credentials, `AWS_REGION`).
    """
    config = config or SourceConfig.from_env()
    atlas, coin = resolve_symbol(EXCHANGE, symbol)
    start, end = month_bounds(month)
    bucket, prefix = parse_s3_url(config.hyperliquid_url)
    client = s3_client if s3_client is not None else make_s3_client(max_workers=max_workers)
    reader = _BucketReader(client, bucket, Path(config.cache_dir) / "hyperliquid" / bucket)
    out_path = _output_path(Path(dest), month)

    hours = month_objects(start, end, prefix=prefix)
    frames, objects, datasets = _read_hours(reader, hours, coin, max_workers=max_workers)
    trades, duplicates = _assemble_month(frames, objects, start=start, end=end)
    trades = validate_trades(trades, name=f"{EXCHANGE} {coin} {month}")
    _write_parquet_atomically(trades, out_path)

    has_arrival = trades.height > 0 and trades.get_column("ts_arrival").null_count() == 0
    return SourceResult(
        exchange=EXCHANGE,
        symbol=atlas,
        native_symbol=coin,
        month=month,
        path=out_path,
        trade_count=trades.height,
        duplicates_dropped=duplicates,
        id_gaps=0,  # Hyperliquid trade ids are not sequential, so gaps say nothing about missing trades
        has_arrival_times=has_arrival,
        dataset="+".join(d for d in DATASETS if d in datasets),
        objects=[obj for obj in objects if obj is not None],
    )


# --- months, keys and the bucket -------------------------------------------------------------------------------


def month_bounds(month: str) -> tuple[datetime, datetime]:
    """`"2025-08"` → (first instant of the month, first instant of the next), UTC."""
    year, mon = (int(part) for part in validate_month(month).split("-"))
    start = datetime(year, mon, 1, tzinfo=UTC)
    end = datetime(year + mon // 12, mon % 12 + 1, 1, tzinfo=UTC)
    return start, end


def parse_s3_url(url: str) -> tuple[str, str]:
    """`s3://bucket[/prefix]` → (bucket, prefix without slashes at either end)."""
    match = re.fullmatch(r"s3://([a-z0-9][a-z0-9.\-]{1,61}[a-z0-9])(?:/(.*))?", url or "")
    if match is None:
        raise AperiodicError(f"hyperliquid source URL must look like s3://bucket[/prefix], got {url!r}")
    return match[1], (match[2] or "").strip("/")


def dataset_candidates(day: date) -> list[str]:
    """Datasets that may hold an hour of `day`, preferred first (an era's first day falls back to the one before)."""
    eras = [name for name in DATASETS if ERA_STARTS[name] <= day]
    if not eras:
        return []
    current = eras[-1]
    if day == ERA_STARTS[current] and len(eras) > 1:
        return [current, eras[-2]]
    return [current]


def hour_key(dataset: str, hour: datetime, *, prefix: str = "") -> str:
    """The object key of one hour: `{prefix/}{dataset}/hourly/{YYYYMMDD}/{H}.lz4`, hour not zero-padded."""
    head = f"{prefix}/" if prefix else ""
    return f"{head}{dataset}/hourly/{hour:%Y%m%d}/{hour.hour}.lz4"


def month_objects(start: datetime, end: datetime, *, prefix: str = "") -> list[list[HourObject]]:
    """For each hour from `start - 1h` to `end` (inclusive), the candidate objects, preferred first."""
    if end <= ARCHIVE_START:
        raise NotPublishedError(
            f"Hyperliquid node data starts {ARCHIVE_START:%Y-%m-%d}; nothing is published for {start:%Y-%m}"
        )
    hours: list[list[HourObject]] = []
    hour = start - timedelta(hours=1)
    while hour <= end:
        if hour >= ARCHIVE_START:
            hours.append(
                [HourObject(name, hour, hour_key(name, hour, prefix=prefix)) for name in dataset_candidates(hour.date())]
            )
        hour += timedelta(hours=1)
    return hours


def make_s3_client(*, max_workers: int = DEFAULT_WORKERS) -> Any:
    """A boto3 S3 client with retries for throttling, 5xx and connection errors; endpoint and credentials from the
    environment as boto3 reads them."""
    import boto3
    from botocore.config import Config

    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or DEFAULT_REGION
    return boto3.client(
        "s3",
        region_name=region,
        config=Config(
            retries={"max_attempts": 8, "mode": "standard"},
            max_pool_connections=max(10, max_workers * 2),
            connect_timeout=10,
            read_timeout=60,
        ),
    )


@dataclass(frozen=True)
class _LocalObject:
    uri: str
    path: Path  # where to read the bytes from (cache file, or a partial download not yet promoted)
    etag: str
    size: int
    from_cache: bool
    expected_sha256: str | None  # known for a cache hit


class _BucketReader:
    """HEAD/GET with RequestPayer=requester, ETag/size checks and a local cache keyed by object key."""

    def __init__(self, client: Any, bucket: str, cache_root: Path) -> None:
        self.client = client
        self.bucket = bucket
        self.cache_root = cache_root

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

    def fetch(self, key: str, head: dict[str, Any]) -> _LocalObject:
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
                return _LocalObject(self.uri(key), path, etag, size, True, meta.get("sha256"))
            log.info("upstream object changed or cache incomplete, refetching %s", self.uri(key))
        return self._download(key, etag, size)

    def _download(self, key: str, etag: str, size: int) -> _LocalObject:
        from botocore.exceptions import BotoCoreError, ClientError

        path, _ = self.cache_paths(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        last_error: Exception | None = None
        for attempt in range(DOWNLOAD_ATTEMPTS):
            part = path.with_name(f"{path.name}.part-{uuid.uuid4().hex}")
            try:
                response = self.client.get_object(
                    Bucket=self.bucket, Key=key, RequestPayer="requester", IfMatch=f'"{etag}"'
                )
                md5 = hashlib.md5(usedforsecurity=False)
                received = 0
                with open(part, "wb") as out:
                    for chunk in response["Body"].iter_chunks(_CHUNK):
                        out.write(chunk)
                        md5.update(chunk)
                        received += len(chunk)
                if received != size:
                    raise ChecksumMismatchError(f"{self.uri(key)}: received {received} bytes, expected {size}")
                # A single-part upload's ETag is the MD5 of the body; multipart ETags ("...-N") are not.
                if re.fullmatch(r"[0-9a-f]{32}", etag) and md5.hexdigest() != etag:
                    raise ChecksumMismatchError(f"{self.uri(key)}: MD5 {md5.hexdigest()} differs from ETag {etag}")
                return _LocalObject(self.uri(key), part, etag, size, False, None)
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
            except (BotoCoreError, OSError, ChecksumMismatchError) as exc:
                part.unlink(missing_ok=True)
                last_error = exc
                time.sleep(min(0.2 * 2**attempt, 5.0))
        if isinstance(last_error, ChecksumMismatchError):
            raise last_error
        raise AperiodicError(f"could not download {self.uri(key)} after {DOWNLOAD_ATTEMPTS} attempts: {last_error}")

    def promote(self, key: str, local: _LocalObject, sha256: str) -> None:
        """Make a fully parsed download the cached copy of `key` (file first, then its sidecar, both atomic)."""
        path, meta_path = self.cache_paths(key)
        if not local.from_cache:
            os.replace(local.path, path)
        elif local.expected_sha256 == sha256:
            return
        meta = {"uri": local.uri, "etag": local.etag, "size": local.size, "sha256": sha256}
        tmp = meta_path.with_name(f"{meta_path.name}.part-{uuid.uuid4().hex}")
        tmp.write_text(json.dumps(meta, sort_keys=True))
        os.replace(tmp, meta_path)

    def discard(self, key: str, local: _LocalObject) -> None:
        """Forget a local copy that failed to parse: a partial download is removed, a cache entry is invalidated."""
        if not local.from_cache:
            local.path.unlink(missing_ok=True)
            return
        path, meta_path = self.cache_paths(key)
        meta_path.unlink(missing_ok=True)
        path.unlink(missing_ok=True)


# --- reading and parsing ---------------------------------------------------------------------------------------


class _HashingReader(io.RawIOBase):
    """Wraps a binary file; hashes every byte read so the sha256 comes for free with decompression."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self.sha256 = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self.raw.read(len(buffer))
        buffer[: len(data)] = data
        self.sha256.update(data)
        return len(data)

    def drain(self) -> None:
        while chunk := self.raw.read(_CHUNK):
            self.sha256.update(chunk)


def _read_hours(
    reader: _BucketReader, hours: list[list[HourObject]], coin: str, *, max_workers: int
) -> tuple[list[pl.DataFrame], list[SourceObject | None], set[str]]:
    """Fetch and parse every hour (in parallel); the frames and objects come back in hour order."""
    frames: list[pl.DataFrame] = []
    objects: list[SourceObject | None] = [None] * len(hours)
    datasets: set[str] = set()
    with ThreadPoolExecutor(max_workers=max(1, max_workers)) as pool:
        inventory = _inventory(reader, hours, pool)
        if inventory is not None:
            for candidates in hours:  # fail before downloading anything when an hour is missing
                if not any(c.key in inventory for c in candidates):
                    raise _not_published(reader, candidates)
        futures: list[Future[tuple[pl.DataFrame, SourceObject, str]]] = [
            pool.submit(_read_hour, reader, candidates, coin, index, inventory)
            for index, candidates in enumerate(hours)
        ]
        try:
            for index, future in enumerate(futures):
                frame, source_object, dataset = future.result()
                frames.append(frame)
                objects[index] = source_object
                datasets.add(dataset)
        except BaseException:
            for future in futures:
                future.cancel()
            raise
    return frames, objects, datasets


def _inventory(
    reader: _BucketReader, hours: list[list[HourObject]], pool: ThreadPoolExecutor
) -> dict[str, dict[str, Any]] | None:
    """Listing of every day prefix the hours live under; None when the bucket does not allow listing."""
    prefixes = sorted({c.key.rsplit("/", 1)[0] + "/" for candidates in hours for c in candidates})
    listings = list(pool.map(reader.list_day, prefixes))
    if any(listing is None for listing in listings):
        return None
    return {key: meta for listing in listings for key, meta in (listing or {}).items()}


def _not_published(reader: _BucketReader, candidates: list[HourObject]) -> NotPublishedError:
    tried = " or ".join(reader.uri(c.key) for c in candidates)
    return NotPublishedError(f"{tried} is not published (hour {candidates[0].hour:%Y-%m-%d %H}:00 UTC)")


def _read_hour(
    reader: _BucketReader,
    candidates: list[HourObject],
    coin: str,
    index: int,
    inventory: dict[str, dict[str, Any]] | None,
) -> tuple[pl.DataFrame, SourceObject, str]:
    for candidate in candidates:
        head = inventory.get(candidate.key) if inventory is not None else reader.head(candidate.key)
        if head is None:
            continue
        local = reader.fetch(candidate.key, head)
        try:
            frame, sha256 = _parse_object(local, candidate.dataset, coin, index)
        except CorruptArchiveError:
            reader.discard(candidate.key, local)
            raise
        if local.from_cache and local.expected_sha256 not in (None, sha256):
            # The cached bytes no longer hash as recorded (disk corruption): drop them and fetch again.
            reader.discard(candidate.key, local)
            return _read_hour(reader, [candidate], coin, index, None)
        reader.promote(candidate.key, local, sha256)
        return frame, SourceObject(local.uri, local.size, sha256), candidate.dataset
    raise _not_published(reader, candidates)


def _parse_object(local: _LocalObject, dataset: str, coin: str, index: int) -> tuple[pl.DataFrame, str]:
    """Decompress and parse one hour object; return the coin's rows and the sha256 of the compressed bytes."""
    parser = {NODE_TRADES: _TradesParser, NODE_FILLS: _FillsParser, NODE_FILLS_BY_BLOCK: _BlockParser}[dataset](
        local.uri, coin
    )
    with open(local.path, "rb") as raw_file:
        hashing = _HashingReader(raw_file)
        try:
            with lz4.frame.LZ4FrameFile(hashing, "rb") as lines:
                for line_no, line in enumerate(_lines(lines), start=1):
                    if parser.mentions_coin(line):
                        parser.parse(line, line_no)
        except (RuntimeError, EOFError, OSError, ValueError) as exc:
            if isinstance(exc, CorruptArchiveError):
                raise
            raise CorruptArchiveError(f"{local.uri}: not a valid LZ4 frame stream ({exc})") from None
        hashing.drain()
    return parser.frame(index), hashing.sha256.hexdigest()


def _lines(stream: Any) -> Iterator[bytes]:
    buffered = io.BufferedReader(stream, buffer_size=_CHUNK)
    yield from buffered


class _Parser:
    """Collects the coin's rows of one object as plain column lists (one hour at most), then one polars frame."""

    def __init__(self, uri: str, coin: str) -> None:
        self.uri = uri
        self.coin = coin
        self.coin_pattern = re.compile(rb'"coin"\s*:\s*"' + re.escape(coin.encode()) + rb'"')
        self.ts_ms: list[int] = []
        self.ts_text: list[str] = []  # node_trades: ISO time, converted in bulk
        self.arrival_text: list[str | None] = []
        self.tid: list[int | None] = []
        self.price: list[float] = []
        self.qty: list[float] = []
        self.is_buy: list[bool] = []
        self.crossed: list[bool] = []
        self.line: list[int] = []

    def mentions_coin(self, line: bytes) -> bool:
        return self.coin_pattern.search(line) is not None

    def fail(self, line_no: int, why: str) -> CorruptArchiveError:
        return CorruptArchiveError(f"{self.uri} line {line_no}: malformed record ({why})")

    def load(self, line: bytes, line_no: int) -> Any:
        try:
            return json.loads(line)
        except ValueError as exc:
            raise self.fail(line_no, f"invalid JSON: {exc}") from None

    def number(self, record: dict[str, Any], field: str, line_no: int) -> float:
        value = record.get(field)
        try:
            number = float(value) if isinstance(value, str | int | float) and not isinstance(value, bool) else None
        except ValueError:
            number = None
        if number is None or not math.isfinite(number) or number <= 0:
            raise self.fail(line_no, f"{field}={value!r} is not a positive number")
        return number

    def integer(self, record: dict[str, Any], field: str, line_no: int, *, optional: bool = False) -> int | None:
        value = record.get(field)
        if value is None and optional:
            return None
        if not isinstance(value, int) or isinstance(value, bool):
            raise self.fail(line_no, f"{field}={value!r} is not an integer")
        return value

    def side(self, record: dict[str, Any], line_no: int) -> bool:
        value = record.get("side")
        if value not in ("B", "A"):
            raise self.fail(line_no, f"side={value!r} is not 'B' or 'A'")
        return value == "B"

    def add_fill(self, fill: Any, line_no: int, arrival: str | None) -> None:
        if not isinstance(fill, dict):
            raise self.fail(line_no, "a fill is not an object")
        if fill.get("coin") != self.coin:
            return
        crossed = fill.get("crossed")
        if not isinstance(crossed, bool):
            raise self.fail(line_no, f"crossed={crossed!r} is not a boolean")
        self.ts_ms.append(self.integer(fill, "time", line_no))  # type: ignore[arg-type]
        self.tid.append(self.integer(fill, "tid", line_no))
        self.price.append(self.number(fill, "px", line_no))
        self.qty.append(self.number(fill, "sz", line_no))
        self.is_buy.append(self.side(fill, line_no))
        self.crossed.append(crossed)
        self.arrival_text.append(arrival)
        self.line.append(line_no)

    def parse(self, line: bytes, line_no: int) -> None:
        raise NotImplementedError

    def exchange_times(self) -> pl.Series:
        return pl.Series(self.ts_ms, dtype=pl.Int64) * 1000

    def frame(self, index: int) -> pl.DataFrame:
        n = len(self.line)
        columns: dict[str, Any] = {
            "ts_exchange": self.exchange_times(),
            "ts_arrival": _iso_to_us(pl.Series(self.arrival_text, dtype=pl.String), self.uri)
            if any(t is not None for t in self.arrival_text)
            else pl.Series([None] * n, dtype=pl.Int64),
            "trade_id": pl.Series(self.tid, dtype=pl.Int64),
            "price": pl.Series(self.price, dtype=pl.Float64),
            "qty": pl.Series(self.qty, dtype=pl.Float64),
            "is_buy": pl.Series(self.is_buy, dtype=pl.Boolean),
            "crossed": pl.Series(self.crossed, dtype=pl.Boolean),
            "_object": pl.Series([index] * n, dtype=pl.Int32),
            "_line": pl.Series(self.line, dtype=pl.Int64),
        }
        return pl.DataFrame(columns, schema=_HOUR_SCHEMA)


class _TradesParser(_Parser):
    """node_trades: `{"coin", "side", "time": ISO, "px", "sz", "hash", "side_info": [...], ...}`."""

    def parse(self, line: bytes, line_no: int) -> None:
        record = self.load(line, line_no)
        if not isinstance(record, dict):
            raise self.fail(line_no, "a trade is not an object")
        if record.get("coin") != self.coin:
            return
        when = record.get("time")
        if not isinstance(when, str):
            raise self.fail(line_no, f"time={when!r} is not an ISO timestamp")
        self.ts_text.append(when)
        self.tid.append(self.integer(record, "tid", line_no, optional=True))
        self.price.append(self.number(record, "px", line_no))
        self.qty.append(self.number(record, "sz", line_no))
        self.is_buy.append(self.side(record, line_no))
        self.crossed.append(True)  # one record per trade, `side` is the aggressor's
        self.arrival_text.append(None)
        self.line.append(line_no)

    def exchange_times(self) -> pl.Series:
        return _iso_to_us(pl.Series(self.ts_text, dtype=pl.String), self.uri)


class _FillsParser(_Parser):
    """node_fills: `[user, {"coin", "px", "sz", "side", "time": ms, "crossed", "tid", ...}]` per line."""

    def parse(self, line: bytes, line_no: int) -> None:
        record = self.load(line, line_no)
        if not (isinstance(record, list) and len(record) == 2):
            raise self.fail(line_no, "expected [user, fill]")
        self.add_fill(record[1], line_no, None)


class _BlockParser(_Parser):
    """node_fills_by_block: `{"local_time", "block_time", "block_number", "events": [[user, fill], ...]}`."""

    def __init__(self, uri: str, coin: str) -> None:
        super().__init__(uri, coin)
        self.coin_text = re.compile(r'"coin"\s*:\s*"' + re.escape(coin) + r'"')

    def parse(self, line: bytes, line_no: int) -> None:
        # A busy coin's fills sit in most blocks, and a block holds every coin's fills: decoding only the coin's fill
        # objects (each starts at the `{` before its "coin") is several times faster than decoding whole blocks.
        try:
            text = line.decode("utf-8").strip()
        except UnicodeDecodeError as exc:
            raise self.fail(line_no, f"not UTF-8: {exc}") from None
        local_time = _LOCAL_TIME.search(text)
        if not (text.startswith("{") and text.endswith("}")):
            raise self.fail(line_no, "a block is not a complete JSON object")
        fills = []
        for match in self.coin_text.finditer(text):
            start = text.rfind("{", 0, match.start())
            try:
                fill, _ = _DECODER.raw_decode(text, start)
            except ValueError as exc:
                raise self.fail(line_no, f"invalid JSON: {exc}") from None
            if not isinstance(fill, dict) or fill.get("coin") != self.coin or local_time is None:
                return self.parse_whole(line, line_no)  # an unusual layout: decode the block properly
            fills.append(fill)
        for fill in fills:
            self.add_fill(fill, line_no, local_time[1])

    def parse_whole(self, line: bytes, line_no: int) -> None:
        record = self.load(line, line_no)
        if not isinstance(record, dict):
            raise self.fail(line_no, "a block is not an object")
        events, local_time = record.get("events"), record.get("local_time")
        if not isinstance(events, list):
            raise self.fail(line_no, "events is not a list")
        if not isinstance(local_time, str):
            raise self.fail(line_no, f"local_time={local_time!r} is not an ISO timestamp")
        for event in events:
            if not (isinstance(event, list) and len(event) == 2):
                raise self.fail(line_no, "an event is not [user, fill]")
            self.add_fill(event[1], line_no, local_time)


def _iso_to_us(text: pl.Series, uri: str) -> pl.Series:
    """ISO timestamps without zone (UTC, up to ns) → µs since the epoch, truncated."""
    parsed = text.str.strip_suffix("Z").str.to_datetime(format=_ISO_FORMAT, time_unit="ns", strict=False)
    bad = parsed.is_null() & text.is_not_null()
    if bad.any():
        raise CorruptArchiveError(f"{uri}: malformed timestamp {text.filter(bad)[0]!r}")
    return (parsed.cast(pl.Int64) // 1000).rename("")


# --- assembling the month --------------------------------------------------------------------------------------


def _assemble_month(
    frames: list[pl.DataFrame], objects: list[SourceObject | None], *, start: datetime, end: datetime
) -> tuple[pl.DataFrame, int]:
    """Keep the taker fill of each trade inside the month, build missing ids, drop exact duplicates."""
    start_us, end_us = _epoch_us(start), _epoch_us(end)
    fills = pl.concat(frames, how="vertical") if frames else pl.DataFrame(schema=_HOUR_SCHEMA)
    fills = fills.filter((pl.col("ts_exchange") >= start_us) & (pl.col("ts_exchange") < end_us))

    # Every trade of the fills eras has exactly one taker fill; a trade without one cannot be sided.
    orphan = (
        fills.filter(pl.col("trade_id").is_not_null())
        .group_by("trade_id")
        .agg(pl.col("crossed").any().alias("has_taker"), pl.col("_object").first(), pl.col("_line").first())
        .filter(~pl.col("has_taker"))
        .sort("trade_id")
    )
    if orphan.height:
        first = orphan.row(0, named=True)
        where = objects[first["_object"]]
        raise CorruptArchiveError(
            f"{orphan.height} trade(s) have no taker fill (crossed=true), e.g. tid {first['trade_id']} at "
            f"{where.location if where else '?'} line {first['_line']}"
        )

    trades = fills.filter(pl.col("crossed")).sort("ts_exchange", "_object", "_line")
    if trades.get_column("trade_id").null_count():
        # node_trades carries no id: number the trades of each µs in file order.
        k = pl.int_range(pl.len(), dtype=pl.Int64).over("ts_exchange")
        trades = trades.with_columns(
            trade_id=pl.coalesce(pl.col("trade_id"), pl.col("ts_exchange") * _MAX_TRADES_PER_MICROSECOND + k),
            _k=k,
        )
        if trades.height and trades.get_column("_k").max() >= _MAX_TRADES_PER_MICROSECOND:  # type: ignore[operator]
            raise CorruptArchiveError(f"more than {_MAX_TRADES_PER_MICROSECOND} trades in one µs; cannot build ids")

    before = trades.height
    trades = trades.unique(subset=CANONICAL_COLUMNS, keep="first", maintain_order=True)
    duplicates = before - trades.height
    conflicting = trades.filter(pl.col("trade_id").is_duplicated())
    if conflicting.height:
        first = conflicting.sort("trade_id", "_object", "_line").row(0, named=True)
        where = objects[first["_object"]]
        raise CorruptArchiveError(
            f"trade id {first['trade_id']} has conflicting taker fills, e.g. "
            f"{where.location if where else '?'} line {first['_line']}"
        )
    out = trades.sort("ts_exchange", "trade_id").select(CANONICAL_COLUMNS)
    return out.cast(CANONICAL_SCHEMA), duplicates  # type: ignore[arg-type]


def _epoch_us(moment: datetime) -> int:
    return int(moment.timestamp()) * 1_000_000


def _output_path(dest: Path, month: str) -> Path:
    return dest if dest.suffix == ".parquet" else dest / f"{month}.parquet"


def _write_parquet_atomically(trades: pl.DataFrame, path: Path) -> None:
    """Write next to the target, then rename: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    os.close(fd)
    try:
        # Same options as the other sources' canonical files (sources/canonical.py).
        trades.write_parquet(tmp, compression="zstd", statistics=True, row_group_size=1 << 20)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
