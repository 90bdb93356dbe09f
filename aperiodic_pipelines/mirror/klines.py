"""Binance's monthly 1m klines, computed from canonical trades the way the exchange computes them, written as
data.binance.vision publishes them (zip + `.CHECKSUM`) for `ArchiveMirror` to serve next to the trade archives.

Format (futures/um, e.g. BTCUSDT 2024-01):

    open_time,open,high,low,close,volume,close_time,quote_volume,count,taker_buy_volume,taker_buy_quote_volume,ignore
    1704067200000,42314.00,42335.80,42289.60,42331.90,289.641,1704067259999,12256155.25625,3310,175.211,7414459.86355,0

ms times, prices and base volumes at the symbol's fixed decimals (BTCUSDT: 2 and 3), quote volumes at their sum
(5), `ignore` 0. Totals are exact decimal sums (integer units), as the exchange's are, so the only rounding in the
file is its printing. A kline is written for every minute of the month, trades or not ("kline always generate
even if there is no trade", Binance in binance-public-data#153): an empty minute repeats the last close (the first
trade's price before any trade) with zero volumes and count. `count` counts the rows given, i.e. individual trades
as the `trades` dataset lists them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import polars as pl

from aperiodic_pipelines.mirror.archives import write_checksum, write_zip
from aperiodic_pipelines.sources.canonical import month_bounds_us
from aperiodic_pipelines.sources.klines import MINUTE_US, klines_path

BTCUSDT_PRICE_DECIMALS = 2
BTCUSDT_QUANTITY_DECIMALS = 3
_SUMMED = ("volume", "quote_volume", "count", "taker_buy_volume", "taker_buy_quote_volume")  # totals of a minute


def binance_klines_csv(
    trades: pl.DataFrame | Iterable[pl.DataFrame],
    month: str,
    *,
    price_decimals: int = BTCUSDT_PRICE_DECIMALS,
    quantity_decimals: int = BTCUSDT_QUANTITY_DECIMALS,
    header: bool = True,
) -> bytes:
    """The month's 1m klines of `trades` (canonical, µs) as Binance prints them. `trades` may also be frames in time
    order (e.g. one per day), so that a month of hundreds of millions of trades is never whole in memory."""
    start, end = month_bounds_us(month)
    quote_decimals = price_decimals + quantity_decimals
    chunks = [trades] if isinstance(trades, pl.DataFrame) else trades
    minutes = [_traded_minutes(chunk, start, end, price_decimals, quantity_decimals) for chunk in chunks]
    traded = minutes[0] if len(minutes) == 1 else _merge_minutes(minutes)
    grid = pl.DataFrame({"minute": pl.int_range(start, end, MINUTE_US, eager=True)})
    first_price = traded["open"][0] if traded.height else 0
    klines = grid.join(traded, on="minute", how="left", maintain_order="left").with_columns(
        pl.col("close").forward_fill().fill_null(first_price).alias("_last_close")
    ).with_columns(
        *(pl.col(c).fill_null(pl.col("_last_close")) for c in ("open", "high", "low", "close")),
        *(pl.col(c).fill_null(0) for c in _SUMMED),
    )
    open_ms = pl.col("minute") // 1000
    table = klines.select(
        open_time=open_ms,
        open=_fixed(pl.col("open"), price_decimals),
        high=_fixed(pl.col("high"), price_decimals),
        low=_fixed(pl.col("low"), price_decimals),
        close=_fixed(pl.col("close"), price_decimals),
        volume=_fixed(pl.col("volume"), quantity_decimals),
        close_time=open_ms + MINUTE_US // 1000 - 1,
        quote_volume=_fixed(pl.col("quote_volume"), quote_decimals),
        count=pl.col("count"),
        taker_buy_volume=_fixed(pl.col("taker_buy_volume"), quantity_decimals),
        taker_buy_quote_volume=_fixed(pl.col("taker_buy_quote_volume"), quote_decimals),
        ignore=pl.lit(0),
    )
    return table.write_csv(include_header=header, quote_style="never").encode()


def _traded_minutes(
    trades: pl.DataFrame, start: int, end: int, price_decimals: int, quantity_decimals: int
) -> pl.DataFrame:
    """One row per minute of [start, end) with trades: open/high/low/close and totals, in integer units."""
    price_units = _units(trades, "price", price_decimals)
    qty_units = _units(trades, "qty", quantity_decimals)
    minute = (pl.col("ts_exchange") // MINUTE_US * MINUTE_US).alias("minute")
    notional = price_units * qty_units  # exact, in units of 10^-(price + quantity decimals)
    buy = pl.col("is_buy")
    return (
        trades.filter(pl.col("ts_exchange").is_between(start, end, closed="left"))
        .sort("ts_exchange", "trade_id")
        .group_by(minute, maintain_order=True)
        .agg(
            open=price_units.first(),
            high=price_units.max(),
            low=price_units.min(),
            close=price_units.last(),
            volume=qty_units.sum(),
            quote_volume=notional.sum(),
            count=pl.len().cast(pl.Int64),
            taker_buy_volume=qty_units.filter(buy).sum(),
            taker_buy_quote_volume=notional.filter(buy).sum(),
        )
    )


def _merge_minutes(parts: list[pl.DataFrame]) -> pl.DataFrame:
    """The minutes of chunks in time order as one table (a minute split between two chunks is merged; the totals
    are integers, so the result is exactly that of the chunks taken whole)."""
    return pl.concat(parts).group_by("minute", maintain_order=True).agg(
        pl.col("open").first(), pl.col("high").max(), pl.col("low").min(), pl.col("close").last(),
        *(pl.col(name).sum() for name in _SUMMED),
    )


def write_binance_klines_month(
    root: Path,
    native_symbol: str,
    month: str,
    trades: pl.DataFrame | Iterable[pl.DataFrame],
    *,
    price_decimals: int = BTCUSDT_PRICE_DECIMALS,
    quantity_decimals: int = BTCUSDT_QUANTITY_DECIMALS,
    header: bool = True,
) -> Path:
    """Write `{root}/data/futures/um/monthly/klines/{SYM}/1m/{SYM}-1m-{month}.zip` (+ `.CHECKSUM`); returns the zip."""
    payload = binance_klines_csv(
        trades, month, price_decimals=price_decimals, quantity_decimals=quantity_decimals, header=header
    )
    path = Path(root) / klines_path(native_symbol, month)
    write_zip(path, f"{native_symbol}-1m-{month}.csv", payload)
    write_checksum(path)
    return path


def republish_klines(zip_path: Path, edit: Callable[[list[str]], list[str]]) -> None:
    """Rewrite the CSV lines of a klines zip with `edit` and sign it again, as an exchange correcting (or
    damaging) a published file does: the new CHECKSUM matches, so only the content tells."""
    import zipfile

    with zipfile.ZipFile(zip_path) as archive:
        (member,) = archive.namelist()
        lines = archive.read(member).decode().splitlines()
    write_zip(zip_path, member, ("\n".join(edit(lines)) + "\n").encode())
    write_checksum(zip_path)


def _units(trades: pl.DataFrame, column: str, decimals: int) -> pl.Expr:
    """`column` as an integer count of 10^-decimals; trades finer than that cannot be printed as Binance does."""
    scaled = pl.col(column) * 10**decimals
    off_grid = trades.filter((scaled - scaled.round()).abs() > 1e-6)
    if off_grid.height:
        raise ValueError(
            f"{off_grid.height} trade(s) have a {column} finer than {decimals} decimals, "
            f"e.g. {off_grid[column][0]!r}: pass more decimals"
        )
    return scaled.round().cast(pl.Int64)


def _fixed(units: pl.Expr, decimals: int) -> pl.Expr:
    """Non-negative integer units of 10^-decimals → fixed-point text with exactly `decimals` digits."""
    if decimals == 0:
        return units.cast(pl.String)
    scale = 10**decimals
    return pl.concat_str(
        (units // scale).cast(pl.String), pl.lit("."), (units % scale).cast(pl.String).str.zfill(decimals)
    )
