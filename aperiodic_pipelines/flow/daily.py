"""The open month, one day at a time: the bars of day d from day d's trades and a bounded carry (issue 15).

A monthly file (spec §3) is computed from raw months m−1 and m; its rows for day d depend on what came before d
only through (a) the last price before d, carried forward within the two-month span, and (b) for each interval
the signed flow and realised volatility of the 20 bars before d's first bar (the score's window). `FlowCarry`
holds exactly that, so `compute_day_flow_bars` costs one day of trades whatever day of the month it is, and its
rows equal the monthly rows bit for bit (the same per-second sums, roll-ups and per-bar arithmetic: see
`bars.bars_between`).

The carry keeps two spans, because the span of §3 restarts each month:

- `this_month`: the span of month m's file (prices from the start of m−1): feeds day d's bars.
- `next_month`: the span month m+1's file will use (prices only from the start of m, and for `true` the raw
  months m and m+1). At the end of m's last day it becomes the next carry's `this_month`, so day 1 of m+1 needs
  no re-read of month m. Both spans see the same trades and the same bars except before month m's first trade
  (the first return of the month has no earlier price in the new span) and, for `true`, on the first and the
  last day of the month (trades of raw m−1 arriving on day 1 belong to the old span only, trades of raw m+1
  arriving on the last day to the new one only); the day's work is redone for `next_month` only on such days.

Timestamp variants. `exchange`: day d's trades are raw day d (exchange time in d). `true`: day d's trades are
those of the span's raw months whose arrival time lies in d; the daily path reads raw days d−1, d and d+1 and
relies on every trade arriving within a day of its exchange time (checked on raw day d, which every day's step
reads once, so the whole tape is checked): so the `true` bars of day d wait for raw day d+1.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, timedelta

import numpy as np
import polars as pl

from aperiodic_pipelines.domain.errors import AperiodicError, InvalidTradesError
from aperiodic_pipelines.domain.months import check_day, day_bounds_us, month_of_day
from aperiodic_pipelines.flow import seconds as second_stats
from aperiodic_pipelines.flow.bars import Window, _roll_ups, bars_between, window_inputs, window_tails_between
from aperiodic_pipelines.flow.grid import (
    INTERVAL_SECONDS,
    INTERVALS,
    TOXICITY_WINDOW,
    US_PER_SECOND,
    month_bounds_us,
    shift_month,
)
from aperiodic_pipelines.flow.seconds import (
    TIMESTAMP_COLUMN,
    TIMESTAMPS,
    _as_lazy,
    _with_returns,
    compute_second_stats,
)

US_PER_DAY = 86_400 * US_PER_SECOND
SPANS = ("this_month", "next_month")

# `FlowCarry.to_frame()`: one row per (span, interval).
CARRY_SCHEMA: dict[str, pl.DataType] = {
    "day": pl.String(),  # the day the carry feeds (YYYY-MM-DD)
    "timestamp": pl.String(),
    "span": pl.String(),  # this_month | next_month
    "last_price": pl.Float64(),  # null: no trade yet in the span
    "interval": pl.String(),
    "signed_flow": pl.List(pl.Float64()),  # oldest first, at most TOXICITY_WINDOW values
    "volatility": pl.List(pl.Float64()),
}


class InvalidCarryError(AperiodicError, ValueError):
    """A carry that does not fit the day asked for, or a carry table that is not one."""


def _empty_windows() -> dict[str, Window]:
    return {interval: (np.zeros(0), np.zeros(0)) for interval in INTERVALS}


@dataclass(frozen=True)
class SpanState:
    """What the bars after a moment depend on, within one two-month span: the last price at or before that
    moment (None before the span's first trade) and, per interval, the window inputs (signed flow, realised
    volatility) of the up to 20 bars before it (fewer only at the start of an instrument's first month)."""

    last_price: float | None
    windows: dict[str, Window] = field(default_factory=_empty_windows)

    def extended(self, tails: dict[str, Window], last_price: float | None) -> SpanState:
        """The state after bars whose last (up to 20) window inputs are `tails`."""
        windows = {}
        for interval in INTERVALS:
            (flows, volatilities), (new_flows, new_volatilities) = self.windows[interval], tails[interval]
            windows[interval] = (np.concatenate([flows, new_flows])[-TOXICITY_WINDOW:],
                                 np.concatenate([volatilities, new_volatilities])[-TOXICITY_WINDOW:])
        return SpanState(last_price=last_price, windows=windows)


@dataclass(frozen=True)
class FlowCarry:
    """Everything `compute_day_flow_bars` needs from before `day` (see the module docstring).

    Size: two spans × (one price + 8 intervals × 20 × 2 floats) = 642 numbers, a few kB as parquet.
    """

    day: str
    timestamp: str
    this_month: SpanState
    next_month: SpanState

    @property
    def month(self) -> str:
        return month_of_day(self.day)

    def to_frame(self) -> pl.DataFrame:
        """The carry as a table (one row per span and interval) that round-trips bit for bit through parquet."""
        rows = []
        for span in SPANS:
            state: SpanState = getattr(self, span)
            for interval in INTERVALS:
                flows, volatilities = state.windows[interval]
                rows.append({"day": self.day, "timestamp": self.timestamp, "span": span,
                             "last_price": state.last_price, "interval": interval,
                             "signed_flow": flows.tolist(), "volatility": volatilities.tolist()})
        return pl.DataFrame(rows, schema=CARRY_SCHEMA)

    @classmethod
    def from_frame(cls, frame: pl.DataFrame) -> FlowCarry:
        """The carry `to_frame` wrote; `InvalidCarryError` naming what is wrong for anything else."""
        if dict(frame.schema) != CARRY_SCHEMA:
            raise InvalidCarryError(f"carry table: schema {dict(frame.schema)} is not {CARRY_SCHEMA}")
        days, timestamps = frame.get_column("day").unique().to_list(), frame.get_column("timestamp").unique().to_list()
        if len(days) != 1 or len(timestamps) != 1:
            raise InvalidCarryError(f"carry table: one day and one timestamp expected, got {days} and {timestamps}")
        day, timestamp = check_day(days[0]), timestamps[0]
        if timestamp not in TIMESTAMPS:
            raise InvalidCarryError(f"carry table for {day}: unknown timestamp variant {timestamp!r}")
        spans = {}
        for span in SPANS:
            rows = {row["interval"]: row for row in frame.filter(pl.col("span") == span).iter_rows(named=True)}
            if sorted(rows) != sorted(INTERVALS) or len(rows) != frame.filter(pl.col("span") == span).height:
                raise InvalidCarryError(f"carry table for {day}: span {span} must have one row per interval "
                                        f"{INTERVALS}, got {sorted(rows)}")
            prices = {row["last_price"] for row in rows.values()}
            if len(prices) != 1:
                raise InvalidCarryError(f"carry table for {day}: span {span} has several last prices {prices}")
            price = next(iter(prices))
            if price is not None and not (0 < price < np.inf):
                raise InvalidCarryError(f"carry table for {day}: span {span} last price {price} is not a price")
            windows = {}
            for interval, row in rows.items():
                flows, volatilities = row["signed_flow"], row["volatility"]
                if (flows is None or volatilities is None or len(flows) != len(volatilities)
                        or len(flows) > TOXICITY_WINDOW or None in flows or None in volatilities):
                    raise InvalidCarryError(f"carry table for {day}: span {span} interval {interval}: the window "
                                            f"must be two lists of equal length <= {TOXICITY_WINDOW} without nulls")
                window = (np.array(flows, dtype=np.float64), np.array(volatilities, dtype=np.float64))
                if not (np.isfinite(window[0]).all() and np.isfinite(window[1]).all() and (window[1] >= 0).all()):
                    raise InvalidCarryError(f"carry table for {day}: span {span} interval {interval}: window values "
                                            "must be finite, volatilities >= 0")
                windows[interval] = window
            spans[span] = SpanState(last_price=price, windows=windows)
        return cls(day=day, timestamp=timestamp, this_month=spans["this_month"], next_month=spans["next_month"])

    def equals(self, other: FlowCarry) -> bool:
        """Same day, variant, prices and window inputs, bit for bit."""
        return self.to_frame().equals(other.to_frame(), null_equal=True)


@dataclass(frozen=True)
class DayFlowBars:
    """The bars of one day (interval → dense table) and the carry for the day after."""

    day: str
    bars: dict[str, pl.DataFrame]
    carry: FlowCarry


def raw_days_needed(day: str, timestamp: str) -> tuple[str, ...]:
    """The raw (exchange-time) days whose trades `compute_day_flow_bars` needs for `day`: `exchange` day d only,
    `true` days d−1, d and d+1 (d+1 even on a month's last day: the next month's span sees its early arrivals).
    A raw day before the instrument's first trade is an empty table; one upstream has not published makes the
    day wait."""
    check_day(day)
    if timestamp not in TIMESTAMPS:
        raise ValueError(f"timestamp must be one of {TIMESTAMPS}, got {timestamp!r}")
    if timestamp == "exchange":
        return (day,)
    today = date.fromisoformat(day)
    return tuple((today + timedelta(days=offset)).isoformat() for offset in (-1, 0, 1))


def month_start_carry(
    previous: pl.DataFrame | pl.LazyFrame | None,
    *,
    month: str,
    timestamp: str = "exchange",
    first_day_trades: pl.DataFrame | pl.LazyFrame | None = None,
) -> FlowCarry:
    """The carry for day 1 of `month`, computed from the trades of raw month m−1 (`previous`; None for the
    instrument's first month, an empty table for a month without trades), as the monthly computation does.

    For `true`, `first_day_trades` are raw day 1 of `month`: its trades that arrived before the month belong to
    the window. Reads the previous month's trades once (what starting the daily path mid-stream costs); day to
    day, and from one month to the next, `compute_day_flow_bars` hands on the carry itself.
    """
    if timestamp not in TIMESTAMPS:
        raise ValueError(f"timestamp must be one of {TIMESTAMPS}, got {timestamp!r}")
    month_start, _ = month_bounds_us(month)
    day = f"{month}-01"
    if previous is None:
        return FlowCarry(day=day, timestamp=timestamp, this_month=SpanState(None), next_month=SpanState(None))
    if timestamp == "true" and first_day_trades is None:
        raise ValueError(f"month_start_carry({month}, timestamp='true') needs first_day_trades (raw day {day}): "
                         "its trades that arrived before the month are in the window")
    if timestamp == "exchange" or first_day_trades is None:
        current = _as_lazy(previous, f"trades before {month}").clear()
    else:
        current = _as_lazy(first_day_trades, f"trades of {day}")
    stats = compute_second_stats(current, previous, month=month, timestamp=timestamp)
    start_second = month_start // US_PER_SECOND
    lead_seconds = stats.frame.filter(pl.col("second") < start_second)
    time_col = TIMESTAMP_COLUMN[timestamp]
    before = [_as_lazy(previous, f"trades before {month}"), current]
    windows = {}
    for interval, sparse in _roll_ups(lead_seconds, INTERVALS):
        width = INTERVAL_SECONDS[interval]
        windows[interval] = window_inputs(sparse, interval, start_second - TOXICITY_WINDOW * width, start_second)
    price = _last_price(pl.concat(before).filter(pl.col(time_col) < month_start), time_col)
    return FlowCarry(day=day, timestamp=timestamp, this_month=SpanState(price, windows), next_month=SpanState(None))


def compute_day_flow_bars(
    trades: pl.DataFrame | pl.LazyFrame, carry: FlowCarry, *, day: str
) -> DayFlowBars:
    """The bars of complete UTC day `day` at every interval, equal row for row to the monthly file's, and the
    carry for the next day.

    `trades`: canonical trades, `exchange` variant raw day d (exchange time in d, sorted); `true` variant raw
    days d−1, d and d+1, each where it exists (a raw day before the instrument's first trade has none). An
    empty table is a day without trades, not a missing one: never pass a day upstream has not published.
    `carry` must be the carry for `day` (the previous day's result, or `month_start_carry` on day 1).
    """
    check_day(day)
    if carry.day != day:
        raise InvalidCarryError(f"the carry is for {carry.day}, not {day}: days are computed in order, each from "
                                "the previous day's carry")
    timestamp, month = carry.timestamp, month_of_day(day)
    day_start, day_end = day_bounds_us(day)
    time_col = TIMESTAMP_COLUMN[timestamp]
    name = f"trades of {day}"
    # Read once (a day, or three for `true`): the checks and the passes below each scan it.
    lazy = _as_lazy(trades, name).collect().lazy()
    first_day = day.endswith("-01")
    next_seed = carry.next_month.last_price
    if timestamp == "exchange":
        _check_range(lazy, "ts_exchange", day_start, day_end, name, "raw day")
        arriving = this_set = next_set = lazy
    else:
        _check_arrivals(lazy, day_start, day_end, name)
        arriving = lazy.filter((pl.col(time_col) >= day_start) & (pl.col(time_col) < day_end))
        this_set = _in_raw_months(arriving, shift_month(month, -1), month)
        next_set = _in_raw_months(arriving, month, shift_month(month, 1))
        if first_day:  # the new span's price starts with raw month m's trades that arrived before the month
            next_seed = _last_price(_in_raw_months(lazy, month, month).filter(pl.col(time_col) < day_start),
                                    time_col)
    this_aggregate = _day_aggregate(this_set, timestamp, day_start, day_end, name)
    this_seconds = _with_returns(this_aggregate, carry.this_month.last_price)
    start, end = day_start // US_PER_SECOND, day_end // US_PER_SECOND
    bars, tails = bars_between(this_seconds, start, end, carry.this_month.windows)
    this_after = carry.this_month.extended(tails, _price_after(this_seconds, carry.this_month.last_price))

    # The spans see the same trades unless some that arrived on d are of raw month m−1 or m+1 (`true` only).
    same_trades = timestamp == "exchange" or _none_outside_month(arriving, month)
    if same_trades and _same_price(next_seed, carry.this_month.last_price):
        next_seconds, next_tails = this_seconds, tails
    else:
        next_aggregate = this_aggregate if same_trades else _day_aggregate(next_set, timestamp, day_start,
                                                                           day_end, name)
        next_seconds = _with_returns(next_aggregate, next_seed)
        next_tails = window_tails_between(next_seconds, start, end)
    next_after = carry.next_month.extended(next_tails, _price_after(next_seconds, next_seed))

    following = (date.fromisoformat(day) + timedelta(days=1)).isoformat()
    if month_of_day(following) == month:
        new_carry = FlowCarry(following, timestamp, this_month=this_after, next_month=next_after)
    else:  # the month's last day: the new span takes over, and the one after it starts empty
        new_carry = FlowCarry(following, timestamp, this_month=next_after, next_month=SpanState(None))
    return DayFlowBars(day=day, bars=bars, carry=new_carry)


def _same_price(left: float | None, right: float | None) -> bool:
    return (left is None and right is None) or (left is not None and right is not None
                                                and np.float64(left).tobytes() == np.float64(right).tobytes())


def _none_outside_month(trades: pl.LazyFrame, month: str) -> bool:
    lo, hi = month_bounds_us(month)
    ts = pl.col("ts_exchange")
    return trades.select(((ts < lo) | (ts >= hi)).sum()).collect().item() == 0


def _price_after(seconds: pl.DataFrame, seed: float | None) -> float | None:
    return seconds.get_column("last_price")[-1] if seconds.height else seed


def _last_price(trades: pl.LazyFrame, time_col: str) -> float | None:
    """The price of the last trade by (time, trade_id), None without trades."""
    last = trades.select(time_col, "trade_id", "price").top_k(1, by=[time_col, "trade_id"]).collect()
    return last.get_column("price").item() if last.height else None


def _in_raw_months(trades: pl.LazyFrame, first: str, last: str) -> pl.LazyFrame:
    lo, hi = month_bounds_us(first)[0], month_bounds_us(last)[1]
    return trades.filter((pl.col("ts_exchange") >= lo) & (pl.col("ts_exchange") < hi))


def _check_range(trades: pl.LazyFrame, column: str, lo: int, hi: int, name: str, what: str) -> None:
    """Every trade's `column` in [lo, hi) µs, or InvalidTradesError naming the count and the range seen."""
    ts = pl.col(column)
    row = trades.select(((ts < lo) | (ts >= hi)).sum().alias("n"), ts.min().alias("lo"),
                        ts.max().alias("hi")).collect().row(0, named=True)
    if row["n"]:
        raise InvalidTradesError(f"{name}: {row['n']} trades have {column} outside the {what} "
                                 f"(range seen: {row['lo']}..{row['hi']} µs, expected {lo}..{hi - 1})")


def _check_arrivals(trades: pl.LazyFrame, day_start: int, day_end: int, name: str) -> None:
    """`true` variant: raw days d−1..d+1 only, arrival times on every trade, and raw day d's trades arriving
    within a day of it (what makes raw days d−1..d+1 hold every trade that arrived on day d)."""
    missing = trades.select(pl.col("ts_arrival").is_null().sum()).collect().item()
    if missing:
        raise InvalidTradesError(f"{name}: {missing} trades have no ts_arrival; the 'true' variant needs an "
                                 "arrival time on every trade")
    _check_range(trades, "ts_exchange", day_start - US_PER_DAY, day_end + US_PER_DAY, name,
                 "raw days d−1..d+1")
    raw_day = trades.filter((pl.col("ts_exchange") >= day_start) & (pl.col("ts_exchange") < day_end))
    _check_range(raw_day, "ts_arrival", day_start - US_PER_DAY, day_end + US_PER_DAY, f"{name} (raw day)",
                 "days d−1..d+1 (the daily true variant reads arrivals within a day of exchange time)")


def _day_aggregate(trades: pl.LazyFrame, timestamp: str, day_start: int, day_end: int, name: str) -> pl.DataFrame:
    """The day's per-second sums (no returns yet), by the monthly computation's own functions."""
    if timestamp == "exchange":
        raw_month = month_of_day(_day_of(day_start))
        rows = trades.select(pl.len()).collect().item()
        stream = [(trades, raw_month, name)]
        # The monthly computation's own passes (numpy for a small input, the compiled loop for a big one: both
        # add each second's trades in row order from 0.0, so they agree bit for bit).
        parts = second_stats._aggregate_at_once(stream) if rows <= second_stats.STREAM_BATCH_ROWS else [
            second_stats._aggregate_stream(stream, day_start, day_end)]
    else:
        parts = second_stats._aggregate_by_day(trades, TIMESTAMP_COLUMN[timestamp], day_start, day_end, name)
    return pl.concat(parts, rechunk=True) if parts else pl.DataFrame(schema=second_stats._AGGREGATE_SCHEMA)


def _day_of(us: int) -> str:
    return (date(1970, 1, 1) + timedelta(days=us // US_PER_DAY)).isoformat()
