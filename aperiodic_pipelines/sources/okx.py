"""okx-perps trade archives (OKX "traderecords") → canonical trades (spec §1).

Layout: `{base}/trades/daily/{YYYYMMDD}/{INSTID}-trades-{YYYY-MM-DD}.zip`. File days are UTC+8: the file dated
D covers [D−1 16:00 UTC, D 16:00 UTC), so a UTC month needs the files dated from its 1st to the 1st of the next
month, trimmed by time. Columns are mapped by header name (current English header or the legacy bilingual
one); files before 2022 may have no header at all, in the legacy column order. `side` is the taker side;
`created_time` is ms; `size` counts contracts, converted per trade by its exchange time with the contract
table shipped in `tables/okx_contracts.csv`. No checksum is published: the sha256 of what was downloaded is
recorded, and a HEAD request (ETag, Last-Modified, Content-Length) decides whether a cached file is current.
"""

from __future__ import annotations

import csv
import functools
import io
from dataclasses import dataclass
from datetime import date, timedelta
from importlib import resources
from pathlib import Path

import numpy as np
import polars as pl

from aperiodic_pipelines.domain.errors import (
    ContractValueError,
    CorruptArchiveError,
    NotPublishedError,
    SymbolError,
)
from aperiodic_pipelines.domain.months import check_day, day_bounds_us, month_of_day
from aperiodic_pipelines.domain.settings import HttpSettings
from aperiodic_pipelines.domain.symbols import to_native
from aperiodic_pipelines.sources.archive_stream import check_zip_structure, first_line, lazy_csv, zip_csv
from aperiodic_pipelines.sources.base import SourceResult
from aperiodic_pipelines.sources.canonical import (
    SourceIdentity,
    TradeFile,
    format_us,
    month_bounds_us,
    ms_or_us_to_us,
    next_month,
    parse_month,
    write_source_result,
)
from aperiodic_pipelines.sources.config import SourceConfig
from aperiodic_pipelines.sources.daily import DayNotPublishedError
from aperiodic_pipelines.sources.days import fetch_days
from aperiodic_pipelines.sources.download import Download, Downloader
from aperiodic_pipelines.sources.missing import check_missing_days
from aperiodic_pipelines.trades import CANONICAL_SCHEMA

EXCHANGE = "okx-perps"
CONTRACT_TABLE = "tables/okx_contracts.csv"
HOUR_US = 3_600_000_000

CURRENT_COLUMNS = ["instrument_name", "trade_id", "side", "price", "size", "created_time"]
LEGACY_COLUMNS = ["trade_id", "side", "size", "price", "created_time"]
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


# --- contract values ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ContractValue:
    """One row of the contract table: `value` applies from `effective_from_us` (µs, UTC) until the next row.
    linear: base units per contract; inverse: quote (USD) per contract, so base = size * value / price.
    Trades in [`changeover_from_us`, `effective_from_us`) fall in the exchange's changeover window and are
    refused: OKX suspended trading to re-base, and a trade there could be in either unit."""

    instrument: str
    effective_from_us: int
    changeover_from_us: int | None
    value: float
    kind: str
    source: str


@functools.cache
def contract_table() -> dict[str, tuple[ContractValue, ...]]:
    """The shipped table (`sources/tables/okx_contracts.csv`), per instrument, oldest first."""
    text = resources.files("aperiodic_pipelines.sources").joinpath(CONTRACT_TABLE).read_text(encoding="utf-8")
    table: dict[str, list[ContractValue]] = {}
    for row in csv.DictReader(io.StringIO(text)):
        entry = ContractValue(
            instrument=row["instrument"],
            effective_from_us=int(row["effective_from_us"]),
            changeover_from_us=int(row["changeover_from_us"]) if row["changeover_from_us"] else None,
            value=float(row["contract_value"]),
            kind=row["kind"],
            source=row["source"],
        )
        if entry.kind not in ("linear", "inverse") or entry.value <= 0:
            raise ValueError(f"{CONTRACT_TABLE}: bad row {row}")
        table.setdefault(entry.instrument, []).append(entry)
    return {k: tuple(sorted(v, key=lambda e: e.effective_from_us)) for k, v in table.items()}


def contract_entries(instid: str) -> tuple[ContractValue, ...]:
    """The table's rows for `instid`; `SymbolError` when the instrument is not in it."""
    entries = contract_table().get(instid)
    if not entries:
        raise SymbolError(
            f"{EXCHANGE} instrument {instid!r} has no contract value in {CONTRACT_TABLE} "
            f"(known: {', '.join(sorted(contract_table()))}); add it before converting contracts to base units"
        )
    return entries


def check_contract_coverage(instid: str, start_us: int, end_us: int) -> None:
    """Fail before any download when the table lacks `instid` or does not reach back to `start_us`."""
    entries = contract_entries(instid)
    if start_us < entries[0].effective_from_us <= end_us or end_us <= entries[0].effective_from_us:
        raise ContractValueError(
            f"{EXCHANGE} {instid}: {CONTRACT_TABLE} has no contract value before "
            f"{format_us(entries[0].effective_from_us)}, needed from {format_us(start_us)}"
        )


def contract_values(instid: str, ts_us: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per trade time: (contract value, is_linear, status) with status 0 = known, 1 = before the table,
    2 = inside a changeover window."""
    entries = contract_entries(instid)
    starts = np.array([e.effective_from_us for e in entries], dtype=np.int64)
    index = np.searchsorted(starts, ts_us, side="right") - 1
    status = np.where(index < 0, 1, 0).astype(np.int8)
    for entry in entries:
        if entry.changeover_from_us is not None:
            inside = (ts_us >= entry.changeover_from_us) & (ts_us < entry.effective_from_us)
            status[inside] = 2
    safe = np.clip(index, 0, None)
    values = np.array([e.value for e in entries])[safe]
    linear = np.array([e.kind == "linear" for e in entries])[safe]
    return values, linear, status


def contracts_to_base(
    frame: pl.DataFrame, instid: str, *, origin: str, line: int, start_us: int, end_us: int
) -> pl.Series:
    """`qty` in base units from `frame`'s `size`, `price` and `ts_exchange` (µs), each trade by its own time.

    A trade of the month [`start_us`, `end_us`) outside the table, or inside a changeover window, raises
    `ContractValueError` naming the file, the line and the trade; rows outside the month get a null
    quantity and are trimmed later."""
    ts = frame.get_column("ts_exchange").to_numpy()
    values, linear, status = contract_values(instid, ts)
    in_month = (ts >= start_us) & (ts < end_us)
    bad = np.flatnonzero((status != 0) & in_month)
    if bad.size:
        row = int(bad[0])
        why = "before the first row of the contract table" if status[row] == 1 else "inside a changeover window"
        window = next(
            (e for e in contract_entries(instid) if e.changeover_from_us is not None
             and e.changeover_from_us <= ts[row] < e.effective_from_us),
            None,
        )
        detail = (
            f" [{format_us(window.changeover_from_us)}, {format_us(window.effective_from_us)}): {window.source}"
            if window is not None and window.changeover_from_us is not None else ""
        )
        raise ContractValueError(
            f"{origin}: line {line + row}: trade_id={frame['trade_id'][row]} at {format_us(int(ts[row]))} is {why}"
            f"{detail}; {bad.size} such trade(s) in this block. Refusing to guess its contract value "
            f"({CONTRACT_TABLE})"
        )
    size = frame.get_column("size").to_numpy()
    price = frame.get_column("price").to_numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        # Contract values are decimal; rounding removes binary noise like 0.30000000000000004 contracts.
        qty = np.where(linear, np.round(size * values, 12), size * values / price)
    out = pl.Series("qty", qty, dtype=pl.Float64)
    unknown = np.flatnonzero(status != 0)  # only rows outside the month are left here: null, trimmed later
    return out.scatter(unknown, None) if unknown.size else out


def base_quantity(
    frame: pl.DataFrame, instid: str, *, origin: str, line: int, start_us: int, end_us: int
) -> pl.DataFrame:
    """`frame` with `qty` (base units) replacing contracts; see `contracts_to_base`."""
    return frame.with_columns(
        contracts_to_base(frame, instid, origin=origin, line=line, start_us=start_us, end_us=end_us)
    )


def contract_sizes(instid: str, trades: pl.DataFrame) -> pl.Series:
    """Base quantities of canonical `trades` → contracts, each by its time (for writers of OKX-format files)."""
    values, linear, status = contract_values(instid, trades.get_column("ts_exchange").to_numpy())
    if (status != 0).any():
        row = int(np.flatnonzero(status != 0)[0])
        raise ContractValueError(f"{instid}: no contract value at {format_us(int(trades['ts_exchange'][row]))}")
    qty, price = trades.get_column("qty").to_numpy(), trades.get_column("price").to_numpy()
    return pl.Series("size", np.where(linear, qty / values, qty * price / values), dtype=pl.Float64)


# --- archives -----------------------------------------------------------------------------------------------


def file_dates(month: str) -> list[date]:
    """The UTC+8 file dates covering a UTC month: its 1st through the 1st of the next month."""
    year, mon = parse_month(month)
    first = date(year, mon, 1)
    ny, nm = parse_month(next_month(month))
    last = date(ny, nm, 1)
    return [first + timedelta(days=i) for i in range((last - first).days + 1)]


def utc_days_of_file(day: date, month: str) -> list[str]:
    """UTC days of `month` that the file dated `day` (UTC+8) holds trades of: D−1 (from 16:00) and D."""
    days = [f"{day - timedelta(days=1)}", f"{day}"]
    return [d for d in days if d.startswith(month)]


def archive_path(instid: str, day: date) -> str:
    return f"trades/daily/{day:%Y%m%d}/{instid}-trades-{day:%Y-%m-%d}.zip"


def archive_name(instid: str, day: date) -> str:
    """The file name of the archive dated `day` (UTC+8), as errors name it."""
    return archive_path(instid, day).rsplit("/", 1)[-1]


def fetch_month(
    symbol: str,
    month: str,
    *,
    dest: Path,
    config: SourceConfig,
    downloader: Downloader | None = None,
    http: HttpSettings | None = None,
) -> SourceResult:
    """Download (or reuse from cache) and convert one UTC month of okx-perps trades to `dest`."""
    parse_month(month)
    identity = _identity(symbol, *month_bounds_us(month))
    instid = identity.native_symbol
    downloader = downloader or Downloader.from_config(config, http)
    base = config.okx_url.rstrip("/")

    fetched, missing_dates = fetch_days(
        file_dates(month), lambda client, day: _fetch_archive(client, base, instid, day), downloader
    )
    downloads = [download for _day, download in fetched]
    missing_days = sorted({utc_day for day in missing_dates for utc_day in utc_days_of_file(day, month)})
    check_missing_days(
        f"{EXCHANGE} {instid} {month}", missing_days, published=len(downloads), config=config,
        detail="the UTC+8 daily archives holding trades of",
        missing_objects=[archive_name(instid, day) for day in missing_dates],
    )
    return write_source_result(
        identity, lambda: [read_archive(d.path, instid, month, name=_url_name(d)) for d in downloads],
        dest=Path(dest), month=month, objects=[d.source_object() for d in downloads],
        evict=lambda: downloader.evict_downloads(downloads), missing_days=missing_days,
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
    """One UTC day of okx-perps trades to `dest` (a parquet file): the UTC+8 files dated `day` and the day after
    (file D covers [D−1 16:00, D 16:00) UTC), trimmed to the UTC day, contracts converted as for the month.
    Not out yet: `DayNotPublishedError` at once, `later_published` from one HEAD of the file after the last."""
    check_day(day)
    span_us = day_bounds_us(day)
    identity = _identity(symbol, *span_us)
    instid = identity.native_symbol
    first = date.fromisoformat(day)
    dates = [first, first + timedelta(days=1)]
    client = (downloader or Downloader.from_config(config, http)).impatient()
    base = config.okx_url.rstrip("/")

    downloads: list[Download] = []
    missing: list[date] = []
    for file_date in dates:
        try:
            downloads.append(_fetch_archive(client, base, instid, file_date))
        except NotPublishedError:
            missing.append(file_date)
    if missing:
        later = client.exists(f"{base}/{archive_path(instid, dates[-1] + timedelta(days=1))}")
        raise DayNotPublishedError(
            f"{EXCHANGE} {instid}", day, [archive_name(instid, d) for d in missing], later_published=later
        )
    month = month_of_day(day)
    return write_source_result(
        identity, lambda: [read_archive(d.path, instid, month, name=_url_name(d), span_us=span_us) for d in downloads],
        dest=Path(dest), month=month, day=day, objects=[d.source_object() for d in downloads],
        evict=lambda: client.evict_downloads(downloads),
    )


def _identity(symbol: str, start_us: int, end_us: int) -> SourceIdentity:
    """The symbol's instrument id, its contract values checked for [start_us, end_us) before any download."""
    instid = to_native(EXCHANGE, symbol)
    check_contract_coverage(instid, start_us, end_us)
    return SourceIdentity(EXCHANGE, symbol, instid, "trades")


def _fetch_archive(client: Downloader, base: str, instid: str, day: date) -> Download:
    """The archive dated `day`, cached once its zip structure reads (no checksum is published)."""
    path = archive_path(instid, day)
    name = archive_name(instid, day)
    return client.fetch(f"{base}/{path}", f"{EXCHANGE}/{path}", verify=lambda p: check_zip_structure(p, name=name))


def _url_name(download: Download) -> str:
    return download.url.rsplit("/", 1)[-1]


def normalise_header(header_line: str) -> list[str]:
    """Header names → canonical OKX names: `size/数量` → `size`, BOM and case dropped."""
    return [field.split("/", 1)[0].strip().lower() for field in header_line.lstrip("\ufeff").strip().split(",")]


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _is_legacy_row(fields: list[str]) -> bool:
    """`trade_id, side, size, price, created_time`, as in OKX's headerless files before 2022."""
    if len(fields) != len(LEGACY_COLUMNS):
        return False
    trade_id, side, size, price, created = (f.strip() for f in fields)
    try:
        float(size), float(price)
    except ValueError:
        return False
    return trade_id.isdigit() and side.lower() in ("buy", "sell") and created.isdigit() and len(created) in (13, 16)


def read_archive(
    zip_path: Path, instid: str, month: str, *, name: str, span_us: tuple[int, int] | None = None
) -> TradeFile:
    """Lazy canonical frame of one OKX trades zip: current header, legacy header, or (before 2022) none.
    A trade without a contract value is an error inside `span_us` (default: the month), and trimmed outside it."""
    source = zip_csv(zip_path, name=name)
    line = first_line(source)
    if not line.strip():
        names, has_header = list(CURRENT_COLUMNS), True  # an empty file: no trades that day
    elif any(_is_number(field) for field in line.split(",")):  # a header names columns; this is a row
        # No header: accepted only in the legacy order; every row is then parsed with that shape, and a row that
        # does not fit (field count, types, blank) is a malformed row naming its line.
        if not _is_legacy_row(line.split(",")):
            raise CorruptArchiveError(
                f"{name}: no header and line 1 {line.strip()!r} is not a legacy row "
                f"({','.join(LEGACY_COLUMNS)})"
            )
        names, has_header = list(LEGACY_COLUMNS), False
    else:
        names, has_header = normalise_header(line), True
        missing = [c for c in _REQUIRED if c not in names]
        if missing or len(set(names)) != len(names):
            raise CorruptArchiveError(f"{name}: unexpected header {line.strip()!r} (missing {missing})")
    schema = {n: _TYPES.get(n, pl.String()) for n in names}
    start_us, end_us = span_us or month_bounds_us(month)
    check_instrument = "instrument_name" in names

    def to_canonical(frame: pl.DataFrame, first: int) -> pl.DataFrame:
        side = pl.col("side").str.to_lowercase()
        if check_instrument:
            # A file of another instrument is a wrong file, not a source of trades: null is_buy → rejected later.
            side = pl.when(pl.col("instrument_name") == instid).then(side)
        frame = frame.with_columns(ts_exchange=ms_or_us_to_us(pl.col("created_time")))
        return base_quantity(frame, instid, origin=name, line=first, start_us=start_us, end_us=end_us).select(
            "ts_exchange",
            ts_arrival=pl.lit(None, dtype=pl.Int64),
            trade_id=pl.col("trade_id"),
            price=pl.col("price"),
            qty=pl.col("qty"),
            is_buy=pl.when(side == "buy").then(True).when(side == "sell").then(False),  # else null → rejected
        )

    frame = lazy_csv(
        source, schema=schema, skip_first_line=has_header, convert=to_canonical, out_schema=CANONICAL_SCHEMA,
        required=_REQUIRED,
    )
    return TradeFile(origin=name, frame=frame)
