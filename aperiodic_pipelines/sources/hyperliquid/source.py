"""hyperliquid-perps, the implementation (the package `sources.hyperliquid` re-exports its public names): trades from the node data Hyperliquid publishes in the requester-pays S3 bucket
`hl-mainnet-node-data`, one LZ4-frame NDJSON object per hour holding every coin: `{dataset}/hourly/{YYYYMMDD}/{H}.lz4`.

Each hourly object is downloaded once and parsed once for every coin (`prepare_month`): the parse is cached as a
parquet per hour, sorted by coin and keyed by the object's ETag, and each coin's month is then assembled from its
rows of those hours (`fetch_month`, `fetch_months`). Eras, overlaps and formats: `eras.py`, `parse.py`, `month.py`.

`prepare_month` also records what it prepared in a manifest next to the cache (`{cache}/hyperliquid/{bucket}/
_prepared/{prefix}/{YYYY-MM}.json`); `load_prepared_month` reads it back without touching the bucket, so a
per-coin step that runs after the venue-wide one (Dagster: `hyperliquid_perps/venue_hours`) never lists,
downloads or parses anything.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl

from aperiodic_pipelines.atomic import atomic_path, atomic_write
from aperiodic_pipelines.domain.errors import AperiodicError, CorruptArchiveError, NotPublishedError
from aperiodic_pipelines.domain.months import check_day, month_of_day
from aperiodic_pipelines.domain.settings import HttpSettings
from aperiodic_pipelines.domain.symbols import resolve_symbol
from aperiodic_pipelines.sources.base import SourceObject, SourceResult
from aperiodic_pipelines.sources.config import SourceConfig
from aperiodic_pipelines.sources.daily import DayNotPublishedError
from aperiodic_pipelines.sources.hyperliquid.bucket import DEFAULT_WORKERS, BucketReader, make_s3_client
from aperiodic_pipelines.sources.hyperliquid.eras import (
    ARCHIVE_START,
    DATASET_RANK,
    DATASETS,
    HOUR,
    HourObject,
    hour_key,
    month_bounds,
    month_objects,
    parse_s3_url,
)
from aperiodic_pipelines.sources.hyperliquid.month import assemble_month
from aperiodic_pipelines.sources.hyperliquid.parse import (
    HOUR_SCHEMA,
    PARSER_VERSION,
    parse_object,
)
from aperiodic_pipelines.trades import check_duplicate_share, validate_trades

log = logging.getLogger(__name__)

EXCHANGE = "hyperliquid-perps"
MANIFEST_VERSION = 1


class MonthNotPreparedError(AperiodicError):
    """A coin's month was asked for from prepared hours, but its month has not been prepared (or its parses are
    gone from the cache): prepare the month first."""


@dataclass(frozen=True)
class ParsedHour:
    """One object of the bucket, parsed for every coin: `path` is its cached parquet."""

    dataset: str
    hour: datetime
    path: Path
    source: SourceObject
    parsed_now: bool  # False when the parse came from the cache
    ndjson_bytes: int  # decompressed size, when parsed now (0 from the cache)
    parse_seconds: float = 0.0  # decompress + decode + columns + parquet write, when parsed now (thread wall)
    etag: str = ""  # the version of the object that was parsed


@dataclass
class PreparedMonth:
    """Every object a month needs, parsed once for all coins (in hour order)."""

    month: str
    start: datetime
    end: datetime
    hours: list[ParsedHour] = field(default_factory=list)
    seconds: float = 0.0  # wall time of the preparation (listing, downloads, parses)
    manifest: Path | None = None  # where the preparation was recorded (`load_prepared_month` reads it)

    @property
    def objects(self) -> list[SourceObject]:
        return [hour.source for hour in self.hours]

    @property
    def first_hour(self) -> datetime:
        """The month's first published hour: 2025-03-22 10:00 for March 2025, else the month's first hour."""
        return max(self.start, ARCHIVE_START)

    @property
    def partial_month(self) -> bool:
        return self.first_hour > self.start

    def stats(self) -> dict[str, Any]:
        """What the preparation read and did, for run metadata: objects, bytes, cache hits, parse throughput."""
        parsed = [hour for hour in self.hours if hour.parsed_now]
        ndjson = sum(hour.ndjson_bytes for hour in parsed)
        return {
            "month": self.month,
            "objects": len(self.hours),
            "hours": len({hour.hour for hour in self.hours}),
            "datasets": "+".join(d for d in DATASETS if d in {hour.dataset for hour in self.hours}),
            "compressed_bytes": sum(hour.source.size for hour in self.hours),
            "parsed_now": len(parsed),
            "cache_hits": len(self.hours) - len(parsed),
            "ndjson_bytes_parsed": ndjson,
            # Decompressed NDJSON parsed per second of the whole preparation (listing and downloads included).
            "parse_mb_per_s": round(ndjson / 1e6 / self.seconds, 2) if self.seconds and ndjson else 0.0,
            "seconds": round(self.seconds, 3),
            "first_hour": f"{self.first_hour:%Y-%m-%dT%H:%M:%S}Z",
            "partial_month": self.partial_month,
        }

    def coins(self) -> list[str]:
        """Every coin with at least one row in the objects read."""
        found = pl.concat([pl.scan_parquet(h.path).select("coin").unique() for h in self.hours]).unique()
        return sorted(found.collect().get_column("coin").to_list())


def prepare_month(
    month: str,
    *,
    config: SourceConfig,
    s3_client: Any | None = None,
    max_workers: int = DEFAULT_WORKERS,
    http: HttpSettings | None = None,
) -> PreparedMonth:
    """Download (or find in the cache) and parse every hourly object `month` needs, once for all coins.

    The fan-out step of an exchange-month: after it, `fetch_month` / `fetch_months` of any coin of that month read
    only their rows of the parsed hours. A missing hour is a `NotPublishedError` naming its `s3://` URI, found from
    the day listings before anything is downloaded; a damaged object is a `CorruptArchiveError` and is not cached.
    On success the month's manifest is (re)written; on failure it is removed, so no step builds from a stale one.
    `http` sets each object's download deadline and minimum throughput; the Dagster asset passes none, and the
    operator's settings then come from their one owner, `domain.settings`.
    """
    started = time.perf_counter()
    start, end = month_bounds(month)
    reader, prefix = _bucket_reader(config, s3_client, max_workers, http)
    manifest = _manifest_path(reader, prefix, month)
    manifest.unlink(missing_ok=True)
    wanted = month_objects(start, end, prefix=prefix)
    prepared = PreparedMonth(month, start, end, manifest=manifest)
    with ThreadPoolExecutor(max_workers=max(1, max_workers)) as pool:
        prepared.hours = _parse_all(reader, _present_objects(reader, wanted, pool), pool)
    prepared.seconds = time.perf_counter() - started
    _write_manifest(prepared, reader, config.hyperliquid_url)
    return prepared


def load_prepared_month(month: str, *, config: SourceConfig) -> PreparedMonth:
    """The month as `prepare_month` last prepared it, from its manifest and the parsed hours in the cache; no
    request to the bucket. `MonthNotPreparedError` when there is no manifest or a parsed hour is gone."""
    start, end = month_bounds(month)
    bucket, prefix = parse_s3_url(config.hyperliquid_url)
    reader = BucketReader(None, bucket, Path(config.cache_dir) / "hyperliquid" / bucket)
    manifest = _manifest_path(reader, prefix, month)
    try:
        recorded = json.loads(manifest.read_text())
    except FileNotFoundError:
        raise MonthNotPreparedError(
            f"hyperliquid-perps {month} of {config.hyperliquid_url} has not been prepared (no {manifest})"
        ) from None
    except ValueError as exc:
        raise MonthNotPreparedError(f"unreadable manifest {manifest}: {exc}") from None
    if recorded.get("version") != MANIFEST_VERSION or recorded.get("parser_version") != PARSER_VERSION:
        raise MonthNotPreparedError(f"{manifest} was written by another version; prepare {month} again")
    prepared = PreparedMonth(month, start, end, manifest=manifest)
    for item in recorded["hours"]:
        path = reader.parsed_path(item["key"], item["etag"])
        if not path.exists():
            raise MonthNotPreparedError(f"{manifest} lists {path}, which is gone from the cache; prepare {month} again")
        hour = datetime.fromisoformat(item["hour"])
        source = SourceObject(reader.uri(item["key"]), int(item["size"]), item["sha256"])
        prepared.hours.append(ParsedHour(item["dataset"], hour, path, source, False, 0, etag=item["etag"]))
    return prepared


def fetch_month(
    symbol: str,
    month: str,
    *,
    dest: Path,
    config: SourceConfig | None = None,
    s3_client: Any | None = None,
    max_workers: int = DEFAULT_WORKERS,
    prepared: PreparedMonth | None = None,
    http: HttpSettings | None = None,
) -> SourceResult:
    """Canonical trades of one Hyperliquid perpetual for one month, written as parquet to `dest`.

    `symbol` is an Atlas symbol (perpetual-BTC-USDC:USDC) or the coin (BTC, kPEPE, xyz:AAPL). `dest` is the parquet
    file to write, or a directory (then `{dest}/{month}.parquet`). `s3_client` is any boto3 S3 client (e.g. from
    dagster-aws `S3Resource.get_client()`); without one, boto3 builds one from the environment
    (`AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL`, credentials, `AWS_REGION`). `prepared` (from `prepare_month`)
    skips the listing and parse step; without it the month is prepared here (from the cache when already parsed).
    """
    atlas, coin = resolve_symbol(EXCHANGE, symbol)
    if prepared is None:
        if config is None:
            raise ValueError(f"{EXCHANGE} {month}: pass `config` (SourceSettings) or an already `prepared` month")
        prepared = prepare_month(month, config=config, s3_client=s3_client, max_workers=max_workers, http=http)
    elif prepared.month != month:
        raise AperiodicError(f"prepared month {prepared.month} given for {month}")
    return _write_coin_month(prepared, atlas, coin, _output_path(Path(dest), month))


def fetch_months(
    symbols: Sequence[str],
    month: str,
    *,
    dest: Path,
    config: SourceConfig | None = None,
    s3_client: Any | None = None,
    max_workers: int = DEFAULT_WORKERS,
    http: HttpSettings | None = None,
) -> dict[str, SourceResult]:
    """Several coins' months from one pass over the month's objects: `{dest}/{coin}/{month}.parquet` each."""
    resolved = [resolve_symbol(EXCHANGE, symbol) for symbol in symbols]  # refuse bad symbols before any I/O
    if config is None:
        raise ValueError(f"{EXCHANGE} {month}: pass `config` (SourceSettings)")
    prepared = prepare_month(month, config=config, s3_client=s3_client, max_workers=max_workers, http=http)
    return {
        symbol: _write_coin_month(prepared, atlas, coin, Path(dest) / coin / f"{month}.parquet")
        for symbol, (atlas, coin) in zip(symbols, resolved, strict=True)
    }



def fetch_day(
    symbol: str,
    day: str,
    *,
    dest: Path,
    config: SourceConfig,
    s3_client: Any | None = None,
    max_workers: int = DEFAULT_WORKERS,
    http: HttpSettings | None = None,
) -> SourceResult:
    """Canonical trades of one Hyperliquid perpetual for one UTC day, written as parquet to `dest` (a file, or a
    directory: then `{dest}/{day}.parquet`).

    Reads the objects `month_objects` names for the day, the same ones the month reads for it: the hour before
    the day (records filed early), its 24 hours, and the hour its last trades spill into; a day is complete when
    those exist. Each object is parsed once and cached by ETag, shared with the month's preparation. A missing
    object is a `DayNotPublishedError` at once, `later_published` from one HEAD of the hour after it."""
    check_day(day)
    atlas, coin = resolve_symbol(EXCHANGE, symbol)
    start = datetime.fromisoformat(day).replace(tzinfo=UTC)
    end = start + timedelta(days=1)
    reader, prefix = _bucket_reader(config, s3_client, max_workers, http)
    wanted = month_objects(start, end, prefix=prefix)
    prepared = PreparedMonth(month_of_day(day), start, end)
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=max(1, max_workers)) as pool:
        missing, present = _missing_and_present(wanted, _heads(reader, wanted, pool))
        if missing:
            last = missing[-1]
            later = reader.head(hour_key(last.dataset, last.hour + HOUR, prefix=prefix)) is not None
            raise DayNotPublishedError(
                f"{EXCHANGE} {coin}", day, [reader.uri(obj.key) for obj in missing], later_published=later
            )
        prepared.hours = _parse_all(reader, present, pool)
    prepared.seconds = time.perf_counter() - started
    return _write_coin_month(prepared, atlas, coin, _output_path(Path(dest), day), day=day)

# --- listing and parsing -----------------------------------------------------------------------------------------


def _bucket_reader(
    config: SourceConfig, s3_client: Any | None, max_workers: int, http: HttpSettings | None
) -> tuple[BucketReader, str]:
    """The reader of `config.hyperliquid_url`'s bucket (caching under `config.cache_dir`) and the key prefix; without
    `s3_client`, boto3 builds one, and without `http` the operator's settings come from `domain.settings`."""
    http = http or HttpSettings.from_env()
    bucket, prefix = parse_s3_url(config.hyperliquid_url)
    client = s3_client if s3_client is not None else make_s3_client(max_workers=max_workers, http=http)
    return BucketReader(client, bucket, Path(config.cache_dir) / "hyperliquid" / bucket, http=http), prefix


def _parse_all(
    reader: BucketReader, present: list[tuple[HourObject, dict[str, Any]]], pool: ThreadPoolExecutor
) -> list[ParsedHour]:
    """Every present object parsed (or found parsed in the cache) on `pool`, in order; on the first failure the
    parses not yet started are cancelled."""
    futures: list[Future[ParsedHour]] = [pool.submit(_parse_hour, reader, obj, head) for obj, head in present]
    try:
        return [future.result() for future in futures]
    except BaseException:
        for future in futures:
            future.cancel()
        raise


def _present_objects(
    reader: BucketReader, wanted: list[HourObject], pool: ThreadPoolExecutor
) -> list[tuple[HourObject, dict[str, Any]]]:
    """The objects to read with their ETag and size: every required one (else `NotPublishedError`, before any
    download), and each optional one the bucket holds."""
    missing, present = _missing_and_present(wanted, _heads(reader, wanted, pool))
    if missing:
        obj = missing[0]
        raise NotPublishedError(f"{reader.uri(obj.key)} is not published (hour {obj.hour:%Y-%m-%d %H}:00 UTC)")
    return present


def _missing_and_present(
    wanted: list[HourObject], heads: list[dict[str, Any] | None]
) -> tuple[list[HourObject], list[tuple[HourObject, dict[str, Any]]]]:
    """(required objects the bucket lacks, objects it holds with their HEAD), each in `wanted`'s order."""
    missing = [obj for obj, head in zip(wanted, heads, strict=True) if head is None and obj.required]
    present = [(obj, head) for obj, head in zip(wanted, heads, strict=True) if head is not None]
    return missing, present


def _heads(reader: BucketReader, wanted: list[HourObject], pool: ThreadPoolExecutor) -> list[dict[str, Any] | None]:
    """ETag and size of each wanted object (None: not in the bucket), from one listing per day prefix."""
    prefixes = sorted({obj.key.rsplit("/", 1)[0] + "/" for obj in wanted})
    listings = list(pool.map(reader.list_day, prefixes))
    if all(listing is not None for listing in listings):
        inventory = {key: meta for listing in listings for key, meta in (listing or {}).items()}
        return [inventory.get(obj.key) for obj in wanted]
    return list(pool.map(lambda obj: reader.head(obj.key), wanted))  # listing denied: HEAD each object

def _parse_hour(reader: BucketReader, obj: HourObject, head: dict[str, Any], *, again: bool = False) -> ParsedHour:
    etag, size = str(head["ETag"]).strip('"'), int(head["ContentLength"])
    cached = reader.cached_parse(obj.key, etag, size)
    if cached is not None:
        path, sha256 = cached
        source = SourceObject(reader.uri(obj.key), size, sha256)
        return ParsedHour(obj.dataset, obj.hour, path, source, False, 0, etag=etag)
    local = reader.fetch(obj.key, head)
    started = time.perf_counter()
    try:
        frame, sha256, ndjson_bytes = parse_object(local.path, obj.dataset, local.uri)
    except CorruptArchiveError:
        reader.discard(obj.key, local)
        raise
    if local.from_cache and local.expected_sha256 not in (None, sha256) and not again:
        # The cached bytes no longer hash as recorded (disk corruption): drop them and fetch again.
        reader.discard(obj.key, local)
        return _parse_hour(reader, obj, head, again=True)
    path = reader.store_parsed(
        obj.key,
        local.etag,
        lambda target: frame.write_parquet(target, compression="zstd", statistics=True, row_group_size=1 << 16),
    )
    reader.promote(obj.key, local, sha256)
    source = SourceObject(local.uri, local.size, sha256)
    return ParsedHour(obj.dataset, obj.hour, path, source, True, ndjson_bytes, time.perf_counter() - started,
                      local.etag)


# --- the manifest of a prepared month --------------------------------------------------------------------------


def _manifest_path(reader: BucketReader, prefix: str, month: str) -> Path:
    return reader.cache_root / "_prepared" / prefix.strip("/") / f"{month}.json"


def _write_manifest(prepared: PreparedMonth, reader: BucketReader, url: str) -> None:
    """Record the month's objects (key, ETag, size, sha256): written aside, then renamed, so it is whole or absent."""
    assert prepared.manifest is not None
    bucket_prefix = f"s3://{reader.bucket}/"
    hours = [
        {
            "dataset": hour.dataset,
            "hour": hour.hour.isoformat(),
            "key": hour.source.location.removeprefix(bucket_prefix),
            "etag": hour.etag,
            "size": hour.source.size,
            "sha256": hour.source.sha256,
        }
        for hour in prepared.hours
    ]
    body = {"version": MANIFEST_VERSION, "parser_version": PARSER_VERSION, "url": url, "month": prepared.month,
            "hours": hours}
    with atomic_write(prepared.manifest) as out:
        out.write(json.dumps(body, sort_keys=True, indent=1).encode())


# --- one coin's month --------------------------------------------------------------------------------------------


def _coin_rows(prepared: PreparedMonth, coin: str) -> pl.DataFrame:
    """The coin's rows of every parsed hour, tagged by object: one scan over all hours (predicate pushdown on the
    coin-sorted parquet; one plan for the month is far cheaper than one per hour)."""
    schema = {name: dtype for name, dtype in HOUR_SCHEMA.items() if name != "coin"}
    if not prepared.hours:
        return pl.DataFrame(schema={**schema, "_object": pl.Int32(), "_rank": pl.Int8()})
    tags = pl.DataFrame(
        {
            "_path": [str(hour.path) for hour in prepared.hours],
            "_object": list(range(len(prepared.hours))),
            "_rank": [DATASET_RANK[hour.dataset] for hour in prepared.hours],
        },
        schema={"_path": pl.String(), "_object": pl.Int32(), "_rank": pl.Int8()},
    )
    rows = (
        pl.scan_parquet([hour.path for hour in prepared.hours], include_file_paths="_path")
        .filter(pl.col("coin") == coin)
        .drop("coin")
        .collect()
    )
    return rows.join(tags, on="_path", how="left").drop("_path").sort("_object", "line")


def _write_coin_month(
    prepared: PreparedMonth, atlas: str, coin: str, out_path: Path, *, day: str | None = None
) -> SourceResult:
    """The coin's trades of `[prepared.start, prepared.end)`: its month, or with `day` that one UTC day."""
    start_us, end_us = (int(moment.timestamp()) * 1_000_000 for moment in (prepared.start, prepared.end))
    locations = [hour.source.location for hour in prepared.hours]
    trades, counts = assemble_month(_coin_rows(prepared, coin), locations, coin=coin, start_us=start_us, end_us=end_us)
    name = f"{EXCHANGE} {coin} {day or prepared.month}"
    # Exact repeats of a record within one dataset (era overlaps are merged and counted apart): a handful at most.
    check_duplicate_share(counts.duplicates_dropped, trades.height + counts.duplicates_dropped, name=name)
    trades = validate_trades(trades, name=name)
    _write_parquet_atomically(trades, out_path)

    datasets = {hour.dataset for hour in prepared.hours}
    first_hour = prepared.first_hour
    return SourceResult(
        exchange=EXCHANGE,
        symbol=atlas,
        native_symbol=coin,
        month=prepared.month,
        day=day,
        path=out_path,
        trade_count=trades.height,
        duplicates_dropped=counts.duplicates_dropped,
        id_gaps=0,  # Hyperliquid trade ids are not sequential, so gaps say nothing about missing trades
        has_arrival_times=trades.height > 0 and trades.get_column("ts_arrival").null_count() == 0,
        dataset="+".join(d for d in DATASETS if d in datasets),
        objects=prepared.objects,
        metadata={
            "first_hour": f"{first_hour:%Y-%m-%dT%H:%M:%S}Z",
            "partial_month": first_hour > prepared.start,
            "era_overlap_merged": counts.era_overlap_merged,
            "era_overlap_merged_by_tid": counts.merged_by_tid,
            "era_overlap_merged_by_hash": counts.merged_by_hash,
        },
    )


def _output_path(dest: Path, period: str) -> Path:
    """`dest` when it names a parquet file, else `{dest}/{period}.parquet` (period: the month or the day)."""
    return dest if dest.suffix == ".parquet" else dest / f"{period}.parquet"


def _write_parquet_atomically(trades: pl.DataFrame, path: Path) -> None:
    """Write next to the target, then rename: a reader never sees half a file."""
    with atomic_path(path) as tmp:
        # Same options as the other sources' canonical files (sources/canonical.py).
        trades.write_parquet(tmp, compression="zstd", statistics=True, row_group_size=1 << 20)
