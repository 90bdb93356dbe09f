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
    NULLABLE_FIELDS,
    ROLLUP_FROM,
    SIDES,
    TIME_DTYPE,
    TOXICITY_WINDOW,
    US_PER_SECOND,
    month_bounds_us,
)
from aperiodic_pipelines.flow.seconds import SUM_STATS, SecondStats
from aperiodic_pipelines.flow.toxicity import toxicity_scores

# Fields of an empty bar (spec §2): sums are 0, every ratio, percentage and entropy is null. The score is the
# only field of an empty bar that depends on its neighbours; it is computed on the dense grid.
_ZERO_WHEN_EMPTY = tuple(f for f in FLOW_COLUMNS[1:] if f not in NULLABLE_FIELDS)
_NULL_WHEN_EMPTY = tuple(f for f in FLOW_COLUMNS[1:] if f in NULLABLE_FIELDS and f != "flow_toxicity_score")
# Non-empty bars derived at once: bounds the temporaries of a busy 1s month to a slice.
SLICE_ROWS = 1 << 18
# When more than this share of the grid's bars hold trades (a busy month at 1s, every coarser interval), the
# fields are derived on the grid itself, 3 days of bars at a time: scattering them afterwards would only add work.
DENSE_FROM = 0.5
GRID_SLICE_BARS = 3 * 86_400


def bars_from_second_stats(
    stats: SecondStats, *, intervals: Iterable[str] = INTERVALS
) -> dict[str, pl.DataFrame]:
    """Dense bars of the month for each requested interval, keyed by interval name, in `INTERVALS` order."""
    wanted = _check_intervals(intervals)
    month_start, month_end = (bound // US_PER_SECOND for bound in month_bounds_us(stats.month))
    sparse = {"1s": stats.frame.rename({"second": "bar"})}
    out: dict[str, pl.DataFrame] = {}
    for interval in INTERVALS[: max(INTERVALS.index(i) for i in wanted) + 1]:
        if interval not in sparse:
            sparse[interval] = _roll_up(sparse[ROLLUP_FROM[interval]], INTERVAL_SECONDS[interval])
        if interval in wanted:
            width = INTERVAL_SECONDS[interval]
            first_bar = month_start - (TOXICITY_WINDOW * width if stats.has_previous else 0)
            volatility = pl.col("abs_return") if interval == "1s" else pl.col("squared_return").sqrt()
            out[interval] = _dense_bars(sparse[interval], first_bar, month_start, month_end, width, volatility)
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
    """The month's dense bars: fields derived on the non-empty bars only, then scattered onto the grid.

    Every field of an empty bar is a constant (0 or null) except the score, whose window spans empty bars too;
    so only the signed flow and the volatility are laid out densely from `first_bar` (the window's lead-in),
    and the work of the other 35 fields grows with the bars that hold trades, not with the grid. The non-empty
    bars are derived `SLICE_ROWS` at a time and scattered in place into preallocated columns, so memory holds
    the dense table and one slice, not a second, sparse copy of a busy month.
    """
    bars = sparse.get_column("bar")
    lo, hi = bars.search_sorted(first_bar, side="left"), bars.search_sorted(end, side="left")
    lead_in, rows = (month_start - first_bar) // width, (end - month_start) // width
    if hi - lo > DENSE_FROM * (lead_in + rows):
        return _grid_bars(sparse, first_bar, month_start, end, width, volatility)
    signed_flow, realised_volatility = np.zeros(lead_in + rows), np.zeros(lead_in + rows)
    # Preallocated by polars: numpy's fresh (huge-page) allocations cost more CPU than the scatter itself.
    columns: dict[str, pl.Series] = {
        "time": (pl.int_range(month_start, end, width, dtype=pl.Int64, eager=True) * US_PER_SECOND).cast(TIME_DTYPE),
        **{name: pl.zeros(rows, dtype=FLOW_SCHEMA[name], eager=True) for name in _ZERO_WHEN_EMPTY},
        **{name: pl.repeat(None, rows, dtype=FLOW_SCHEMA[name], eager=True) for name in _NULL_WHEN_EMPTY},
    }
    for start in range(lo, hi, SLICE_ROWS):
        fields = _derive_fields(sparse.slice(start, min(SLICE_ROWS, hi - start)), volatility)
        lead_position = (fields.get_column("bar").to_numpy() - first_bar) // width
        signed_flow[lead_position] = fields.get_column("volume_delta_notional").to_numpy()
        realised_volatility[lead_position] = fields.get_column("_volatility").to_numpy()
        in_month = lead_position >= lead_in
        if not in_month.all():  # the lead-in bars of the month before feed the score only
            fields, lead_position = fields.filter(pl.Series(in_month)), lead_position[in_month]
        position = pl.Series(lead_position - lead_in)
        for name in (*_ZERO_WHEN_EMPTY, *_NULL_WHEN_EMPTY):
            columns[name].scatter(position, fields.get_column(name))  # in place
    scores = toxicity_scores(signed_flow, realised_volatility)[lead_in:]
    columns["flow_toxicity_score"] = pl.Series(scores).fill_nan(None)
    return pl.DataFrame([columns[name].alias(name) for name in FLOW_COLUMNS])


def _grid_bars(
    sparse: pl.DataFrame, first_bar: int, month_start: int, end: int, width: int, volatility: pl.Expr
) -> pl.DataFrame:
    """The month's dense bars derived on the grid, in slices of `GRID_SLICE_BARS` bars.

    Each slice starts `TOXICITY_WINDOW` bars early so its scores see a full window; those lead-in rows are
    dropped. The same per-bar arithmetic as `_dense_bars`, so both give identical tables.
    """
    slices = []
    bars = sparse.get_column("bar")
    for slice_start in range(month_start, end, GRID_SLICE_BARS * width):
        lead_start = max(first_bar, slice_start - TOXICITY_WINDOW * width)
        slice_end = min(end, slice_start + GRID_SLICE_BARS * width)
        lo, hi = bars.search_sorted(lead_start, side="left"), bars.search_sorted(slice_end, side="left")
        fields = _derive_fields(_densify(sparse.slice(lo, hi - lo), lead_start, slice_end, width), volatility)
        scores = toxicity_scores(fields.get_column("volume_delta_notional").to_numpy(),
                                 fields.get_column("_volatility").to_numpy())
        fields = fields.with_columns(
            pl.from_epoch(pl.col("bar"), time_unit="s").cast(TIME_DTYPE).alias("time"),
            pl.Series("flow_toxicity_score", scores).fill_nan(None),
        )
        # The columns themselves, not `select`, which copies the slice's columns (polars 2.1), for nothing.
        ordered = pl.DataFrame([fields.get_column(name) for name in FLOW_COLUMNS])
        slices.append(ordered.slice((slice_start - lead_start) // width))
    # One contiguous buffer per column, joined a column at a time: the parquet writer needs contiguous columns
    # (its pages must not depend on how the table was built), and rechunking the whole table there would hold
    # a busy 1s month twice (~0.8 GB more); here the slices of a column are freed as soon as it is joined.
    parts = {name: [part.get_column(name) for part in slices] for name in FLOW_COLUMNS}
    del slices
    bars = pl.DataFrame([pl.concat(parts.pop(name)).rechunk() for name in FLOW_COLUMNS])
    # A cast, even to the same dtypes, copies every column of the month: only cast when one differs.
    return bars if bars.schema == pl.Schema(FLOW_SCHEMA) else bars.cast(FLOW_SCHEMA)


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


def _derive_fields(bars: pl.DataFrame, volatility: pl.Expr) -> pl.DataFrame:
    """The fields of non-empty bars (all but the score) from their summed statistics, plus `_volatility`.

    Totals and shares first, so each is computed once. Every field is a function of its own bar only.
    """
    col = pl.col
    totals = bars.lazy().with_columns(
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
    return shares.with_columns(
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
