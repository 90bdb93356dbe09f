"""Property tests: the invariants of spec §2 hold on any small trade list (hypothesis).

Each test stays well under ~20 s: few examples, no 1s grid except in the one test that needs it.
Examples are derandomised so CI runs are reproducible.
"""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import polars as pl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aperiodic_pipelines.flow import compute_flow_bars, validate_bars
from aperiodic_pipelines.trades import CANONICAL_SCHEMA, empty_trades
from tests.reference_flow import ADDITIVE_FIELDS, BUCKETS, INTERVAL_SECONDS, NULLABLE_FIELDS

MONTH = "2024-02"
START = int(datetime(2024, 2, 1, tzinfo=UTC).timestamp()) * 1_000_000
END = int(datetime(2024, 3, 1, tzinfo=UTC).timestamp()) * 1_000_000
DAY, HOUR, MINUTE = 86_400_000_000, 3_600_000_000, 60_000_000
COARSE_INTERVALS = ("1m", "5m", "15m", "30m", "1h", "4h", "1d")
RTOL = 1e-9
PROPERTY_SETTINGS = settings(
    max_examples=8, deadline=None, derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# Times: anywhere in the month, on the month's and days' edges, or crowded into its first few minutes so
# several trades share bars at every interval.
_EDGES = [0, 1, MINUTE - 1, MINUTE, HOUR - 1, HOUR, 4 * HOUR, DAY - 1, DAY, END - START - 1]
_offsets = st.one_of(
    st.integers(0, END - START - 1),
    st.sampled_from(_EDGES),
    st.integers(0, 10 * MINUTE),
    st.integers(DAY - 2 * MINUTE, DAY + 2 * MINUTE),
)
_trade = st.tuples(
    _offsets,
    st.integers(1, 4_000).map(lambda ticks: ticks * 0.5),  # price
    st.integers(1, 5_000).map(lambda lots: lots * 0.01),  # qty; notional from 0.005 to 10,000
    st.booleans(),
    st.integers(0, 5_000),  # arrival latency, µs
)


@st.composite
def tapes(draw: st.DrawFn, max_trades: int = 60) -> pl.DataFrame:
    rows = sorted(draw(st.lists(_trade, min_size=0, max_size=max_trades)), key=lambda r: r[0])
    return pl.DataFrame(
        [(START + t, START + t + lag, i, p, q, b) for i, (t, p, q, b, lag) in enumerate(rows, start=1)],
        schema=CANONICAL_SCHEMA, orient="row",
    )


def _close(got: np.ndarray | float, expected: np.ndarray | float) -> bool:
    got, expected = np.asarray(got, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    scale = float(np.abs(expected).max()) if expected.size else 0.0
    return bool(np.allclose(got, expected, rtol=RTOL, atol=RTOL * scale))


def assert_invariants(frame: pl.DataFrame, interval: str, trades: pl.DataFrame) -> None:
    validate_bars(frame, interval=interval, month=MONTH)
    assert frame.height == (END - START) // (INTERVAL_SECONDS[interval] * 1_000_000)
    in_month = trades.filter(pl.col("ts_exchange").is_between(START, END, closed="left"))
    assert frame["taker_buy_count"].sum() == in_month["is_buy"].sum()
    assert frame["taker_sell_count"].sum() == in_month.height - in_month["is_buy"].sum()
    assert _close(frame["taker_buy_volume"].sum(), in_month.filter("is_buy")["qty"].sum())

    buy, sell = frame["taker_buy_volume"].to_numpy(), frame["taker_sell_volume"].to_numpy()
    assert (buy >= 0).all() and (sell >= 0).all()
    assert _close(frame["volume_delta"].to_numpy(), buy - sell)
    side_notional = {}
    for side in ("buy", "sell"):
        counts = sum(frame[f"taker_{side}_{b}_order_count"].to_numpy() for b in BUCKETS)
        assert (counts == frame[f"taker_{side}_count"].to_numpy()).all(), side
        side_notional[side] = sum(frame[f"taker_{side}_{b}_order_volume"].to_numpy() for b in BUCKETS)
        for what in ("percentage", "count_percentage"):
            triple = frame.select(f"taker_{side}_{b}_order_{what}" for b in BUCKETS)
            defined = triple.drop_nulls()
            assert triple.null_count().row(0) in ((0, 0, 0), (triple.height - defined.height,) * 3)
            assert _close(defined.sum_horizontal().to_numpy(), np.ones(defined.height))
    assert _close(frame["volume_delta_notional"].to_numpy(), side_notional["buy"] - side_notional["sell"])

    empty = (frame["taker_buy_count"] + frame["taker_sell_count"]) == 0
    for field in NULLABLE_FIELDS:
        values = frame[field]
        if field == "flow_toxicity_score":  # an empty bar after busy ones has a score of 0 (§3)
            continue
        assert values.filter(empty).null_count() == int(empty.sum()), field  # empty bars: null everywhere
        if "percentage" in field or field == "flow_entropy":
            defined = values.drop_nulls()
            assert ((defined >= 0) & (defined <= 1)).all(), field
        if field.endswith("ratio"):
            assert (values.drop_nulls() >= 0).all(), field
    busy = frame.filter(~empty)
    assert busy["taker_buy_sell_count_percentage"].null_count() == 0
    assert busy["flow_entropy"].null_count() == 0  # every trade has qty > 0


def assert_coarse_is_sum_of_fine(fine: pl.DataFrame, coarse: pl.DataFrame, coarse_interval: str) -> None:
    rolled = (  # polars durations read "1m" as a minute, like our interval names
        fine.group_by(pl.col("time").dt.truncate(coarse_interval), maintain_order=True)
        .agg(pl.col(f).sum() for f in ADDITIVE_FIELDS)
        .sort("time")
    )
    assert rolled["time"].equals(coarse["time"])
    for field in ADDITIVE_FIELDS:
        got, expected = coarse[field].to_numpy(), rolled[field].to_numpy()
        if field.endswith("_count"):
            assert (got == expected).all(), (coarse_interval, field)
        else:
            assert _close(got, expected), (coarse_interval, field)


@PROPERTY_SETTINGS
@given(tape=tapes(), previous=tapes(max_trades=20))
def test_invariants_and_rollups_exchange(tape: pl.DataFrame, previous: pl.DataFrame) -> None:
    previous = previous.with_columns(  # move to January, ids below the current month's
        pl.col("ts_exchange") - 31 * DAY, pl.col("ts_arrival") - 31 * DAY, pl.col("trade_id") - 1_000
    )
    bars = compute_flow_bars(tape, previous, month=MONTH, intervals=COARSE_INTERVALS)
    for interval in COARSE_INTERVALS:
        assert_invariants(bars[interval], interval, tape)
    for fine, coarse in zip(COARSE_INTERVALS, COARSE_INTERVALS[1:], strict=False):
        assert_coarse_is_sum_of_fine(bars[fine], bars[coarse], coarse)


@PROPERTY_SETTINGS
@given(tape=tapes())
def test_invariants_true_variant(tape: pl.DataFrame) -> None:
    bars = compute_flow_bars(tape, None, month=MONTH, timestamp="true", intervals=("1m", "1h", "1d"))
    by_arrival = tape.with_columns(pl.col("ts_arrival").alias("ts_exchange"))
    for interval in ("1m", "1h", "1d"):
        assert_invariants(bars[interval], interval, by_arrival)
    assert_coarse_is_sum_of_fine(bars["1m"], bars["1h"], "1h")
    assert_coarse_is_sum_of_fine(bars["1h"], bars["1d"], "1d")


@PROPERTY_SETTINGS
@given(tape=tapes())
def test_empty_previous_changes_only_the_score(tape: pl.DataFrame) -> None:
    first = compute_flow_bars(tape, None, month=MONTH, intervals=("1h",))["1h"]
    after_empty = compute_flow_bars(tape, empty_trades(), month=MONTH, intervals=("1h",))["1h"]
    assert first.drop("flow_toxicity_score").equals(after_empty.drop("flow_toxicity_score"))
    assert first["flow_toxicity_score"][:20].null_count() == 20


@settings(max_examples=2, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(tape=tapes(max_trades=40))
def test_seconds_roll_up_to_minutes_and_days(tape: pl.DataFrame) -> None:
    bars = compute_flow_bars(tape, None, month=MONTH, intervals=("1s", "1m", "1d"))
    assert_invariants(bars["1s"], "1s", tape)
    assert_coarse_is_sum_of_fine(bars["1s"], bars["1m"], "1m")
    assert_coarse_is_sum_of_fine(bars["1s"], bars["1d"], "1d")
