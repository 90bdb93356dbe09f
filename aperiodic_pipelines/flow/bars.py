"""Per-second statistics → dense monthly bars of every interval, with the 36 fields of spec §2–§3."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping

import numpy as np
import polars as pl

from aperiodic_pipelines.flow.exprs import ordered_sum
from aperiodic_pipelines.flow.grid import (
    BUCKETS,
    FLOW_COLUMNS,
    FLOW_SCHEMA,
    INTERVAL_SECONDS,
    INTERVALS,
    NULL_WHEN_EMPTY,
    SIDES,
    TIME_DTYPE,
    TOXICITY_WINDOW,
    US_PER_SECOND,
    ZERO_WHEN_EMPTY,
    month_bounds_us,
)
from aperiodic_pipelines.flow.seconds import SUM_STATS, SecondStats
from aperiodic_pipelines.flow.toxicity import toxicity_scores

# Non-empty bars derived at once: bounds the temporaries of a busy 1s month to a slice.
SLICE_ROWS = 1 << 18
# When more than this share of the grid's bars hold trades (a busy month at 1s, every coarser interval), the
# fields are derived on the grid itself, up to a 1s row group of bars at a time (`second_bar_slices`: one slice
# is derived in one piece, its columns contiguous, with nothing to join): scattering them afterwards would only
# add work.
DENSE_FROM = 0.5
GRID_SLICE_BARS = 1 << 20
# Finer bars summed into coarser ones by one group-by (`_roll_up`).
ROLL_UP_PIECE_ROWS = 1 << 18


# The inputs of the toxicity score of consecutive bars of one interval, oldest first: each bar's signed flow
# (`volume_delta_notional`) and realised volatility. The score of a bar is a function of its own pair and the
# 20 pairs before it only, so a table can start anywhere given the pairs of the 20 bars before its first bar.
Window = tuple[np.ndarray, np.ndarray]


def bars_from_second_stats(
    stats: SecondStats, *, intervals: Iterable[str] = INTERVALS
) -> dict[str, pl.DataFrame]:
    """Dense bars of the month for each requested interval, keyed by interval name, in `INTERVALS` order.

    Each interval rolls up from the per-second statistics (never from a dense table of a finer interval).
    A busy month's 1s table is ~0.8 GB: where it need not be whole, use `second_bar_slices`.
    """
    wanted = _check_intervals(intervals)
    month_start, month_end = _month_seconds(stats)
    out: dict[str, pl.DataFrame] = {}
    for interval, sparse in _roll_ups(stats.frame, INTERVALS[: max(INTERVALS.index(i) for i in wanted) + 1]):
        if interval in wanted:
            out[interval], _ = interval_bars(sparse, interval, month_start, month_end, _month_lead(stats, sparse,
                                                                                                  interval))
    return {interval: out[interval] for interval in INTERVALS if interval in wanted}


def second_bar_slices(
    stats: SecondStats, rows: int, *, seconds_between: Callable[[int, int], pl.DataFrame] | None = None
) -> Iterator[pl.DataFrame]:
    """The month's dense 1s bars, `rows` bars at a time (the last slice holds the rest), oldest first.

    Together they are `bars_from_second_stats(stats, intervals=["1s"])["1s"]`, row for row and bit for bit,
    but only one slice is in memory at a time: each slice's scores see the window inputs of the 20 bars before
    it, carried over from the slice before. With `seconds_between(start, end)`, the per-second statistics of
    [start, end) s are read from it as each slice needs them (e.g. from the statistics' file, a row group at a
    time) and `stats.frame` is not used: a busy month's (~0.4 GB) need not stay in memory beside its slices.
    """
    if rows < 1:
        raise ValueError(f"rows must be positive, got {rows}")
    month_start, month_end = _month_seconds(stats)
    whole = None if seconds_between else stats.frame.rename({"second": "bar"})

    def seconds(start: int, end: int) -> pl.DataFrame:  # rows outside [start, end) are ignored by the callers
        return whole if whole is not None else seconds_between(start, end).rename({"second": "bar"})

    lead = _month_lead(stats, seconds(month_start - TOXICITY_WINDOW, month_start), "1s")
    for start in range(month_start, month_end, rows):
        end = min(month_end, start + rows)
        table, own = interval_bars(seconds(start, end), "1s", start, end, lead)
        lead = _last_bars(lead, own)
        yield table
        del table  # not held while the next slice is derived


def _last_bars(before: Window, after: Window) -> Window:
    """The window inputs of the last (up to 20) bars of `before` followed by `after`."""
    return (np.concatenate([before[0], after[0]])[-TOXICITY_WINDOW:],
            np.concatenate([before[1], after[1]])[-TOXICITY_WINDOW:])


def _month_seconds(stats: SecondStats) -> tuple[int, int]:
    """The month's bounds in epoch seconds."""
    start, end = month_bounds_us(stats.month)
    return start // US_PER_SECOND, end // US_PER_SECOND


def _month_lead(stats: SecondStats, sparse: pl.DataFrame, interval: str) -> Window:
    """The window's lead-in of the month's first bar: the 20 bars before the month, from the month before (none
    in a first month)."""
    month_start, _ = _month_seconds(stats)
    width = INTERVAL_SECONDS[interval]
    return window_inputs(sparse, interval, month_start - (TOXICITY_WINDOW * width if stats.has_previous else 0),
                         month_start)


def bars_between(
    seconds: pl.DataFrame, start: int, end: int, leads: Mapping[str, Window]
) -> tuple[dict[str, pl.DataFrame], dict[str, Window]]:
    """Dense bars of every interval over [start, end) s (day-aligned) from per-second statistics.

    `seconds` holds the non-empty seconds of [start, end) (`SECOND_STATS_SCHEMA`, returns already taken from
    the price before `start`); `leads[interval]` are the window inputs of up to 20 bars before `start` (fewer
    where fewer exist: those bars' scores are null). Returns the tables and, per interval, the window inputs of
    the last (up to 20) bars of [start, end) themselves, without the lead. The same arithmetic as the monthly
    tables, so each row equals the monthly row bit for bit.
    """
    tables: dict[str, pl.DataFrame] = {}
    tails: dict[str, Window] = {}
    for interval, sparse in _roll_ups(seconds, INTERVALS):
        tables[interval], tails[interval] = interval_bars(sparse, interval, start, end, leads[interval])
    return tables, tails


def window_tails_between(seconds: pl.DataFrame, start: int, end: int) -> dict[str, Window]:
    """Per interval, the window inputs of the last (up to 20) bars of [start, end) s: what `bars_between`
    returns as its tails, without deriving the tables."""
    tails: dict[str, Window] = {}
    for interval, sparse in _roll_ups(seconds, INTERVALS):
        width = INTERVAL_SECONDS[interval]
        tails[interval] = window_inputs(sparse, interval, max(start, end - TOXICITY_WINDOW * width), end)
    return tails


def window_inputs(sparse: pl.DataFrame, interval: str, start: int, end: int) -> Window:
    """The window inputs of every bar of `interval` in [start, end) s, empty bars included (a few bars only)."""
    width = INTERVAL_SECONDS[interval]
    if end <= start:
        return np.zeros(0), np.zeros(0)
    bars = sparse.get_column("bar")
    lo, hi = bars.search_sorted(start, side="left"), bars.search_sorted(end, side="left")
    fields = _derive_fields(_densify(sparse.slice(lo, hi - lo), start, end, width), _volatility(interval))
    return (fields.get_column("volume_delta_notional").to_numpy().copy(),
            fields.get_column("_volatility").to_numpy().copy())


def interval_bars(
    sparse: pl.DataFrame, interval: str, start: int, end: int, lead: Window
) -> tuple[pl.DataFrame, Window]:
    """Dense bars of one interval over [start, end) s, and the window inputs of its own last (up to 20) bars.

    `sparse` holds the interval's non-empty bars (rows outside [start, end) are ignored); `lead` the window
    inputs of the bars before `start`.
    """
    width = INTERVAL_SECONDS[interval]
    bars = sparse.get_column("bar")
    lo, hi = bars.search_sorted(start, side="left"), bars.search_sorted(end, side="left")
    if hi - lo > DENSE_FROM * ((end - start) // width):
        return _grid_bars(sparse, start, end, width, _volatility(interval), lead)
    return _dense_bars(sparse, start, end, width, _volatility(interval), lead)


def _volatility(interval: str) -> pl.Expr:
    return pl.col("abs_return") if interval == "1s" else pl.col("squared_return").sqrt()


def _scores(lead: Window, signed_flow: np.ndarray, volatility: np.ndarray) -> tuple[np.ndarray, Window]:
    """Scores of the bars after `lead`, and the window inputs of the last 20 bars (lead included)."""
    flows, volatilities = np.concatenate([lead[0], signed_flow]), np.concatenate([lead[1], volatility])
    scores = toxicity_scores(flows, volatilities)[len(lead[0]) :]
    return scores, (flows[-TOXICITY_WINDOW:].copy(), volatilities[-TOXICITY_WINDOW:].copy())


def _roll_ups(seconds: pl.DataFrame, intervals: Iterable[str]) -> Iterator[tuple[str, pl.DataFrame]]:
    """(interval, its non-empty bars) for each of `intervals` (a prefix of `INTERVALS`), finest first."""
    sparse = seconds.rename({"second": "bar"})
    for interval in intervals:
        if interval != "1s":
            sparse = _roll_up(sparse, INTERVAL_SECONDS[interval])
        yield interval, sparse


def _check_intervals(intervals: Iterable[str]) -> set[str]:
    wanted = set([intervals] if isinstance(intervals, str) else intervals)
    unknown = wanted - set(INTERVALS)
    if unknown or not wanted:
        raise ValueError(f"intervals must be a non-empty subset of {INTERVALS}, got {sorted(unknown) or 'none'}")
    return wanted


def _roll_up(finer: pl.DataFrame, width: int) -> pl.DataFrame:
    """Sum the finer bars into bars of `width` seconds; the coarser bar's close is the finer bars' last price.

    In pieces of about `ROLL_UP_PIECE_ROWS` finer bars, each cut where a coarser bar starts: polars' group-by
    over a busy month's 2.7 M seconds holds ~0.5 GB of temporaries, over a piece a few MB. Every coarser bar
    is summed within one piece, by the same kernel over the same values in the same order: bit for bit the
    sums of one group-by over the whole table.
    """
    if finer.height <= ROLL_UP_PIECE_ROWS:
        return _roll_up_piece(finer, width)
    bars = finer.get_column("bar")
    pieces, start = [], 0
    while start < finer.height:
        end = min(finer.height, start + ROLL_UP_PIECE_ROWS)
        if end < finer.height:  # on to the first finer bar of the next coarser bar
            end = int(bars.search_sorted(bars[end - 1] // width * width + width, side="left"))
        pieces.append(_roll_up_piece(finer.slice(start, end - start), width))
        start = end
    return pl.concat(pieces, rechunk=True)


def _roll_up_piece(finer: pl.DataFrame, width: int) -> pl.DataFrame:
    return (
        finer.with_columns((pl.col("bar") // width * width).alias("bar"))
        .set_sorted("bar")
        .group_by("bar", maintain_order=True)
        .agg(*(pl.col(name).sum() for name in SUM_STATS), pl.col("last_price").last())
    )


def _dense_bars(
    sparse: pl.DataFrame, start: int, end: int, width: int, volatility: pl.Expr, lead: Window
) -> tuple[pl.DataFrame, Window]:
    """The dense bars of [start, end): fields derived on the non-empty bars only, then scattered onto the grid.

    Every field of an empty bar is a constant (0 or null) except the score, whose window spans empty bars too;
    so only the signed flow and the volatility are laid out densely (after `lead`, the window inputs of the
    bars before `start`), and the work of the other 35 fields grows with the bars that hold trades, not with
    the grid. The non-empty bars are derived `SLICE_ROWS` at a time and scattered in place into preallocated
    columns, so memory holds the dense table and one slice, not a second, sparse copy of a busy month.
    """
    bars = sparse.get_column("bar")
    lo, hi = bars.search_sorted(start, side="left"), bars.search_sorted(end, side="left")
    rows, lead_in = (end - start) // width, len(lead[0])
    # Laid out after the lead, so the scores need no concatenated copy (a 1s month: 2 × 21 MB).
    signed_flow, realised_volatility = np.zeros(lead_in + rows), np.zeros(lead_in + rows)
    signed_flow[:lead_in], realised_volatility[:lead_in] = lead
    # Never null: numpy arrays, assigned in place (a quarter of the CPU of polars' `scatter` into zeros).
    zeros = {name: np.zeros(rows, dtype=np.int64 if FLOW_SCHEMA[name] == pl.Int64 else np.float64)
             for name in ZERO_WHEN_EMPTY}
    # Null where empty: polars columns, whose `scatter` fills the validity in place.
    nulls = {name: pl.repeat(None, rows, dtype=FLOW_SCHEMA[name], eager=True) for name in NULL_WHEN_EMPTY}
    for first in range(lo, hi, SLICE_ROWS):
        fields = _derive_fields(sparse.slice(first, min(SLICE_ROWS, hi - first)), volatility)
        position_array = (fields.get_column("bar").to_numpy() - start) // width
        signed_flow[lead_in + position_array] = fields.get_column("volume_delta_notional").to_numpy()
        realised_volatility[lead_in + position_array] = fields.get_column("_volatility").to_numpy()
        for name, column in zeros.items():
            column[position_array] = fields.get_column(name).to_numpy()
        position = pl.Series(position_array)
        for name, series in nulls.items():
            series.scatter(position, fields.get_column(name))  # in place
    columns: dict[str, pl.Series] = {
        "time": (pl.int_range(start, end, width, dtype=pl.Int64, eager=True) * US_PER_SECOND).cast(TIME_DTYPE),
        **{name: pl.Series(name, values) for name, values in zeros.items()},
        **nulls,
    }
    scores = toxicity_scores(signed_flow, realised_volatility)[lead_in:]
    columns["flow_toxicity_score"] = pl.Series(scores).fill_nan(None)
    own = (signed_flow[lead_in:][-TOXICITY_WINDOW:].copy(), realised_volatility[lead_in:][-TOXICITY_WINDOW:].copy())
    return pl.DataFrame([columns[name].alias(name) for name in FLOW_COLUMNS]), own


def _grid_bars(
    sparse: pl.DataFrame, start: int, end: int, width: int, volatility: pl.Expr, lead: Window
) -> tuple[pl.DataFrame, Window]:
    """The dense bars of [start, end) derived on the grid, in slices of `GRID_SLICE_BARS` bars.

    Each slice's scores see the window inputs of the 20 bars before it (`lead` for the first slice, the tail of
    the previous slice after that). The same per-bar arithmetic as `_dense_bars`, so both give identical tables.
    """
    slices = []
    bars = sparse.get_column("bar")
    for slice_start in range(start, end, GRID_SLICE_BARS * width):
        slice_end = min(end, slice_start + GRID_SLICE_BARS * width)
        lo, hi = bars.search_sorted(slice_start, side="left"), bars.search_sorted(slice_end, side="left")
        fields = _derive_fields(_densify(sparse.slice(lo, hi - lo), slice_start, slice_end, width), volatility)
        scores, lead = _scores(lead, fields.get_column("volume_delta_notional").to_numpy(),
                               fields.get_column("_volatility").to_numpy())
        fields = fields.with_columns(
            pl.from_epoch(pl.col("bar"), time_unit="s").cast(TIME_DTYPE).alias("time"),
            pl.Series("flow_toxicity_score", scores).fill_nan(None),
        )
        # The columns themselves, not `select`, which copies the slice's columns (polars 2.1), for nothing.
        slices.append(pl.DataFrame([fields.get_column(name) for name in FLOW_COLUMNS]))
    # One contiguous buffer per column, joined a column at a time: the parquet writer needs contiguous columns
    # (its pages must not depend on how the table was built), and rechunking the whole table there would hold
    # a busy 1s month twice (~0.8 GB more); here the slices of a column are freed as soon as it is joined.
    parts = {name: [part.get_column(name) for part in slices] for name in FLOW_COLUMNS}
    del slices
    bars = pl.DataFrame([pl.concat(parts.pop(name)).rechunk() for name in FLOW_COLUMNS])
    # A cast, even to the same dtypes, copies every column of the month: only cast when one differs.
    own = min(TOXICITY_WINDOW, (end - start) // width)  # the last bars of the range, not of its lead
    return (bars if bars.schema == pl.Schema(FLOW_SCHEMA) else bars.cast(FLOW_SCHEMA)), (lead[0][-own:],
                                                                                          lead[1][-own:])


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


def _positive_zero(value: pl.Expr) -> pl.Expr:
    """`value` with −0.0 made 0.0. A one-sided bar's entropy is −0.0 + 0.0, which polars' lazy engine returned
    as −0.0 for some rows and 0.0 for others depending on the frame (polars 2.1): a day's table and the month's
    then differed in the sign bit."""
    return pl.when(value == 0.0).then(pl.lit(0.0, dtype=pl.Float64)).otherwise(value)


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
        .then(_positive_zero((_entropy(col("taker_buy_sell_percentage")) + _entropy(col("_sell_share")))
                             .clip(0.0, 1.0)))
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
    ).collect(engine="in-memory")  # one chunk per column (the default engine's morsels cost a rechunk: a copy)
