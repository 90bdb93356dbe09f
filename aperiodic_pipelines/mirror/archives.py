"""Writers that turn canonical trades into archive files laid out and formatted as each exchange publishes them.

Used by tests and the demo together with `ArchiveMirror`. Bytes are deterministic (fixed zip timestamps,
gzip mtime 0). Helpers at the bottom damage files on purpose (wrong checksum, corrupt zip).

Input is canonical trades (spec §1: µs timestamps). Binance and OKX archives carry ms, so sub-ms digits are
dropped on the way (`ts_exchange // 1000`); Tardis files keep µs.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import zipfile
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import polars as pl

from aperiodic_pipelines.sources import binance, okx, tardis
from aperiodic_pipelines.sources.canonical import DAY_US, days_of_month, month_bounds_us

_ZIP_TIME = (2020, 1, 1, 0, 0, 0)


def _day_start_us(day: str) -> int:
    return int(datetime.fromisoformat(day).replace(tzinfo=UTC).timestamp()) * 1_000_000


def _bool_text(expr: pl.Expr) -> pl.Expr:
    return pl.when(expr).then(pl.lit("true")).otherwise(pl.lit("false"))


def write_zip(path: Path, member: str, payload: bytes) -> None:
    """A one-member deflated zip with a fixed timestamp (same payload → same bytes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    info = zipfile.ZipInfo(member, date_time=_ZIP_TIME)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = 0o644 << 16
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(info, payload)
    path.write_bytes(buffer.getvalue())


def write_checksum(zip_path: Path) -> Path:
    """Write the `.CHECKSUM` sidecar in sha256sum format (`<hex>  <file name>`), as Binance does."""
    digest = hashlib.sha256(zip_path.read_bytes()).hexdigest()
    sidecar = zip_path.with_name(zip_path.name + ".CHECKSUM")
    sidecar.write_text(f"{digest}  {zip_path.name}\n")
    return sidecar


def write_wrong_checksum(zip_path: Path) -> str:
    """Replace the sidecar with a digest that does not match; returns the wrong digest."""
    wrong = hashlib.sha256(b"not the archive").hexdigest()
    zip_path.with_name(zip_path.name + ".CHECKSUM").write_text(f"{wrong}  {zip_path.name}\n")
    return wrong


def corrupt_zip(zip_path: Path, *, update_checksum: bool = True) -> None:
    """Damage the compressed data in the middle of the archive (and, by default, publish the matching
    checksum, as an exchange that zipped a bad file would)."""
    data = bytearray(zip_path.read_bytes())
    middle = len(data) // 2
    for offset in range(middle, min(middle + 64, len(data) - 30)):
        data[offset] ^= 0xFF
    zip_path.write_bytes(bytes(data))
    if update_checksum and zip_path.with_name(zip_path.name + ".CHECKSUM").exists():
        write_checksum(zip_path)


# --- binance-futures -------------------------------------------------------------------------------------


def binance_csv(
    trades: pl.DataFrame, *, dataset: str = "aggTrades", header: bool = True, timestamp_unit: str = "ms"
) -> bytes:
    """Rows as in data.binance.vision futures/um CSVs: `true`/`false` flags, `is_buyer_maker` = taker sold."""
    divisor = 1000 if timestamp_unit == "ms" else 1
    time = pl.col("ts_exchange") // divisor
    maker = _bool_text(~pl.col("is_buy"))
    if dataset == "aggTrades":
        # first/last underlying trade ids are not in canonical trades; make plausible increasing ones.
        first = pl.col("trade_id") * 3
        table = trades.select(
            agg_trade_id=pl.col("trade_id"),
            price=pl.col("price"),
            quantity=pl.col("qty"),
            first_trade_id=first,
            last_trade_id=first + 2,
            transact_time=time,
            is_buyer_maker=maker,
        )
    elif dataset == "trades":
        table = trades.select(
            id=pl.col("trade_id"),
            price=pl.col("price"),
            qty=pl.col("qty"),
            quote_qty=(pl.col("price") * pl.col("qty")).round(8),
            time=time,
            is_buyer_maker=maker,
        )
    else:
        raise ValueError(f"dataset must be aggTrades or trades, got {dataset!r}")
    return table.write_csv(include_header=header, quote_style="never").encode()


def write_binance_month(
    root: Path,
    native_symbol: str,
    month: str,
    trades: pl.DataFrame,
    *,
    dataset: str = "aggTrades",
    header: bool = True,
    daily: bool = False,
    interleave: bool = False,
    duplicate_rows: int = 0,
    timestamp_unit: str = "ms",
) -> list[Path]:
    """Write a month of `trades` as Binance archives (+ `.CHECKSUM`) under `root`; returns the zip paths.

    `daily=True` writes one archive per UTC day of the month (rows of that day only) instead of the monthly
    one. `interleave` alternates blocks from the two halves of the file (as some monthly files do);
    `duplicate_rows` repeats that many rows (evenly spread) right after themselves.
    """
    root = Path(root)
    trades = trades.sort("ts_exchange", "trade_id")
    if daily:
        periods = [(day, _day_start_us(day)) for day in days_of_month(month)]
    else:
        periods = [(month, month_bounds_us(month)[0])]
    written = []
    for period, start in periods:
        if daily:
            rows = trades.filter(pl.col("ts_exchange").is_between(start, start + DAY_US, closed="left"))
        else:
            rows = trades
        rows = _with_duplicates(rows, duplicate_rows)
        if interleave:
            rows = _interleave_halves(rows)
        path = root / binance.archive_path(native_symbol, dataset, period)
        payload = binance_csv(rows, dataset=dataset, header=header, timestamp_unit=timestamp_unit)
        write_zip(path, f"{native_symbol}-{dataset}-{period}.csv", payload)
        write_checksum(path)
        written.append(path)
    return written


def _with_duplicates(rows: pl.DataFrame, count: int) -> pl.DataFrame:
    if count <= 0 or rows.height == 0:
        return rows
    step = max(1, rows.height // count)
    picks = set(range(0, rows.height, step)[:count])
    order = [i for i in range(rows.height) for _ in range(2 if i in picks else 1)]
    return rows[order]


def _interleave_halves(rows: pl.DataFrame, block: int = 7) -> pl.DataFrame:
    half = rows.height // 2
    first, second = list(range(half)), list(range(half, rows.height))
    order: list[int] = []
    for start in range(0, max(len(first), len(second)), block):
        order += first[start : start + block] + second[start : start + block]
    return rows[order]


# --- okx-perps -------------------------------------------------------------------------------------------


def write_okx_month(
    root: Path,
    instid: str,
    month: str,
    trades: pl.DataFrame,
    *,
    legacy_header: bool = False,
    contract_value: float | None = None,
    with_source_column: bool = False,
) -> list[Path]:
    """Write OKX daily trade archives for the UTC month: files dated its 1st to the next month's 1st, each
    covering [D−1 16:00 UTC, D 16:00 UTC). Trades outside that span are not written. `size` is in contracts
    (`contract_value` defaults to `okx.CONTRACT_VALUES`)."""
    root = Path(root)
    trades = trades.sort("ts_exchange", "trade_id")
    written = []
    for day in okx.file_dates(month):
        day_text = f"{day:%Y-%m-%d}"
        value, kind = okx.contract_spec(instid, day_text)
        if contract_value is not None:
            value = contract_value
        end = _day_start_us(day_text) - 8 * 3_600_000_000 + DAY_US
        rows = trades.filter(pl.col("ts_exchange").is_between(end - DAY_US, end, closed="left"))
        size = pl.col("qty") / value if kind == "linear" else pl.col("qty") * pl.col("price") / value
        table = rows.select(
            instrument_name=pl.lit(instid),
            trade_id=pl.col("trade_id"),
            side=pl.when(pl.col("is_buy")).then(pl.lit("buy")).otherwise(pl.lit("sell")),
            price=pl.col("price"),
            size=size,
            created_time=pl.col("ts_exchange") // 1000,
        )
        if with_source_column:
            table = table.with_columns(source=pl.lit(0))
        if legacy_header:
            table = table.select("trade_id", "side", "size", "price", "created_time")
            payload = okx.LEGACY_HEADER + "\n" + table.write_csv(include_header=False)
        else:
            payload = table.write_csv(include_header=True)
        path = root / okx.archive_path(instid, day)
        write_zip(path, f"{instid}-trades-{day_text}.csv", payload.encode())
        written.append(path)
    return written


# --- Tardis ----------------------------------------------------------------------------------------------


def write_tardis_days(
    root: Path,
    exchange: str,
    symbol: str,
    month: str,
    trades: pl.DataFrame,
    *,
    contract_value: float | None = None,
) -> list[Path]:
    """Write Tardis-format gzip CSVs, one per UTC day of `local_timestamp` (= `ts_arrival`), for every day
    of the month plus any neighbouring day that holds rows. `symbol` is the native id; `exchange` ours
    (mapped to Tardis's id). OKX amounts are written in contracts."""
    root = Path(root)
    if trades.get_column("ts_arrival").null_count():
        raise ValueError("Tardis files need arrival times: trades with null ts_arrival")
    trades = trades.sort("ts_arrival", "trade_id")
    arrival_day = (pl.col("ts_arrival") // DAY_US).alias("_day")
    day_numbers = set(trades.select(arrival_day.unique()).to_series().to_list())
    day_numbers |= {_day_start_us(d) // DAY_US for d in days_of_month(month)}
    written = []
    for number in sorted(day_numbers):
        day_text = f"{date(1970, 1, 1) + timedelta(days=number)}"
        rows = trades.filter(arrival_day == number)
        amount = pl.col("qty")
        if exchange == "okx-perps":
            value, kind = okx.contract_spec(symbol, day_text)
            value = contract_value if contract_value is not None else value
            amount = pl.col("qty") / value if kind == "linear" else pl.col("qty") * pl.col("price") / value
        table = rows.select(
            exchange=pl.lit(tardis.tardis_exchange(exchange)),
            symbol=pl.lit(symbol),
            timestamp=pl.col("ts_exchange"),
            local_timestamp=pl.col("ts_arrival"),
            id=pl.col("trade_id").cast(pl.String),
            side=pl.when(pl.col("is_buy")).then(pl.lit("buy")).otherwise(pl.lit("sell")),
            price=pl.col("price"),
            amount=amount,
        )
        path = root / tardis.file_path(exchange, symbol, day_text)
        path.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, mtime=0) as handle:
            handle.write(table.write_csv(include_header=True).encode())
        path.write_bytes(buffer.getvalue())
        written.append(path)
    return written
