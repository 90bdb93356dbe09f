"""Tardis-format trade CSVs → canonical trades with arrival times (spec §1; the `true` variant's main input).

Format: gzip CSV `exchange,symbol,timestamp,local_timestamp,id,side,price,amount`, times in µs, one file per
UTC day of `local_timestamp`. Layout under `config.tardis_url` (a local directory or an http(s) base):
`{base}/{tardis_exchange}/trades/{YYYY-MM-DD}_{SYMBOL}.csv.gz`, where `tardis_exchange` is Tardis's id of
the exchange (`TARDIS_EXCHANGES`) and SYMBOL the native id. Because files split by arrival time, a month of
exchange time is read from the day before the month through the first day of the next month and trimmed
by `ts_exchange`; those two edge files are optional, every day inside the month is required.
`ts_arrival` = `local_timestamp`. OKX amounts are contracts here too.
"""

from __future__ import annotations

import gzip
import shutil
import zlib
from datetime import date, timedelta
from pathlib import Path

import polars as pl

from aperiodic_pipelines.errors import CorruptArchiveError, NotPublishedError, SymbolError
from aperiodic_pipelines.hashing import sha256_file
from aperiodic_pipelines.sources import okx
from aperiodic_pipelines.sources.base import SourceObject, SourceResult
from aperiodic_pipelines.sources.canonical import TradeFile, build_canonical_month, days_of_month, parse_month
from aperiodic_pipelines.sources.config import SourceConfig
from aperiodic_pipelines.sources.download import Downloader, scratch_dir
from aperiodic_pipelines.sources.symbols import to_native

TARDIS_EXCHANGES = {"binance-futures": "binance-futures", "okx-perps": "okex-swap", "hyperliquid-perps": "hyperliquid"}
COLUMNS: dict[str, pl.DataType] = {
    "exchange": pl.String(),
    "symbol": pl.String(),
    "timestamp": pl.Int64(),
    "local_timestamp": pl.Int64(),
    "id": pl.String(),  # not numeric on every exchange: checked before the cast
    "side": pl.String(),
    "price": pl.Float64(),
    "amount": pl.Float64(),
}


def tardis_exchange(exchange: str) -> str:
    try:
        return TARDIS_EXCHANGES[exchange]
    except KeyError:
        raise SymbolError(f"no Tardis exchange id for {exchange!r} (known: {', '.join(TARDIS_EXCHANGES)})") from None


def file_path(exchange: str, native_symbol: str, day: str) -> str:
    """Path of one day's file below the Tardis base."""
    return f"{tardis_exchange(exchange)}/trades/{day}_{native_symbol}.csv.gz"


def file_days(month: str) -> tuple[list[str], list[str]]:
    """(required days, optional edge days) whose files can hold trades of the month's exchange time."""
    days = days_of_month(month)
    first = date.fromisoformat(days[0])
    last = date.fromisoformat(days[-1])
    return days, [f"{first - timedelta(days=1)}", f"{last + timedelta(days=1)}"]


def fetch_month(
    symbol: str,
    month: str,
    *,
    dest: Path,
    config: SourceConfig,
    exchange: str,
    downloader: Downloader | None = None,
) -> SourceResult:
    """Read one month of Tardis-format trades of `exchange`/`symbol` (Atlas) and write canonical trades to `dest`."""
    parse_month(month)
    if not config.tardis_url:
        raise ValueError("config.tardis_url (APERIODIC_TARDIS_URL) is not set: no Tardis files to read")
    native = to_native(exchange, symbol)
    required, optional = file_days(month)
    if exchange == "okx-perps":
        for day in [*required, *optional]:
            okx.contract_spec(native, day)
    base = config.tardis_url.rstrip("/")
    remote = base.startswith(("http://", "https://"))
    downloader = (downloader or Downloader.from_config(config)) if remote else None
    dest = Path(dest)
    objects: list[SourceObject] = []
    files: list[TradeFile] = []
    with scratch_dir(dest.parent) as work:
        for day in sorted([*required, *optional]):
            path = file_path(exchange, native, day)
            name = path.rsplit("/", 1)[-1]
            try:
                if downloader is not None:
                    got = downloader.fetch(
                        f"{base}/{path}", f"tardis/{path}", verify=lambda p, n=name: _check_gzip(p, name=n)
                    )
                    local, location, size, sha = got.path, got.url, got.size, got.sha256
                else:
                    local = Path(base) / path
                    if not local.is_file():
                        raise NotPublishedError(f"not published (yet): {local} (no such Tardis file)")
                    size, sha = sha256_file(local)
                    location = str(local.resolve())
            except NotPublishedError:
                if day in optional:
                    continue  # an edge file only adds the few trades that arrived across midnight
                raise
            csv_path = work / name.removesuffix(".gz")
            _gunzip(local, csv_path, name=name)
            files.append(TradeFile(origin=name, frame=scan_tardis_csv(csv_path, exchange, native, day, origin=name)))
            objects.append(SourceObject(location=location, size=size, sha256=sha))
        stats = build_canonical_month(files, month, dest, outside_month="trim")
    return SourceResult(
        exchange=exchange,
        symbol=symbol,
        native_symbol=native,
        month=month,
        path=dest,
        trade_count=stats.trade_count,
        duplicates_dropped=stats.duplicates_dropped,
        id_gaps=stats.id_gaps,
        has_arrival_times=True,
        dataset="tardis",
        objects=objects,
    )


def _check_gzip(path: Path, *, name: str) -> None:
    try:
        with gzip.open(path, "rb") as handle:
            while handle.read(1 << 20):
                pass
    except (OSError, EOFError, zlib.error) as exc:
        raise CorruptArchiveError(f"{name} is not a readable gzip file: {exc}") from None


def _gunzip(source: Path, target: Path, *, name: str) -> None:
    try:
        with gzip.open(source, "rb") as src, open(target, "wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)
    except (OSError, EOFError, zlib.error) as exc:
        raise CorruptArchiveError(f"{name} is not a readable gzip file: {exc}") from None


def scan_tardis_csv(csv_path: Path, exchange: str, native: str, day: str, *, origin: str) -> pl.LazyFrame:
    """Lazy canonical frame of one decompressed Tardis trades CSV."""
    with open(csv_path, "rb") as handle:
        header = handle.readline().decode("utf-8", errors="replace").strip().lstrip("\ufeff")
    if header.split(",") != list(COLUMNS):
        raise CorruptArchiveError(f"{origin}: unexpected header {header!r}, expected {','.join(COLUMNS)}")
    frame = pl.scan_csv(csv_path, has_header=False, skip_rows=1, schema=COLUMNS, raise_if_empty=False)
    non_numeric = frame.filter(~pl.col("id").str.contains(r"^\d+$").fill_null(False)).select("id").head(3).collect()
    if non_numeric.height:
        raise CorruptArchiveError(
            f"{origin}: trade ids must be numeric for canonical trades, found {non_numeric['id'].to_list()}"
        )
    other = frame.filter(pl.col("symbol") != native).select("symbol").head(1).collect()
    if other.height:
        raise CorruptArchiveError(f"{origin}: rows of symbol {other.item()!r} in a file of {native}")
    side = pl.col("side")
    qty = pl.col("amount")
    if exchange == "okx-perps":
        qty = okx.base_quantity(qty, pl.col("price"), native, day)
    return frame.select(
        ts_exchange=pl.col("timestamp"),
        ts_arrival=pl.col("local_timestamp"),
        trade_id=pl.col("id").cast(pl.Int64),
        price=pl.col("price"),
        qty=qty,
        is_buy=pl.when(side == "buy").then(True).when(side == "sell").then(False),  # "unknown" → rejected
    )
