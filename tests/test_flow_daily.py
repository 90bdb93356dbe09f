"""The open month day by day (issue 15): every daily table equals the monthly table's rows bit for bit.

Each test chains `compute_day_flow_bars` over every day of one or two months, starting from `month_start_carry`
(or the instrument's first month), round-tripping the carry through parquet every day as a later run would
load it, and compares the concatenated daily tables with `compute_flow_bars` of each whole month: same schema,
nulls in the same places, float columns equal as bytes.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from aperiodic_pipelines.domain.errors import InvalidBarsError, InvalidTradesError
from aperiodic_pipelines.domain.months import day_bounds_us, days_of_month, shift_month
from aperiodic_pipelines.flow import (
    CARRY_SCHEMA,
    FLOW_COLUMNS,
    INTERVALS,
    FlowCarry,
    InvalidCarryError,
    compute_day_flow_bars,
    compute_flow_bars,
    month_start_carry,
    raw_days_needed,
    validate_month_bars,
)
from aperiodic_pipelines.synthetic import generate_tape
from aperiodic_pipelines.trades import CANONICAL_SCHEMA, empty_trades

US_PER_DAY = 86_400_000_000
US_PER_HOUR = 3_600_000_000


def assert_same_bits(got: pl.DataFrame, expected: pl.DataFrame, label: str) -> None:
    assert got.schema == expected.schema, label
    assert got.height == expected.height, label
    for name in FLOW_COLUMNS:
        a, b = got.get_column(name), expected.get_column(name)
        nulls = (a.is_null() != b.is_null()).to_numpy()
        assert not nulls.any(), f"{label} {name}: nulls differ at rows {np.flatnonzero(nulls)[:5]}"
        if a.dtype == pl.Float64:
            left, right = a.fill_null(0.0).to_numpy(), b.fill_null(0.0).to_numpy()
            differ = left.view(np.int64) != right.view(np.int64)
            assert not differ.any(), (
                f"{label} {name}: bits differ at rows {np.flatnonzero(differ)[:5]}, e.g. "
                f"{left[differ][:3]} vs {right[differ][:3]}"
            )
        else:
            assert a.equals(b, null_equal=True), f"{label} {name}"


def raw_days(tape: pl.DataFrame, day: str, timestamp: str) -> pl.DataFrame:
    """What the source hands the daily step: the raw days `raw_days_needed` names, concatenated."""
    return pl.concat([tape.filter(pl.col("ts_exchange").is_between(*day_bounds_us(raw), closed="left"))
                      for raw in raw_days_needed(day, timestamp)])


def test_raw_days_needed() -> None:
    assert raw_days_needed("2024-02-29", "exchange") == ("2024-02-29",)
    assert raw_days_needed("2024-02-29", "true") == ("2024-02-28", "2024-02-29", "2024-03-01")
    assert raw_days_needed("2024-01-01", "true") == ("2023-12-31", "2024-01-01", "2024-01-02")
    with pytest.raises(ValueError, match="timestamp"):
        raw_days_needed("2024-01-01", "arrival")


def round_trip(carry: FlowCarry, tmp_path) -> FlowCarry:
    path = tmp_path / f"carry-{carry.day}.parquet"
    carry.to_frame().write_parquet(path)
    loaded = FlowCarry.from_frame(pl.read_parquet(path))
    assert loaded.equals(carry)
    return loaded


def check_chain(tapes: dict[str, pl.DataFrame | None], months: list[str], timestamp: str, tmp_path) -> FlowCarry:
    """Chain the days of `months` (consecutive) and compare each with its monthly tables.

    `tapes[m]` is raw month m (None: no such month, the instrument starts after it).
    """
    first = months[0]
    previous = tapes.get(shift_month(first, -1))
    tape = pl.concat([t for t in tapes.values() if t is not None]).sort("ts_exchange", "trade_id")
    carry = month_start_carry(previous, month=first, timestamp=timestamp,
                              first_day_trades=raw_days(tapes[first], f"{first}-01", "exchange"))
    for month in months:
        monthly = compute_flow_bars(tapes[month], tapes.get(shift_month(month, -1)), month=month, timestamp=timestamp)
        daily: dict[str, list[pl.DataFrame]] = {interval: [] for interval in INTERVALS}
        for day in days_of_month(month):
            result = compute_day_flow_bars(raw_days(tape, day, timestamp), round_trip(carry, tmp_path), day=day)
            for interval in INTERVALS:
                daily[interval].append(result.bars[interval])
            carry = result.carry
        for interval in INTERVALS:
            assert [d.height for d in daily[interval]] == [86_400 // _seconds(interval)] * len(daily[interval])
            assert_same_bits(pl.concat(daily[interval]), monthly[interval], f"{timestamp} {month} {interval}")
    return carry


def _seconds(interval: str) -> int:
    return {"1s": 1, "1m": 60, "5m": 300, "15m": 900, "30m": 1_800, "1h": 3_600, "4h": 14_400, "1d": 86_400}[
        interval]


def with_far_arrivals(tape: pl.DataFrame, seed: int, month: str) -> pl.DataFrame:
    """Arrival times up to 20 h late or 3 h early for 3 % of the trades, and every trade of the month's first
    and last two hours arriving in the month before or after: arrivals cross days and months both ways (raw
    m−1 trades arriving in m, raw m+1 trades arriving before it starts), always within a day."""
    rng = np.random.default_rng(seed)
    far = rng.random(tape.height) < 0.03
    shift = rng.integers(-3 * US_PER_HOUR, 20 * US_PER_HOUR, size=tape.height)
    exchange = tape.get_column("ts_exchange").to_numpy()
    start, end = day_bounds_us(f"{month}-01")[0], day_bounds_us(days_of_month(month)[-1])[1]
    shift = np.where(exchange < start + 2 * US_PER_HOUR, -3 * US_PER_HOUR, np.where(far, shift, 2_000))
    shift = np.where(exchange >= end - 2 * US_PER_HOUR, 3 * US_PER_HOUR, shift)
    assert ((exchange + shift < start) | (exchange + shift >= end)).sum() >= 4
    return tape.with_columns(pl.Series("ts_arrival", exchange + shift, dtype=pl.Int64))


def tapes_for(months: list[str], n_trades: int, seed: int, timestamp: str) -> dict[str, pl.DataFrame]:
    tapes = {}
    for index, month in enumerate(months):
        tape = generate_tape(month, n_trades, seed=seed + index, start_price=40_000.0 + 500 * index,
                             first_trade_id=1 + index * 10_000_000)
        tapes[month] = with_far_arrivals(tape, seed + 50 + index, month) if timestamp == "true" else tape
    return tapes


@pytest.mark.parametrize("timestamp", ["exchange", "true"])
def test_days_of_two_months_chained_equal_the_monthly_tables(timestamp: str, tmp_path) -> None:
    """From month_start_carry (read from raw m−1) through every day of m and, via the carry only, of m+1:
    the first 20 bars of m+1 at every interval take their window from the carry."""
    tapes = tapes_for(["2024-01", "2024-02", "2024-03"], 2_500, seed=11, timestamp=timestamp)
    carry = check_chain(tapes, ["2024-02", "2024-03"], timestamp, tmp_path)
    assert carry.day == "2024-04-01"
    # Handed on across the month's end, the carry is the one read afresh from the closed month's trades.
    fresh = month_start_carry(tapes["2024-03"], month="2024-04", timestamp=timestamp,
                              first_day_trades=empty_trades())
    assert carry.equals(fresh)


@pytest.mark.parametrize("timestamp", ["exchange", "true"])
def test_an_instruments_first_month_and_the_next(timestamp: str, tmp_path) -> None:
    """No month before: the first 20 bars have no window (null scores), prices start with the first trade."""
    tapes = {"2023-12": None, **tapes_for(["2024-01", "2024-02"], 1_500, seed=21, timestamp=timestamp)}
    carry = check_chain(tapes, ["2024-01", "2024-02"], timestamp, tmp_path)
    assert carry.this_month.last_price is not None


def test_days_without_trades_and_a_month_starting_late(tmp_path) -> None:
    """A sparse tape: many days without trades (an empty table is a day with no trades), a month whose first
    trade is on day 16 (its first return has a previous price in the month's own span, not in the next month's,
    and the next month's daily window reaches it), and an empty previous month (20 empty bars, not a first
    month)."""
    december = generate_tape("2023-12", 40, seed=31)
    january = generate_tape("2024-01", 200, seed=32, first_trade_id=10_000)
    january = january.filter(pl.col("ts_exchange") >= day_bounds_us("2024-01-16")[0])
    january = january.filter(~pl.col("ts_exchange").is_between(*day_bounds_us("2024-01-20"), closed="left"))
    february = generate_tape("2024-02", 60, seed=33, first_trade_id=20_000)
    assert any(raw_days(february, day, "exchange").is_empty() for day in days_of_month("2024-02"))
    check_chain({"2023-12": december, "2024-01": january, "2024-02": february}, ["2024-01", "2024-02"],
                "exchange", tmp_path)
    check_chain({"2023-12": empty_trades(), "2024-01": january}, ["2024-01"], "exchange", tmp_path)


def test_true_variant_price_from_an_early_arrival_before_the_month(tmp_path) -> None:
    """Month m+1's span takes its first price from a raw-m trade that arrived before m began, when m has no other
    trade before m+1's window: the daily carry must see it too."""
    december = generate_tape("2023-12", 300, seed=41)
    january_start = day_bounds_us("2024-01-01")[0]
    early = pl.DataFrame(
        {"ts_exchange": [january_start + 1_000], "ts_arrival": [january_start - 5_000], "trade_id": [9_999_999],
         "price": [45_678.9], "qty": [0.5], "is_buy": [True]},
        schema=CANONICAL_SCHEMA,
    )
    late_january = generate_tape("2024-01", 400, seed=42, first_trade_id=10_000_000)
    late_january = late_january.filter(pl.col("ts_exchange") >= day_bounds_us("2024-01-25")[0])
    january = pl.concat([early, late_january])
    february = generate_tape("2024-02", 300, seed=43, first_trade_id=20_000_000)
    check_chain({"2023-12": december, "2024-01": january, "2024-02": february}, ["2024-01", "2024-02"], "true",
                tmp_path)


def test_sparse_or_grid_derivation_and_the_compiled_pass_agree(monkeypatch, tmp_path) -> None:
    """Whichever derivation (fields on the non-empty bars or on the grid, in small slices) and whichever
    per-second pass (numpy at once or the compiled streaming loop in small batches) each side takes."""
    from aperiodic_pipelines.flow import bars as bars_module
    from aperiodic_pipelines.flow import seconds as seconds_module

    tapes = tapes_for(["2024-05", "2024-06"], 1_200, seed=51, timestamp="exchange")
    monkeypatch.setattr(seconds_module, "STREAM_BATCH_ROWS", 97)
    monkeypatch.setattr(bars_module, "SLICE_ROWS", 31)
    monkeypatch.setattr(bars_module, "GRID_SLICE_BARS", 500)
    monkeypatch.setattr(bars_module, "DENSE_FROM", 0.01)
    check_chain(tapes, ["2024-06"], "exchange", tmp_path)


def test_the_carry_is_small_and_round_trips_exactly() -> None:
    tapes = tapes_for(["2024-01", "2024-02"], 800, seed=61, timestamp="exchange")
    carry = month_start_carry(tapes["2024-01"], month="2024-02")
    frame = carry.to_frame()
    assert dict(frame.schema) == CARRY_SCHEMA
    assert frame.height == 2 * len(INTERVALS)
    windows = frame.filter(pl.col("span") == "this_month")
    assert windows.get_column("signed_flow").list.len().to_list() == [20] * len(INTERVALS)
    # the new span of the open month starts empty: nothing of it is known before its first day
    assert frame.filter(pl.col("span") == "next_month").get_column("signed_flow").list.len().sum() == 0
    assert FlowCarry.from_frame(frame).equals(carry)
    nudged = frame.with_columns(pl.col("last_price") * (1 + 2**-52))
    assert not FlowCarry.from_frame(nudged).equals(carry)


def test_a_day_waits_for_the_day_before(tmp_path) -> None:
    """A carry is for one day: skipping a day (not yet published upstream) is refused, never bars from a gap."""
    tape = tapes_for(["2024-01", "2024-02"], 800, seed=71, timestamp="exchange")
    carry = month_start_carry(tape["2024-01"], month="2024-02")
    with pytest.raises(InvalidCarryError, match=r"carry is for 2024-02-01, not 2024-02-02"):
        compute_day_flow_bars(raw_days(tape["2024-02"], "2024-02-02", "exchange"), carry, day="2024-02-02")


def test_trades_outside_the_day_are_an_error() -> None:
    tape = tapes_for(["2024-01", "2024-02"], 800, seed=81, timestamp="exchange")
    carry = month_start_carry(tape["2024-01"], month="2024-02")
    two_days = tape["2024-02"].filter(pl.col("ts_exchange") < day_bounds_us("2024-02-02")[1])
    with pytest.raises(InvalidTradesError, match=r"trades of 2024-02-01: \d+ trades have ts_exchange outside"):
        compute_day_flow_bars(two_days, carry, day="2024-02-01")


def test_true_variant_refuses_an_arrival_more_than_a_day_late() -> None:
    tape = tapes_for(["2024-01", "2024-02"], 800, seed=91, timestamp="true")
    carry = month_start_carry(tape["2024-01"], month="2024-02", timestamp="true",
                              first_day_trades=raw_days(tape["2024-02"], "2024-02-01", "exchange"))
    trades = raw_days(tape["2024-02"], "2024-02-01", "true")
    late = trades.with_columns(
        pl.when(pl.col("trade_id") == trades.get_column("trade_id")[0])
        .then(pl.col("ts_arrival") + 3 * US_PER_DAY).otherwise(pl.col("ts_arrival")).alias("ts_arrival"))
    with pytest.raises(InvalidTradesError, match=r"1 trades have ts_arrival outside the days d−1..d\+1"):
        compute_day_flow_bars(late, carry, day="2024-02-01")
    with pytest.raises(ValueError, match=r"needs first_day_trades"):
        month_start_carry(tape["2024-01"], month="2024-02", timestamp="true")


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        (lambda f: f.drop("volatility"), "schema"),
        (lambda f: f.filter(pl.col("interval") != "1h"), "one row per interval"),
        (lambda f: f.with_columns(pl.col("signed_flow").list.slice(0, 3)), "equal length"),
        (lambda f: f.with_columns(pl.when(pl.col("interval") == "1m").then(1.0).otherwise(pl.col("last_price"))
                                  .alias("last_price")), "several last prices"),
        (lambda f: f.with_columns(pl.lit("2024-02-30").alias("day")), "not a calendar date"),
        (lambda f: f.with_columns(pl.col("volatility").list.eval(pl.element() * -1.0)), "volatilities >= 0"),
        (lambda f: f.with_columns(pl.lit(-1.0).alias("last_price")), "not a price"),
    ],
)
def test_a_bad_carry_table_is_refused(tamper, message: str) -> None:
    tape = tapes_for(["2024-01"], 500, seed=101, timestamp="exchange")
    frame = month_start_carry(tape["2024-01"], month="2024-02").to_frame()
    with pytest.raises(ValueError, match=message):
        FlowCarry.from_frame(tamper(frame))


def test_daily_tables_pass_the_contract_checks_for_their_day() -> None:
    """`validate_month_bars(..., month=day)` checks a daily table's dense grid: 86,400 rows at 1s … 1 at 1d."""
    tape = tapes_for(["2024-01", "2024-02"], 800, seed=111, timestamp="exchange")
    carry = month_start_carry(tape["2024-01"], month="2024-02")
    result = compute_day_flow_bars(raw_days(tape["2024-02"], "2024-02-01", "exchange"), carry, day="2024-02-01")
    assert {interval: frame.height for interval, frame in result.bars.items()} == {
        interval: 86_400 // _seconds(interval) for interval in INTERVALS}
    validate_month_bars(result.bars, month="2024-02-01")
    with pytest.raises(InvalidBarsError, match=r"1h: .*must hold 24 bars starting at 2024-02-02 00:00 UTC"):
        validate_month_bars({"1h": result.bars["1h"]}, month="2024-02-02")
