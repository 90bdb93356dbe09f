"""binance-futures (USD-M) trade archives from data.binance.vision → canonical trades (spec §1).

Layout: `{base}/data/futures/um/{monthly|daily}/{aggTrades|trades}/{SYM}/{SYM}-{dataset}-{YYYY-MM|YYYY-MM-DD}.zip`,
each with a `.zip.CHECKSUM` sidecar (`<sha256 hex>  <file name>`). The monthly archive is used when published;
otherwise every daily archive of the month. A missing day fails the month, naming every missing day, unless the
operator allows it (`APERIODIC_ALLOW_MISSING_DAYS=1`): then the month is built and the days are recorded.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from aperiodic_pipelines.domain.errors import CorruptArchiveError, NotPublishedError
from aperiodic_pipelines.domain.months import check_day, month_of_day
from aperiodic_pipelines.domain.settings import HttpSettings
from aperiodic_pipelines.domain.symbols import to_native
from aperiodic_pipelines.sources.archive_stream import check_zip_structure, first_line, lazy_csv, zip_csv
from aperiodic_pipelines.sources.base import SourceResult
from aperiodic_pipelines.sources.canonical import (
    CanonicalStats,
    SourceIdentity,
    TradeFile,
    build_canonical_month,
    days_of_month,
    ms_or_us_to_us,
    parse_month,
    write_source_result,
)
from aperiodic_pipelines.sources.config import SourceConfig
from aperiodic_pipelines.sources.daily import DayNotPublishedError, shift_day
from aperiodic_pipelines.sources.days import fetch_days
from aperiodic_pipelines.sources.download import Download, Downloader, parse_checksum_sidecar
from aperiodic_pipelines.sources.missing import check_missing_days
from aperiodic_pipelines.trades import CANONICAL_SCHEMA

EXCHANGE = "binance-futures"
DATASETS = ("aggTrades", "trades")
COLUMNS: dict[str, dict[str, pl.DataType]] = {
    "aggTrades": {
        "agg_trade_id": pl.Int64(),
        "price": pl.Float64(),
        "quantity": pl.Float64(),
        "first_trade_id": pl.Int64(),
        "last_trade_id": pl.Int64(),
        "transact_time": pl.Int64(),
        "is_buyer_maker": pl.Boolean(),
    },
    "trades": {
        "id": pl.Int64(),
        "price": pl.Float64(),
        "qty": pl.Float64(),
        "quote_qty": pl.Float64(),
        "time": pl.Int64(),
        "is_buyer_maker": pl.Boolean(),
    },
}
# (trade id, quantity, time) column of each dataset
_KEY_COLUMNS = {"aggTrades": ("agg_trade_id", "quantity", "transact_time"), "trades": ("id", "qty", "time")}


def archive_path(native_symbol: str, dataset: str, period: str) -> str:
    """Path below the base URL of the monthly (`period` = YYYY-MM) or daily (YYYY-MM-DD) archive."""
    frequency = "monthly" if len(period) == 7 else "daily"
    return f"data/futures/um/{frequency}/{dataset}/{native_symbol}/{native_symbol}-{dataset}-{period}.zip"


def fetch_month(
    symbol: str,
    month: str,
    *,
    dest: Path,
    config: SourceConfig,
    downloader: Downloader | None = None,
    http: HttpSettings | None = None,
) -> SourceResult:
    """Download (or reuse from cache), verify and convert one month of binance-futures trades to `dest`."""
    parse_month(month)
    identity = _identity(symbol, config)
    native, dataset = identity.native_symbol, identity.dataset
    downloader = downloader or Downloader.from_config(config, http)
    base = config.binance_url.rstrip("/")

    missing_days: list[str] = []
    try:
        downloads = [_fetch_checked(downloader, base, archive_path(native, dataset, month))]
        outside_month = "error"  # a monthly file holds only its month
    except NotPublishedError as monthly_missing:
        fetched, missing_days = fetch_days(
            days_of_month(month), lambda client, day: _fetch_checked(client, base, archive_path(native, dataset, day)),
            downloader,
        )
        downloads = [download for _day, download in fetched]
        missing_files = [_archive_name(native, dataset, day) for day in missing_days]
        check_missing_days(
            f"{EXCHANGE} {native} {dataset} {month}", missing_days, published=len(downloads), config=config,
            detail=f"monthly archive: {monthly_missing}; daily archives missing for", missing_objects=missing_files,
        )
        outside_month = "trim"  # daily files may spill over the month's edges

    return write_source_result(
        identity, lambda: [read_archive(d.path, dataset) for d in downloads], dest=Path(dest), month=month,
        objects=[d.source_object() for d in downloads], evict=lambda: downloader.evict_downloads(downloads),
        outside_month=outside_month, missing_days=missing_days,
    )


def fetch_day(
    symbol: str,
    day: str,
    *,
    dest: Path,
    config: SourceConfig,
    downloader: Downloader | None = None,
    http: HttpSettings | None = None,
) -> SourceResult:
    """One UTC day of binance-futures trades to `dest` (a parquet file), from the daily archive + `.CHECKSUM`.

    The rows are the monthly file's rows of that day (the month reads the same daily files when no monthly archive
    exists, and a monthly archive holds the same trades). Not out yet: `DayNotPublishedError` at once, with
    `later_published` from one probe of the next day's CHECKSUM."""
    check_day(day)
    identity = _identity(symbol, config)
    native, dataset = identity.native_symbol, identity.dataset
    client = (downloader or Downloader.from_config(config, http)).impatient()
    base = config.binance_url.rstrip("/")
    try:
        download = _fetch_checked(client, base, archive_path(native, dataset, day))
    except NotPublishedError:
        raise DayNotPublishedError(
            f"{EXCHANGE} {native} {dataset}", day, [_archive_name(native, dataset, day)],
            later_published=_checksum_published(client, base, archive_path(native, dataset, shift_day(day, 1))),
        ) from None
    return write_source_result(
        identity, lambda: [read_archive(download.path, dataset)], dest=Path(dest), month=month_of_day(day), day=day,
        objects=[download.source_object()], evict=lambda: client.evict_downloads([download]),
    )


def _identity(symbol: str, config: SourceConfig) -> SourceIdentity:
    """The symbol's native id and the configured dataset (checked before any download)."""
    dataset = config.binance_dataset
    native = to_native(EXCHANGE, symbol)
    if dataset not in DATASETS:
        raise ValueError(f"binance dataset must be one of {DATASETS}, got {dataset!r}")
    return SourceIdentity(EXCHANGE, symbol, native, dataset)


def _archive_name(native_symbol: str, dataset: str, period: str) -> str:
    return archive_path(native_symbol, dataset, period).rsplit("/", 1)[-1]


def _checksum_published(client: Downloader, base: str, path: str) -> bool:
    """Whether the archive at `path` has its CHECKSUM out (one probe, no patience)."""
    try:
        client.fetch_text(f"{base}/{path}.CHECKSUM")
    except NotPublishedError:
        return False
    return True


def _fetch_checked(downloader: Downloader, base: str, path: str) -> Download:
    """The archive, verified against its CHECKSUM sidecar (fetched every time, so a changed upstream is seen)."""
    url = f"{base}/{path}"
    filename = path.rsplit("/", 1)[-1]
    expected = parse_checksum_sidecar(downloader.fetch_text(url + ".CHECKSUM"), filename=filename, url=url + ".CHECKSUM")
    # Only a structural check before caching: the sha256 already matched the published one, and the member's
    # CRC is checked while it is streamed, so a full CRC pass here would decompress everything twice. A file
    # that turns out corrupt then is evicted by `fetch_month`.
    return downloader.fetch(
        url, f"{EXCHANGE}/{path}", expected_sha256=expected, verify=lambda p: check_zip_structure(p, name=filename)
    )


def convert_archives(
    zip_paths: list[Path], month: str, dest: Path, *, dataset: str = "aggTrades", outside_month: str = "error"
) -> CanonicalStats:
    """Local Binance archives (one monthly, or the month's dailies with `outside_month="trim"`) → canonical
    trades at `dest`. Each CSV is streamed out of its zip (never extracted to disk)."""
    files = [read_archive(Path(path), dataset) for path in zip_paths]
    return build_canonical_month(files, month, Path(dest), outside_month=outside_month)


def read_archive(zip_path: Path, dataset: str) -> TradeFile:
    """Lazy canonical frame of one Binance zip; detects the optional header row of newer files."""
    name = zip_path.name
    source = zip_csv(zip_path, name=name)
    schema = COLUMNS[dataset]
    first = first_line(source).strip()
    fields = first.split(",")
    has_header = bool(first) and not (first[0].isdigit() or first[0] == "-")
    if has_header and [f.strip() for f in fields] != list(schema):
        raise CorruptArchiveError(f"{name}: unexpected header {first!r}, expected {','.join(schema)}")
    if first and not has_header and len(fields) != len(schema):
        raise CorruptArchiveError(
            f"{name}: malformed row at line 1: {first!r}: {len(fields)} fields, expected {len(schema)} ({dataset})"
        )
    trade_id, quantity, time = _KEY_COLUMNS[dataset]

    def to_canonical(frame: pl.DataFrame, _line: int) -> pl.DataFrame:
        return frame.select(
            ts_exchange=ms_or_us_to_us(pl.col(time)),
            ts_arrival=pl.lit(None, dtype=pl.Int64),
            trade_id=pl.col(trade_id),
            price=pl.col("price"),
            qty=pl.col(quantity),
            is_buy=~pl.col("is_buyer_maker"),  # buyer was the maker → the taker sold
        )

    frame = lazy_csv(
        source, schema=schema, skip_first_line=has_header, convert=to_canonical, out_schema=CANONICAL_SCHEMA
    )
    return TradeFile(origin=name, frame=frame)
