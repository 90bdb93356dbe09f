"""okx-perps trade archives (OKX "traderecords") → canonical trades (spec §1).

Layout: `{base}/trades/daily/{YYYYMMDD}/{INSTID}-trades-{YYYY-MM-DD}.zip`. File days are UTC+8: the file dated
D covers [D−1 16:00 UTC, D 16:00 UTC), so a UTC month needs the files dated from its 1st to the 1st of the next
month, trimmed by time. Columns are mapped by header name (current English header or the legacy bilingual
one). `side` is the taker side; `created_time` is ms; `size` counts contracts (see `CONTRACT_VALUES`).
No checksum is published: the sha256 of what was downloaded is recorded, and a HEAD request (ETag,
Last-Modified, Content-Length) decides whether a cached file is still current.
"""

from __future__ import annotations

import shutil
import zipfile
from datetime import date, timedelta
from pathlib import Path

import polars as pl

from aperiodic_pipelines.errors import CorruptArchiveError, SymbolError
from aperiodic_pipelines.sources.base import SourceObject, SourceResult
from aperiodic_pipelines.sources.canonical import (
    TradeFile,
    build_canonical_month,
    ms_or_us_to_us,
    next_month,
    parse_month,
)
from aperiodic_pipelines.sources.config import SourceConfig
from aperiodic_pipelines.sources.download import Download, Downloader, check_zip, scratch_dir
from aperiodic_pipelines.sources.symbols import to_native

EXCHANGE = "okx-perps"

# Contract value per instrument, with the date (UTC) from which it applies, newest last.
# linear: base units per contract; inverse: quote (USD) per contract, so base = size * value / price.
CONTRACT_VALUES: dict[str, list[tuple[str, float, str]]] = {
    "BTC-USDT-SWAP": [("2019-12-01", 0.01, "linear")],
    "ETH-USDT-SWAP": [("2019-12-01", 0.1, "linear")],
    "SOL-USDT-SWAP": [("2020-12-01", 1.0, "linear")],
    "BTC-USD-SWAP": [("2018-12-01", 100.0, "inverse")],
    "ETH-USD-SWAP": [("2018-12-01", 10.0, "inverse")],
}

CURRENT_COLUMNS = ["instrument_name", "trade_id", "side", "price", "size", "created_time"]
LEGACY_HEADER = "trade_id/交易id,side/交易方向,size/数量,price/价格,created_time/成交时间"
_TYPES: dict[str, pl.DataType] = {
    "instrument_name": pl.String(),
    "trade_id": pl.Int64(),
    "side": pl.String(),
    "price": pl.Float64(),
    "size": pl.Float64(),
    "created_time": pl.Int64(),
}
_REQUIRED = ("trade_id", "side", "price", "size", "created_time")


def contract_spec(instid: str, day: str) -> tuple[float, str]:
    """(contract value, "linear" | "inverse") of `instid` on `day` (YYYY-MM-DD)."""
    entries = CONTRACT_VALUES.get(instid)
    if not entries:
        raise SymbolError(
            f"{EXCHANGE} instrument {instid!r} has no contract value in okx.CONTRACT_VALUES "
            f"(known: {', '.join(sorted(CONTRACT_VALUES))}); add it before converting contracts to base units"
        )
    applicable = [entry for entry in entries if entry[0] <= day]
    if not applicable:
        raise SymbolError(f"{EXCHANGE} {instid}: no contract value effective on {day} (first: {entries[0][0]})")
    _, value, kind = applicable[-1]
    return value, kind


def base_quantity(size: pl.Expr, price: pl.Expr, instid: str, day: str) -> pl.Expr:
    """Contracts → base units for `instid` on `day`."""
    value, kind = contract_spec(instid, day)
    if kind == "linear":
        # Contract values are decimal; rounding removes binary noise like 0.30000000000000004 contracts.
        return (size * value).round(12)
    return size * value / price


def file_dates(month: str) -> list[date]:
    """The UTC+8 file dates covering a UTC month: its 1st through the 1st of the next month."""
    year, mon = parse_month(month)
    first = date(year, mon, 1)
    ny, nm = parse_month(next_month(month))
    last = date(ny, nm, 1)
    return [first + timedelta(days=i) for i in range((last - first).days + 1)]


def archive_path(instid: str, day: date) -> str:
    return f"trades/daily/{day:%Y%m%d}/{instid}-trades-{day:%Y-%m-%d}.zip"


def fetch_month(
    symbol: str,
    month: str,
    *,
    dest: Path,
    config: SourceConfig,
    downloader: Downloader | None = None,
) -> SourceResult:
    """Download (or reuse from cache) and convert one UTC month of okx-perps trades to `dest`."""
    parse_month(month)
    instid = to_native(EXCHANGE, symbol)
    dates = file_dates(month)
    for day in dates:  # fail before downloading anything when the table lacks the instrument
        contract_spec(instid, f"{day:%Y-%m-%d}")
    downloader = downloader or Downloader.from_config(config)
    base = config.okx_url.rstrip("/")
    downloads: list[Download] = []
    for day in dates:
        path = archive_path(instid, day)
        name = path.rsplit("/", 1)[-1]
        downloads.append(
            downloader.fetch(f"{base}/{path}", f"{EXCHANGE}/{path}", verify=lambda p, n=name: check_zip(p, name=n))
        )
    dest = Path(dest)
    with scratch_dir(dest.parent) as work:
        files = [
            _read_archive(d, instid, f"{day:%Y-%m-%d}", work) for d, day in zip(downloads, dates, strict=True)
        ]
        stats = build_canonical_month(files, month, dest, outside_month="trim")
    return SourceResult(
        exchange=EXCHANGE,
        symbol=symbol,
        native_symbol=instid,
        month=month,
        path=dest,
        trade_count=stats.trade_count,
        duplicates_dropped=stats.duplicates_dropped,
        id_gaps=stats.id_gaps,
        has_arrival_times=False,
        dataset="trades",
        objects=[SourceObject(location=d.url, size=d.size, sha256=d.sha256) for d in downloads],
    )


def _read_archive(download: Download, instid: str, day: str, work: Path) -> TradeFile:
    name = download.url.rsplit("/", 1)[-1]
    try:
        with zipfile.ZipFile(download.path) as archive:
            members = [m for m in archive.infolist() if not m.is_dir()]
            if len(members) != 1:
                raise CorruptArchiveError(f"{name}: expected one CSV inside, found {[m.filename for m in members]}")
            csv_path = work / Path(members[0].filename).name
            with archive.open(members[0]) as src, open(csv_path, "wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise CorruptArchiveError(f"{name}: corrupt archive ({exc})") from None
    return TradeFile(origin=name, frame=scan_okx_csv(csv_path, instid, day, origin=name))


def normalise_header(header_line: str) -> list[str]:
    """Header names → canonical OKX names: `size/数量` → `size`, BOM and case dropped."""
    return [field.split("/", 1)[0].strip().lower() for field in header_line.lstrip("\ufeff").strip().split(",")]


def scan_okx_csv(csv_path: Path, instid: str, day: str, *, origin: str) -> pl.LazyFrame:
    """Lazy canonical frame of one extracted OKX trades CSV (current or legacy header)."""
    with open(csv_path, "rb") as handle:
        header_line = handle.readline().decode("utf-8", errors="replace")
    names = normalise_header(header_line)
    missing = [c for c in _REQUIRED if c not in names]
    if missing or len(set(names)) != len(names):
        raise CorruptArchiveError(f"{origin}: unexpected header {header_line.strip()!r} (missing {missing})")
    schema = {n: _TYPES.get(n, pl.String()) for n in names}
    side = pl.col("side").str.to_lowercase()
    frame = pl.scan_csv(csv_path, has_header=False, skip_rows=1, schema=schema, raise_if_empty=False)
    if "instrument_name" in names:
        # A file of another instrument is a wrong file, not a source of trades: null is_buy → rejected below.
        side = pl.when(pl.col("instrument_name") == instid).then(side)
    return frame.select(
        ts_exchange=ms_or_us_to_us(pl.col("created_time")),
        ts_arrival=pl.lit(None, dtype=pl.Int64),
        trade_id=pl.col("trade_id"),
        price=pl.col("price"),
        qty=base_quantity(pl.col("size"), pl.col("price"), instid, day),
        is_buy=pl.when(side == "buy").then(True).when(side == "sell").then(False),  # else null → rejected
    )
