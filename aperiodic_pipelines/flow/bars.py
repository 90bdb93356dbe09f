"""Per-second statistics → dense monthly bars of every interval, with the 36 fields of spec §2–§3."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import polars as pl

from aperiodic_pipelines.flow.exprs import ordered_sum
from aperiodic_pipelines.flow.grid import (
    BUCKETS,
    FLOW_COLUMNS,
    FLOW_SCHEMA,
    INTERVAL_SECONDS,
    INTERVALS,
    ROLLUP_FROM,
    SIDES,
    TIME_DTYPE,
    TOXICITY_WINDOW,
    US_PER_SECOND,
    month_bounds_us,
)
from aperiodic_pipelines.flow.seconds import SUM_STATS, SecondStats
from aperiodic_pipelines.flow.toxicity import with_flow_toxicity_score

# Bars derived at once; 3 days of 1s bars keep temporaries small and slices few.
SLICE_BARS = 3 * 86_400


def bars_from_second_stats(
    stats: SecondStats, *, intervals: Iterable[str] = INTERVALS
) -> dict[str, pl.DataFrame]:
    """Dense bars of the month for each requested interval, keyed by interval name, in `INTERVALS` order."""
    wanted = _check_intervals(intervals)
    month_start, month_end = month_bounds_us(stats.month)
    sparse = {"1s": stats.frame.rename({"second": "bar"})}
    out: dict[str, pl.DataFrame] = {}
    for interval in INTERVALS:
        if interval not in sparse:
            sparse[interval] = _roll_up(sparse[ROLLUP_FROM[interval]], INTERVAL_SECONDS[interval])
        if interval in wanted:
            width = INTERVAL_SECONDS[interval]
            first_bar = month_start // US_PER_SECOND - (TOXICITY_WINDOW * width if stats.has_previous else 0)
            volatility = pl.col("abs_return") if interval == "1s" else pl.col("squared_return").sqrt()
            out[interval] = _dense_bars(
                sparse[interval], first_bar, month_start // US_PER_SECOND, month_end // US_PER_SECOND, width,
                volatility,
            )
        if interval == max(wanted, key=INTERVALS.index):
            break
    return {interval: out[interval] for interval in INTERVALS if interval in wanted}


def _check_intervals(intervals: Iterable[str]) -> set[str]:
    wanted = set([intervals] if isinstance(intervals, str) else intervals)
    unknown = wanted - set(INTERVALS)
    if unknown or not wanted:
        raise ValueError(f"intervals must be a non-empty subset of {INTERVALS}, got {sorted(unknown) or 'none'}")
    return wanted


def _roll_up(finer: pl.DataFrame, width: int) -> pl.DataFrame:
    """Sum the finer bars into bars of `width` seconds; the coarser bar's close is the finer bars' last price."""
    return (
        finer.with_columns((pl.col("bar") // width * width).alias("bar"))
        .set_sorted("bar")
        .group_by("bar", maintain_order=True)
        .agg(*(pl.col(name).sum() for name in SUM_STATS), pl.col("last_price").last())
    )


def _dense_bars(
    sparse: pl.DataFrame, first_bar: int, month_start: int, end: int, width: int, volatility: pl.Expr
) -> pl.DataFrame:
    """The month's dense bars, built in slices of at most `SLICE_BARS` bars.

    Each slice starts `TOXICITY_WINDOW` bars early so its scores see a full window; those lead-in rows are
    dropped. Slicing bounds the temporaries of the 1s table (2.7 M rows) to a few days of bars.
    """
    slices = []
    bars = sparse.get_column("bar")
    for slice_start in range(month_start, end, SLICE_BARS * width):
        lead_start = max(first_bar, slice_start - TOXICITY_WINDOW * width)
        slice_end = min(end, slice_start + SLICE_BARS * width)
        lo, hi = bars.search_sorted(lead_start, side="left"), bars.search_sorted(slice_end, side="left")
        dense = _densify(sparse.slice(lo, hi - lo), lead_start, slice_end, width)
        derived = _derive_fields(dense, volatility)
        slices.append(derived.slice((slice_start - lead_start) // width))
    return pl.concat(slices)


def _densify(sparse: pl.DataFrame, first_bar: int, end: int, width: int) -> pl.DataFrame:
    """One row per bar in [first_bar, end): the sparse bars scattered onto a zero-filled grid.

    An empty bar has zero sums and, its price carried forward, a zero return.
    """
    bars = np.arange(first_bar, end, width, dtype=np.int64)
    position = (sparse.get_column("bar").to_numpy() - first_bar) // width
    columns: dict[str, np.ndarray] = {"bar": bars}
    for name in (*SUM_STATS, "abs_return"):
        if name in sparse.columns:
            values = sparse.get_column(name).to_numpy()
            dense = np.zeros(len(bars), dtype=values.dtype)
            dense[position] = values
            columns[name] = dense
    return pl.DataFrame(columns)


def _ratio(numerator: pl.Expr, denominator: pl.Expr) -> pl.Expr:
    """numerator / denominator, null where the denominator is 0."""
    return pl.when(denominator != 0).then(numerator / denominator)


def _entropy(share: pl.Expr) -> pl.Expr:
    """−p·log2 p with 0·log 0 = 0."""
    return pl.when(share > 0).then(-share * share.log(2)).otherwise(0.0)


def _derive_fields(dense: pl.DataFrame, volatility: pl.Expr) -> pl.DataFrame:
    """The 36 fields from the summed statistics; totals and shares first, so each is computed once."""
    col = pl.col
    totals = dense.lazy().with_columns(
        pl.from_epoch(col("bar"), time_unit="s").cast(TIME_DTYPE).alias("time"),
        *(
            ordered_sum(*(col(f"taker_{side}_{b}_order_volume") for b in BUCKETS)).alias(f"_{side}_notional")
            for side in SIDES
        ),
        (col("taker_buy_volume") + col("taker_sell_volume")).alias("_volume"),
        (col("taker_buy_count") + col("taker_sell_count")).cast(pl.Float64).alias("_count"),
        volatility.alias("_volatility"),
    )
    shares = totals.with_columns(
        _ratio(col("taker_buy_volume"), col("_volume")).alias("taker_buy_sell_percentage"),
        _ratio(col("taker_sell_volume"), col("_volume")).alias("_sell_share"),
    )
    fields = shares.with_columns(
        (col("taker_buy_volume") - col("taker_sell_volume")).alias("volume_delta"),
        (col("_buy_notional") - col("_sell_notional")).alias("volume_delta_notional"),
        # Binary entropy is at most 1 in exact arithmetic; clip the rounding that could push it past.
        pl.when(col("_volume") > 0)
        .then((_entropy(col("taker_buy_sell_percentage")) + _entropy(col("_sell_share"))).clip(0.0, 1.0))
        .alias("flow_entropy"),
        _ratio(col("taker_buy_volume"), col("taker_sell_volume")).alias("taker_buy_sell_ratio"),
        _ratio(col("taker_buy_count").cast(pl.Float64), col("taker_sell_count")).alias(
            "taker_buy_sell_count_ratio"
        ),
        _ratio(col("taker_buy_count").cast(pl.Float64), col("_count")).alias("taker_buy_sell_count_percentage"),
        *(
            _ratio(col(f"taker_{side}_{b}_order_volume"), col(f"_{side}_notional")).alias(
                f"taker_{side}_{b}_order_percentage"
            )
            for side in SIDES
            for b in BUCKETS
        ),
        *(
            _ratio(col(f"taker_{side}_{b}_order_count").cast(pl.Float64), col(f"taker_{side}_count")).alias(
                f"taker_{side}_{b}_order_count_percentage"
            )
            for side in SIDES
            for b in BUCKETS
        ),
    ).collect()
    scored = with_flow_toxicity_score(fields, signed_flow="volume_delta_notional", realised_volatility="_volatility")
    return scored.select(FLOW_COLUMNS).cast(FLOW_SCHEMA)
