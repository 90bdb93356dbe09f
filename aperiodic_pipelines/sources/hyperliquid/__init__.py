"""hyperliquid-perps: trades from the node data Hyperliquid publishes in the requester-pays S3 bucket
`hl-mainnet-node-data`, one LZ4-frame NDJSON object per hour holding every coin: `{dataset}/hourly/{YYYYMMDD}/{H}.lz4`.

Each hourly object is downloaded once and parsed once for every coin (`prepare_month`): the parse is cached as a
parquet per hour, sorted by coin and keyed by the object's ETag, and each coin's month is then assembled from its
rows of those hours (`fetch_month`, `fetch_months`). Eras, overlaps and formats: `eras.py`, `parse.py`, `month.py`.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import polars as pl

from aperiodic_pipelines.errors import AperiodicError, CorruptArchiveError, NotPublishedError
from aperiodic_pipelines.sources.base import SourceObject, SourceResult
from aperiodic_pipelines.sources.config import SourceConfig
from aperiodic_pipelines.sources.hyperliquid.bucket import DEFAULT_WORKERS, BucketReader, make_s3_client
from aperiodic_pipelines.sources.hyperliquid.eras import (
    ARCHIVE_START,
    DATASET_RANK,
    DATASETS,
    ERAS,
    NODE_FILLS,
    NODE_FILLS_BY_BLOCK,
    NODE_TRADES,
    HourObject,
    datasets_for_hour,
    hour_key,
    month_bounds,
    month_objects,
    parse_s3_url,
)
from aperiodic_pipelines.sources.hyperliquid.month import AmbiguousAggressorError, assemble_month
from aperiodic_pipelines.sources.hyperliquid.parse import HOUR_SCHEMA, parse_ndjson, parse_object
from aperiodic_pipelines.sources.symbols import resolve_symbol
from aperiodic_pipelines.trades import validate_trades

__all__ = [
    "ARCHIVE_START",
    "DATASETS",
    "ERAS",
    "EXCHANGE",
    "NODE_FILLS",
    "NODE_FILLS_BY_BLOCK",
    "NODE_TRADES",
    "AmbiguousAggressorError",
    "ParsedHour",
    "PreparedMonth",
    "datasets_for_hour",
    "fetch_month",
    "fetch_months",
    "hour_key",
    "make_s3_client",
    "month_bounds",
    "parse_ndjson",
    "parse_s3_url",
    "prepare_month",
]

log = logging.getLogger(__name__)

EXCHANGE = "hyperliquid-perps"


@dataclass(frozen=True)
class ParsedHour:
    """One object of the bucket, parsed for every coin: `path` is its cached parquet."""

    dataset: str
    hour: datetime
    path: Path
    source: SourceObject
    parsed_now: bool  # False when the parse came from the cache
    ndjson_bytes: int  # decompressed size, when parsed now (0 from the cache)


@dataclass
class PreparedMonth:
    """Every object a month needs, parsed once for all coins (in hour order)."""

    month: str
    start: datetime
    end: datetime
    hours: list[ParsedHour] = field(default_factory=list)

    @property
    def objects(self) -> list[SourceObject]:
        return [hour.source for hour in self.hours]

    @property
    def first_hour(self) -> datetime:
        """The month's first published hour: 2025-03-22 10:00 for March 2025, else the month's first hour."""
        return max(self.start, ARCHIVE_START)

    def coins(self) -> list[str]:
        """Every coin with at least one row in the objects read."""
        found = pl.concat([pl.scan_parquet(h.path).select("coin").unique() for h in self.hours]).unique()
        return sorted(found.collect().get_column("coin").to_list())


def prepare_month(
    month: str,
    *,
    config: SourceConfig | None = None,
    s3_client: Any | None = None,
    max_workers: int = DEFAULT_WORKERS,
) -> PreparedMonth:
    """Download (or find in the cache) and parse every hourly object `month` needs, once for all coins.

    The fan-out step of an exchange-month: after it, `fetch_month` / `fetch_months` of any coin of that month read
    only their rows of the parsed hours. A missing hour is a `NotPublishedError` naming its `s3://` URI, found from
    the day listings before anything is downloaded; a damaged object is a `CorruptArchiveError` and is not cached.
    """
    config = config or SourceConfig.from_env()
    start, end = month_bounds(month)
    bucket, prefix = parse_s3_url(config.hyperliquid_url)
    client = s3_client if s3_client is not None else make_s3_client(max_workers=max_workers)
    reader = BucketReader(client, bucket, Path(config.cache_dir) / "hyperliquid" / bucket)
    wanted = month_objects(start, end, prefix=prefix)
    prepared = PreparedMonth(month, start, end)
    with ThreadPoolExecutor(max_workers=max(1, max_workers)) as pool:
        present = _present_objects(reader, wanted, pool)
        futures: list[Future[ParsedHour]] = [pool.submit(_parse_hour, reader, obj, head) for obj, head in present]
        try:
            prepared.hours = [future.result() for future in futures]
        except BaseException:
            for future in futures:
                future.cancel()
            raise
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
        prepared = prepare_month(month, config=config, s3_client=s3_client, max_workers=max_workers)
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
) -> dict[str, SourceResult]:
    """Several coins' months from one pass over the month's objects: `{dest}/{coin}/{month}.parquet` each."""
    resolved = [resolve_symbol(EXCHANGE, symbol) for symbol in symbols]  # refuse bad symbols before any I/O
    prepared = prepare_month(month, config=config, s3_client=s3_client, max_workers=max_workers)
    return {
        symbol: _write_coin_month(prepared, atlas, coin, Path(dest) / coin / f"{month}.parquet")
        for symbol, (atlas, coin) in zip(symbols, resolved, strict=True)
    }


# --- listing and parsing -----------------------------------------------------------------------------------------


def _present_objects(
    reader: BucketReader, wanted: list[HourObject], pool: ThreadPoolExecutor
) -> list[tuple[HourObject, dict[str, Any]]]:
    """The objects to read with their ETag and size: every required one (else `NotPublishedError`, before any
    download), and each optional one the bucket holds."""
    prefixes = sorted({obj.key.rsplit("/", 1)[0] + "/" for obj in wanted})
    listings = list(pool.map(reader.list_day, prefixes))
    if all(listing is not None for listing in listings):
        inventory = {key: meta for listing in listings for key, meta in (listing or {}).items()}
        heads = [inventory.get(obj.key) for obj in wanted]
    else:  # listing denied: HEAD each object
        heads = list(pool.map(lambda obj: reader.head(obj.key), wanted))
    for obj, head in zip(wanted, heads, strict=True):
        if head is None and obj.required:
            raise NotPublishedError(f"{reader.uri(obj.key)} is not published (hour {obj.hour:%Y-%m-%d %H}:00 UTC)")
    return [(obj, head) for obj, head in zip(wanted, heads, strict=True) if head is not None]


def _parse_hour(reader: BucketReader, obj: HourObject, head: dict[str, Any], *, again: bool = False) -> ParsedHour:
    etag, size = str(head["ETag"]).strip('"'), int(head["ContentLength"])
    cached = reader.cached_parse(obj.key, etag, size)
    if cached is not None:
        path, sha256 = cached
        return ParsedHour(obj.dataset, obj.hour, path, SourceObject(reader.uri(obj.key), size, sha256), False, 0)
    local = reader.fetch(obj.key, head)
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
    return ParsedHour(obj.dataset, obj.hour, path, SourceObject(local.uri, local.size, sha256), True, ndjson_bytes)


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


def _write_coin_month(prepared: PreparedMonth, atlas: str, coin: str, out_path: Path) -> SourceResult:
    start_us, end_us = (int(moment.timestamp()) * 1_000_000 for moment in (prepared.start, prepared.end))
    locations = [hour.source.location for hour in prepared.hours]
    trades, counts = assemble_month(_coin_rows(prepared, coin), locations, coin=coin, start_us=start_us, end_us=end_us)
    trades = validate_trades(trades, name=f"{EXCHANGE} {coin} {prepared.month}")
    _write_parquet_atomically(trades, out_path)

    datasets = {hour.dataset for hour in prepared.hours}
    first_hour = prepared.first_hour
    return SourceResult(
        exchange=EXCHANGE,
        symbol=atlas,
        native_symbol=coin,
        month=prepared.month,
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
