"""Reconcile 1m flow bars (exchange time) with the exchange's own 1m klines. Pure polars, no I/O.

Per minute, our bars must reproduce the totals the exchange computed from the same trades:

| kline column             | our value                                             |
|--------------------------|-------------------------------------------------------|
| `taker_buy_volume`       | `taker_buy_volume`                                    |
| `volume`                 | `taker_buy_volume + taker_sell_volume`                |
| `taker_buy_quote_volume` | buy notional: Σ `taker_buy_{small,medium,large}_order_volume` |
| `quote_volume`           | buy + sell notional (all six bucket notionals)        |
| `count` (optional)       | `taker_buy_count + taker_sell_count`                  |

Tolerance of a value, derived from the file rather than chosen: the exchange printed its exact total rounded to
`d` decimals (d read from the file per column), so it is off by at most half a unit of the last printed decimal,
`0.5·10^-d`. Our side is a float64 sum of the bar's `n` trades (plus the side/bucket sums, the price × qty
product and the parsing of the decimal text), whose rounding error is at most `(n + 8)·ε·|value|`
(ε = 2^-52). The tolerance is the sum of the two. `count` is an integer: it must be equal (tolerance 0.5).

Missing minutes: Binance writes a kline for every minute, with zero volume when nothing traded; its files
nevertheless lack minutes during outages and in some damaged months. A minute without a kline is therefore
not compared when our bar is empty too (`bars_without_kline`), and is a difference when our bar has trades
(the exchange's file and its trades disagree). Kline rows outside the bars are only counted.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

import polars as pl

FLOAT_EPSILON = 2.0**-52
ROUNDINGS_BESIDES_TRADES = 8  # side and bucket sums, price × qty, parsing the kline's text
BUCKETS = ("small", "medium", "large")
_BUY_NOTIONAL = pl.sum_horizontal(*(pl.col(f"taker_buy_{b}_order_volume") for b in BUCKETS))
_SELL_NOTIONAL = pl.sum_horizontal(*(pl.col(f"taker_sell_{b}_order_volume") for b in BUCKETS))
OUR_VALUES: dict[str, tuple[str, pl.Expr]] = {
    "taker_buy_volume": ("taker_buy_volume", pl.col("taker_buy_volume")),
    "volume": ("taker_buy_volume + taker_sell_volume", pl.col("taker_buy_volume") + pl.col("taker_sell_volume")),
    "taker_buy_quote_volume": ("sum of taker_buy_{small,medium,large}_order_volume", _BUY_NOTIONAL),
    "quote_volume": ("buy + sell bucket notionals", _BUY_NOTIONAL + _SELL_NOTIONAL),
    "count": ("taker_buy_count + taker_sell_count", pl.col("taker_buy_count") + pl.col("taker_sell_count")),
}
DECIMAL_FIELDS = ("taker_buy_volume", "volume", "taker_buy_quote_volume", "quote_volume")


@dataclass(frozen=True)
class Mismatch:
    """One bar where our value and the exchange's differ by more than the tolerance."""

    field: str
    time: datetime
    ours: float
    exchange: float | None  # None: the exchange has no kline for a bar of ours that has trades
    difference: float | None
    tolerance: float | None

    def describe(self) -> str:
        if self.exchange is None:
            return f"{self.time:%Y-%m-%d %H:%M} has {self.ours:g} trades but no kline"
        return (
            f"{self.field} at {self.time:%Y-%m-%d %H:%M}: ours {self.ours!r}, exchange {self.exchange!r} "
            f"(off by {self.difference:.6g}, tolerance {self.tolerance:.3g})"
        )


@dataclass(frozen=True)
class FieldResult:
    field: str  # the kline column
    ours: str  # what it is compared with
    decimals: int  # printed in the kline file
    half_unit: float  # 0.5·10^-decimals; the float-noise term comes on top (module docstring)
    bars_differing: int
    worst: Mismatch | None  # the largest difference of this field


@dataclass(frozen=True)
class Reconciliation:
    bars_compared: int  # bars with a kline
    bars_differing: int  # bars with any field out of tolerance, or with trades and no kline
    bars_without_kline: int  # of which `bars_with_trades_without_kline` count as differing
    bars_with_trades_without_kline: int
    klines_outside_bars: int
    counts_compared: bool
    fields: tuple[FieldResult, ...]
    worst: Mismatch | None  # the bar furthest out of tolerance (relative to it), else the first kline-less one

    @property
    def passed(self) -> bool:
        return self.bars_differing == 0


def reconcile_with_klines(
    bars_1m: pl.DataFrame, klines: pl.DataFrame, *, compare_counts: bool, decimals: Mapping[str, int]
) -> Reconciliation:
    """Compare 1m bars (`time` + flow fields) with klines (`open_time` + kline columns as floats / ints).

    `decimals` are the decimals printed per kline column (`KlinesMonth.decimals`); `compare_counts` is False
    when our trades are aggregate trades (aggTrades), whose count is not the kline's count of trades.
    """
    if bars_1m.schema["time"] != klines.schema["open_time"]:
        raise ValueError(f"bars time is {bars_1m.schema['time']}, klines open_time {klines.schema['open_time']}")
    missing = [f for f in DECIMAL_FIELDS if f not in decimals]
    if missing:
        raise ValueError(f"decimals missing for kline column(s) {missing}")
    fields = [*DECIMAL_FIELDS, *(["count"] if compare_counts else [])]
    ours = bars_1m.select(
        "time",
        pl.col("taker_buy_count").add(pl.col("taker_sell_count")).alias("_trades"),
        *(OUR_VALUES[f][1].alias(f"ours_{f}") for f in fields),
    )
    theirs = klines.select(pl.col("open_time").alias("time"), *(pl.col(f).alias(f"exchange_{f}") for f in fields),
                           pl.lit(True).alias("_has_kline"))
    joined = ours.join(theirs, on="time", how="left", maintain_order="left").with_columns(
        pl.col("_has_kline").fill_null(False)
    )
    checks = []
    for field in fields:
        mine, exchange = pl.col(f"ours_{field}"), pl.col(f"exchange_{field}")
        if field == "count":
            tolerance = pl.lit(0.5)
        else:
            magnitude = pl.max_horizontal(mine.abs(), exchange.abs())
            noise = (pl.col("_trades") + ROUNDINGS_BESIDES_TRADES).cast(pl.Float64) * FLOAT_EPSILON * magnitude
            tolerance = 0.5 * 10.0 ** -decimals[field] + noise
        checks += [
            (mine.cast(pl.Float64) - exchange.cast(pl.Float64)).abs().alias(f"diff_{field}"),
            tolerance.alias(f"tol_{field}"),
        ]
    joined = joined.with_columns(checks).with_columns(
        (pl.col(f"diff_{f}") > pl.col(f"tol_{f}")).fill_null(False).alias(f"bad_{f}") for f in fields
    )
    kline_less_with_trades = ~pl.col("_has_kline") & (pl.col("_trades") > 0)
    differing = pl.any_horizontal(*(pl.col(f"bad_{f}") for f in fields)) | kline_less_with_trades
    counts = joined.select(
        compared=pl.col("_has_kline").sum(),
        differing=differing.sum(),
        without_kline=(~pl.col("_has_kline")).sum(),
        with_trades_without_kline=kline_less_with_trades.sum(),
    ).row(0, named=True)

    results, worst, worst_ratio = [], None, 0.0
    for field in fields:
        diff, tol = pl.col(f"diff_{field}"), pl.col(f"tol_{field}")
        bad = joined.filter(pl.col(f"bad_{field}")).with_columns((diff / tol).alias("_ratio"))
        field_worst = None
        if bad.height:
            field_worst = _mismatch(field, bad.row(bad[f"diff_{field}"].arg_max(), named=True))
            furthest = bad.row(bad["_ratio"].arg_max(), named=True)
            if furthest["_ratio"] > worst_ratio:
                worst, worst_ratio = _mismatch(field, furthest), furthest["_ratio"]
        results.append(
            FieldResult(
                field=field,
                ours=OUR_VALUES[field][0],
                decimals=0 if field == "count" else decimals[field],
                half_unit=0.5 if field == "count" else 0.5 * 10.0 ** -decimals[field],
                bars_differing=bad.height,
                worst=field_worst,
            )
        )
    if worst is None and counts["with_trades_without_kline"]:
        row = joined.filter(kline_less_with_trades).row(0, named=True)
        worst = Mismatch("kline", row["time"], float(row["_trades"]), None, None, None)
    return Reconciliation(
        bars_compared=counts["compared"],
        bars_differing=counts["differing"],
        bars_without_kline=counts["without_kline"],
        bars_with_trades_without_kline=counts["with_trades_without_kline"],
        klines_outside_bars=klines.join(ours, left_on="open_time", right_on="time", how="anti").height,
        counts_compared=compare_counts,
        fields=tuple(results),
        worst=worst,
    )


def _mismatch(field: str, row: Mapping) -> Mismatch:
    return Mismatch(
        field=field,
        time=row["time"],
        ours=row[f"ours_{field}"],
        exchange=row[f"exchange_{field}"],
        difference=row[f"diff_{field}"],
        tolerance=row[f"tol_{field}"],
    )
