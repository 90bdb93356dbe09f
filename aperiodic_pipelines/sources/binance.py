"""binance-futures (USD-M) trade archives from data.binance.vision → canonical trades (spec §1).

Layout: `{base}/data/futures/um/{monthly|daily}/{aggTrades|trades}/{SYM}/{SYM}-{dataset}-{YYYY-MM|YYYY-MM-DD}.zip`,
each with a `.zip.CHECKSUM` sidecar (`<sha256 hex>  <file name>`). The monthly archive is used when published;
otherwise every daily archive of the month (a missing day is an error: a month is published whole or not at all).
"""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import polars as pl

from aperiodic_pipelines.errors import CorruptArchiveError, NotPublishedError
from aperiodic_pipelines.sources.base import SourceObject, SourceResult
from aperiodic_pipelines.sources.canonical import (
    CanonicalStats,
    TradeFile,
    build_canonical_month,
    days_of_month,
    ms_or_us_to_us,
    parse_month,
)
from aperiodic_pipelines.sources.config import SourceConfig
from aperiodic_pipelines.sources.download import Download, Downloader, parse_checksum_sidecar, scratch_dir
from aperiodic_pipelines.sources.symbols import to_native

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
) -> SourceResult:
    """Download (or reuse from cache), verify and convert one month of binance-futures trades to `dest`."""
    parse_month(month)
    native = to_native(EXCHANGE, symbol)
    dataset = config.binance_dataset
    if dataset not in DATASETS:
        raise ValueError(f"binance dataset must be one of {DATASETS}, got {dataset!r}")
    downloader = downloader or Downloader.from_config(config)
    base = config.binance_url.rstrip("/")

    try:
        downloads = [_fetch_checked(downloader, base, archive_path(native, dataset, month))]
        outside_month = "error"  # a monthly file holds only its month
    except NotPublishedError as monthly_missing:
        downloads = []
        for day in days_of_month(month):
            try:
                downloads.append(_fetch_checked(downloader, base, archive_path(native, dataset, day)))
            except NotPublishedError as daily_missing:
                raise NotPublishedError(
                    f"{EXCHANGE} {native} {dataset} {month} is not published (yet): {monthly_missing}; "
                    f"and the daily archive for {day}: {daily_missing}"
                ) from None
        outside_month = "trim"  # daily files may spill over the month's edges

    try:
        stats = convert_archives([d.path for d in downloads], month, dest, dataset=dataset, outside_month=outside_month)
    except CorruptArchiveError:
        # The archive matched its checksum yet does not decompress or parse: nothing it fed may stay cached.
        for download in downloads:
            downloader.evict(str(download.path.relative_to(downloader.cache_dir)))
        raise
    return SourceResult(
        exchange=EXCHANGE,
        symbol=symbol,
        native_symbol=native,
        month=month,
        path=dest,
        trade_count=stats.trade_count,
        duplicates_dropped=stats.duplicates_dropped,
        id_gaps=stats.id_gaps,
        has_arrival_times=False,
        dataset=dataset,
        objects=[SourceObject(location=d.url, size=d.size, sha256=d.sha256) for d in downloads],
    )


def _fetch_checked(downloader: Downloader, base: str, path: str) -> Download:
    """The archive, verified against its CHECKSUM sidecar (fetched every time, so a changed upstream is seen)."""
    url = f"{base}/{path}"
    filename = path.rsplit("/", 1)[-1]
    expected = parse_checksum_sidecar(downloader.fetch_text(url + ".CHECKSUM"), filename=filename, url=url + ".CHECKSUM")
    # Only a cheap structural check before caching: the sha256 already matched the published one, and member
    # CRCs are checked while extracting, so a full CRC pass here would decompress everything twice.
    return downloader.fetch(
        url, f"{EXCHANGE}/{path}", expected_sha256=expected, verify=lambda p: _single_member(p, name=filename)
    )


def _single_member(path: Path, *, name: str) -> zipfile.ZipInfo:
    try:
        with zipfile.ZipFile(path) as archive:
            members = [m for m in archive.infolist() if not m.is_dir()]
    except (zipfile.BadZipFile, OSError) as exc:
        raise CorruptArchiveError(f"{name} is not a readable zip archive: {exc}") from None
    if len(members) != 1:
        raise CorruptArchiveError(f"{name}: expected one CSV inside, found {[m.filename for m in members]}")
    return members[0]


def convert_archives(
    zip_paths: list[Path], month: str, dest: Path, *, dataset: str = "aggTrades", outside_month: str = "error"
) -> CanonicalStats:
    """Local Binance archives (one monthly, or the month's dailies with `outside_month="trim"`) → canonical
    trades at `dest`. Each CSV is extracted to a scratch directory next to `dest` and streamed from there."""
    dest = Path(dest)
    with scratch_dir(dest.parent) as work:
        files = [_extract(Path(path), dataset, work) for path in zip_paths]
        return build_canonical_month(files, month, dest, outside_month=outside_month)


def _extract(zip_path: Path, dataset: str, work: Path) -> TradeFile:
    name = zip_path.name
    member = _single_member(zip_path, name=name)
    csv_path = work / Path(member.filename).name
    try:
        with zipfile.ZipFile(zip_path) as archive, archive.open(member) as src, open(csv_path, "wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise CorruptArchiveError(f"{name}: corrupt archive ({exc})") from None
    return TradeFile(origin=name, frame=scan_binance_csv(csv_path, dataset, origin=name))


def scan_binance_csv(csv_path: Path, dataset: str, *, origin: str) -> pl.LazyFrame:
    """Lazy canonical frame of one extracted Binance CSV; detects the optional header row of newer files."""
    schema = COLUMNS[dataset]
    with open(csv_path, "rb") as handle:
        first_line = handle.readline().decode("utf-8", errors="replace").strip().lstrip("\ufeff")
    fields = first_line.split(",")
    has_header = bool(first_line) and not (first_line[0].isdigit() or first_line[0] == "-")
    if has_header and [f.strip() for f in fields] != list(schema):
        raise CorruptArchiveError(f"{origin}: unexpected header {first_line!r}, expected {','.join(schema)}")
    if first_line and not has_header and len(fields) != len(schema):
        raise CorruptArchiveError(
            f"{origin}: malformed row {first_line!r}: {len(fields)} fields, expected {len(schema)} ({dataset})"
        )
    trade_id, quantity, time = _KEY_COLUMNS[dataset]
    return pl.scan_csv(
        csv_path,
        has_header=False,
        skip_rows=1 if has_header else 0,
        schema=schema,
        raise_if_empty=False,
    ).select(
        ts_exchange=ms_or_us_to_us(pl.col(time)),
        ts_arrival=pl.lit(None, dtype=pl.Int64),
        trade_id=pl.col(trade_id),
        price=pl.col("price"),
        qty=pl.col(quantity),
        is_buy=~pl.col("is_buyer_maker"),  # buyer was the maker → the taker sold
    )
