"""Tardis-format trade CSVs → canonical trades with arrival times (spec §1; the `true` variant's main input).

Format: gzip CSV `exchange,symbol,timestamp,local_timestamp,id,side,price,amount`, times in µs, one file per
UTC day of `local_timestamp`; a day without trades is an empty gzip file (no header, no rows). Tardis
upper-cases symbols, in file names and in the `symbol` column (Hyperliquid `kPEPE` is `KPEPE`, HIP-3
`xyz:AAPL` is `XYZ:AAPL`); they are mapped back to the native id. `config.tardis_url` is either

- a local directory of files saved by the official clients (tardis-dev for Python or Node):
  `{dir}/{exchange}_trades_{YYYY-MM-DD}_{SYMBOL}.csv.gz`, or
- an http(s) base in the datasets API layout: `{base}/v1/{exchange}/trades/{YYYY}/{MM}/{DD}/{SYMBOL}.csv.gz`,
  sent `Authorization: Bearer <APERIODIC_TARDIS_API_KEY>` when that is set (never logged or recorded),

with SYMBOL upper-cased and `:` and `/` replaced by `-`. Because files split by arrival time, a month of
exchange time is read from the day before the month through the first day of the next month and trimmed by
`ts_exchange`; those two edge files are optional. `ts_arrival` = `local_timestamp`. OKX amounts are contracts.
"""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

import polars as pl

from aperiodic_pipelines.domain.errors import CorruptArchiveError, NotPublishedError, SymbolError
from aperiodic_pipelines.domain.months import check_day, day_bounds_us, month_of_day
from aperiodic_pipelines.domain.settings import HttpSettings
from aperiodic_pipelines.domain.symbols import to_native
from aperiodic_pipelines.hashing import sha256_file
from aperiodic_pipelines.sources import okx
from aperiodic_pipelines.sources.archive_stream import first_line, gzip_csv, lazy_csv
from aperiodic_pipelines.sources.base import SourceObject, SourceResult
from aperiodic_pipelines.sources.canonical import (
    SourceIdentity,
    TradeFile,
    days_of_month,
    month_bounds_us,
    parse_month,
    write_source_result,
)
from aperiodic_pipelines.sources.config import SourceConfig
from aperiodic_pipelines.sources.daily import DayNotPublishedError, shift_day
from aperiodic_pipelines.sources.days import fetch_days
from aperiodic_pipelines.sources.download import Downloader
from aperiodic_pipelines.sources.missing import check_missing_days
from aperiodic_pipelines.trades import CANONICAL_SCHEMA

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
_GZIP_MAGIC = b"\x1f\x8b"


def tardis_exchange(exchange: str) -> str:
    try:
        return TARDIS_EXCHANGES[exchange]
    except KeyError:
        raise SymbolError(f"no Tardis exchange id for {exchange!r} (known: {', '.join(TARDIS_EXCHANGES)})") from None


def tardis_symbol(native_symbol: str) -> str:
    """The symbol as Tardis writes it in its `symbol` column: upper case (kPEPE → KPEPE, xyz:AAPL → XYZ:AAPL)."""
    return native_symbol.upper()


def file_symbol(native_symbol: str) -> str:
    """The symbol in Tardis file names and URLs: upper case, `:` and `/` replaced by `-` (xyz:AAPL → XYZ-AAPL)."""
    return tardis_symbol(native_symbol).replace(":", "-").replace("/", "-")


def download_file_name(exchange: str, native_symbol: str, day: str) -> str:
    """Name the official clients save a day's trades under: `{exchange}_trades_{YYYY-MM-DD}_{SYMBOL}.csv.gz`."""
    return f"{tardis_exchange(exchange)}_trades_{day}_{file_symbol(native_symbol)}.csv.gz"


def api_path(exchange: str, native_symbol: str, day: str) -> str:
    """Path of a day's trades below the datasets API base: `v1/{exchange}/trades/{YYYY}/{MM}/{DD}/{SYMBOL}.csv.gz`."""
    year, month, dom = day.split("-")
    return f"v1/{tardis_exchange(exchange)}/trades/{year}/{month}/{dom}/{file_symbol(native_symbol)}.csv.gz"


def file_days(month: str) -> tuple[list[str], list[str]]:
    """(required days, optional edge days) whose files can hold trades of the month's exchange time."""
    days = days_of_month(month)
    first = date.fromisoformat(days[0])
    last = date.fromisoformat(days[-1])
    return days, [f"{first - timedelta(days=1)}", f"{last + timedelta(days=1)}"]


def _fetch_once_each(
    files_of: _TardisDays, client: Downloader | None, days: list[str], optional: list[str]
) -> tuple[list[tuple[str, tuple[Path, SourceObject]]], list[str]]:
    """Each day's file, asked for once (a local directory, or a first look without 404 patience):
    (found, required days missing)."""
    found, missing = [], []
    for day in days:
        try:
            found.append((day, files_of.fetch(client, day)))
        except NotPublishedError:
            if day not in optional:
                missing.append(day)
    return found, missing


def _identity(exchange: str, symbol: str, config: SourceConfig, start_us: int, end_us: int) -> SourceIdentity:
    """Checked before any read: the Tardis location is set, the symbol and exchange map, OKX contract values cover
    [start_us, end_us)."""
    if not config.tardis_url:
        raise ValueError("config.tardis_url (APERIODIC_TARDIS_URL) is not set: no Tardis files to read")
    native = to_native(exchange, symbol)
    tardis_exchange(exchange)
    if exchange == "okx-perps":
        okx.check_contract_coverage(native, start_us, end_us)
    return SourceIdentity(exchange, symbol, native, "tardis", has_arrival_times=True)


def fetch_month(
    symbol: str,
    month: str,
    *,
    dest: Path,
    config: SourceConfig,
    exchange: str,
    downloader: Downloader | None = None,
    http: HttpSettings | None = None,
) -> SourceResult:
    """Read one month of Tardis-format trades of `exchange`/`symbol` (Atlas) and write canonical trades to `dest`."""
    parse_month(month)
    identity = _identity(exchange, symbol, config, *month_bounds_us(month))
    native = identity.native_symbol
    required, optional = file_days(month)
    files_of = _TardisDays(exchange, native, config, downloader, http)

    # An edge day's file only adds the few trades that arrived across midnight: optional, never waited for.
    days = sorted([*required, *optional])
    if files_of.downloader is not None:
        found, missing_days = fetch_days(
            days, files_of.fetch, files_of.downloader, required=lambda day: day not in optional
        )
    else:
        found, missing_days = _fetch_once_each(files_of, None, days, optional)

    def read_found() -> list[TradeFile]:
        files = [read_file(path, exchange, native, month, name=files_of.name(day)) for day, (path, _obj) in found]
        check_missing_days(
            f"Tardis {tardis_exchange(exchange)} {file_symbol(native)} {month}", missing_days,
            published=len(files), config=config, detail="the day files of",
            missing_objects=[files_of.name(day) for day in missing_days],
        )
        return files

    return write_source_result(
        identity, read_found, dest=Path(dest), month=month, objects=[obj for _day, (_path, obj) in found],
        evict=lambda: files_of.evict([day for day, _ in found]), missing_days=missing_days,
    )


class _TardisDays:
    """Where a day's Tardis file is (a local directory of client downloads, or the datasets API) and how to get it."""

    def __init__(
        self, exchange: str, native: str, config: SourceConfig, downloader: Downloader | None, http: HttpSettings | None
    ) -> None:
        self.exchange, self.native = exchange, native
        base = config.tardis_url.rstrip("/")
        self.remote = base.startswith(("http://", "https://"))
        if self.remote:
            base = base.removesuffix("/v1")  # accept the base with or without the API version
            downloader = downloader or Downloader.from_config(config, http)
        self.base = base
        self.downloader = downloader if self.remote else None  # a local directory is read without HTTP
        self.headers = (
            {"Authorization": f"Bearer {config.tardis_api_key}"} if self.remote and config.tardis_api_key else None
        )

    def name(self, day: str) -> str:
        if self.remote:
            return f"{tardis_exchange(self.exchange)}/{api_path(self.exchange, self.native, day).split('/', 2)[2]}"
        return download_file_name(self.exchange, self.native, day)

    def fetch(self, client: Downloader | None, day: str) -> tuple[Path, SourceObject]:
        name = self.name(day)
        if client is not None:
            path = api_path(self.exchange, self.native, day)
            got = client.fetch(
                f"{self.base}/{path}", f"tardis/{path}", verify=lambda p: _check_gzip_magic(p, name=name),
                headers=self.headers,
            )
            return got.path, SourceObject(location=got.url, size=got.size, sha256=got.sha256)
        local = Path(self.base) / name
        if not local.is_file():
            raise NotPublishedError(f"not published (yet): {local} (no such Tardis file)")
        size, sha = sha256_file(local)
        return local, SourceObject(location=str(local.resolve()), size=size, sha256=sha)

    def exists(self, day: str) -> bool:
        if self.remote:
            assert self.downloader is not None
            return self.downloader.exists(f"{self.base}/{api_path(self.exchange, self.native, day)}", headers=self.headers)
        return (Path(self.base) / self.name(day)).is_file()

    def cache_key(self, day: str) -> str:
        return f"tardis/{api_path(self.exchange, self.native, day)}"

    def evict(self, days: list[str]) -> None:
        """Forget the cached files of `days` (a local directory has no cache)."""
        if self.downloader is not None:
            for day in days:
                self.downloader.evict(self.cache_key(day))


def day_files(day: str) -> tuple[list[str], list[str]]:
    """(required, optional) file days for the exchange-time UTC `day`: files split by arrival time, so the trades
    of day d are in the files of d and d+1 (late arrivals) and, with a skewed clock, d−1. d+1 is required (the day
    is not complete before its late arrivals are out); d−1 is required inside the month and optional on its 1st,
    exactly as `fetch_month` reads them, so the day's rows are the month file's rows of that day."""
    before, after = shift_day(day, -1), shift_day(day, 1)
    if before[:7] == day[:7]:
        return [before, day, after], []
    return [day, after], [before]


def fetch_day(
    symbol: str,
    day: str,
    *,
    dest: Path,
    config: SourceConfig,
    exchange: str,
    downloader: Downloader | None = None,
    http: HttpSettings | None = None,
) -> SourceResult:
    """One UTC day (exchange time) of Tardis-format trades of `exchange`/`symbol` to `dest` (a parquet file), with
    arrival times: the files of `day_files(day)` trimmed by `ts_exchange`. Not out yet: `DayNotPublishedError` at
    once (no 404 patience), `later_published` from one probe of the file after the last one needed."""
    check_day(day)
    span_us = day_bounds_us(day)
    identity = _identity(exchange, symbol, config, *span_us)
    native = identity.native_symbol
    required, optional = day_files(day)
    files_of = _TardisDays(exchange, native, config, downloader, http)
    client = files_of.downloader.impatient() if files_of.downloader is not None else None
    found, missing = _fetch_once_each(files_of, client, sorted([*required, *optional]), optional)
    if missing:
        raise DayNotPublishedError(
            f"Tardis {tardis_exchange(exchange)} {file_symbol(native)}", day, [files_of.name(d) for d in missing],
            later_published=files_of.exists(shift_day(required[-1], 1)),
        )
    month = month_of_day(day)
    return write_source_result(
        identity,
        lambda: [
            read_file(path, exchange, native, month, name=files_of.name(file_day), span_us=span_us)
            for file_day, (path, _obj) in found
        ],
        dest=Path(dest), month=month, day=day, objects=[obj for _day, (_path, obj) in found],
        evict=lambda: files_of.evict([file_day for file_day, _ in found]),
    )


def _check_gzip_magic(path: Path, *, name: str) -> None:
    """Cheap check before caching (the data is checked, CRC included, when it is streamed)."""
    with open(path, "rb") as handle:
        head = handle.read(2)
    if head and head != _GZIP_MAGIC:
        raise CorruptArchiveError(f"{name} is not a gzip file (starts with {head!r})")


def read_file(
    path: Path, exchange: str, native: str, month: str, *, name: str, span_us: tuple[int, int] | None = None
) -> TradeFile:
    """Lazy canonical frame of one Tardis trades file; an empty file (no header, no rows) is a day without trades."""
    source = gzip_csv(path, name=name)
    header = first_line(source).strip()
    if not header:
        return TradeFile(origin=name, frame=pl.LazyFrame(schema=CANONICAL_SCHEMA))
    if header.split(",") != list(COLUMNS):
        raise CorruptArchiveError(f"{name}: unexpected header {header!r}, expected {','.join(COLUMNS)}")
    expected_symbol = tardis_symbol(native)
    start_us, end_us = span_us or month_bounds_us(month)  # where a missing OKX contract value is an error

    def to_canonical(frame: pl.DataFrame, line: int) -> pl.DataFrame:
        ids = frame.get_column("id").cast(pl.Int64, strict=False)
        bad_ids = ids.is_null() | ~frame.get_column("id").str.contains(r"^\d+$")
        if bad_ids.any():
            shown = frame.filter(bad_ids).get_column("id").head(3).to_list()
            first = int(bad_ids.arg_true()[0])
            raise CorruptArchiveError(
                f"{name}: line {line + first}: trade ids must be numeric for canonical trades, found {shown}"
            )
        other = frame.get_column("symbol") != expected_symbol
        if other.any():
            first = int(other.arg_true()[0])
            raise CorruptArchiveError(
                f"{name}: line {line + first}: rows of symbol {frame['symbol'][first]!r} in a file of "
                f"{expected_symbol} ({native})"
            )
        frame = frame.with_columns(ts_exchange=pl.col("timestamp"), trade_id=ids, size=pl.col("amount"))
        if exchange == "okx-perps":
            frame = okx.base_quantity(frame, native, origin=name, line=line, start_us=start_us, end_us=end_us)
        else:
            frame = frame.with_columns(qty=pl.col("amount"))
        side = pl.col("side")
        return frame.select(
            "ts_exchange",
            ts_arrival=pl.col("local_timestamp"),
            trade_id=pl.col("trade_id"),
            price=pl.col("price"),
            qty=pl.col("qty"),
            is_buy=pl.when(side == "buy").then(True).when(side == "sell").then(False),  # "unknown" → rejected
        )

    frame = lazy_csv(
        source, schema=COLUMNS, skip_first_line=True, convert=to_canonical, out_schema=CANONICAL_SCHEMA,
        required=("symbol", "timestamp", "local_timestamp", "id", "side", "price", "amount"),
    )
    return TradeFile(origin=name, frame=frame)
