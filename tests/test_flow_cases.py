"""Small hand-computed cases for every flow field (spec §2–§3) and for `validate_bars`."""

from __future__ import annotations

import io
import math
import statistics
from datetime import UTC, datetime

import polars as pl
import pyarrow.parquet as pq
import pytest

from aperiodic_pipelines.domain.errors import InvalidBarsError, InvalidTradesError
from aperiodic_pipelines.flow import FLOW_COLUMNS, FLOW_SCHEMA, compute_flow_bars, validate_bars
from aperiodic_pipelines.synthetic import generate_tape
from aperiodic_pipelines.trades import CANONICAL_SCHEMA, empty_trades
from tests.reference_flow import ADDITIVE_FIELDS, COLUMNS, NULLABLE_FIELDS

H = 1e-12  # float tolerance for hand-computed values (relative)


def us(*parts: int) -> int:
    """µs since the epoch of a UTC wall-clock time."""
    return int(datetime(*parts, tzinfo=UTC).timestamp()) * 1_000_000


def dt(*parts: int) -> datetime:
    return datetime(*parts)  # bar `time` is zone-less UTC wall clock (spec §2)


def trades(*rows: tuple) -> pl.DataFrame:
    """Canonical trades from (ts_exchange, price, qty, is_buy[, ts_arrival]) tuples; ids in row order."""
    full = []
    for trade_id, row in enumerate(rows, start=1):
        ts, price, qty, is_buy, *arrival = row
        full.append((ts, arrival[0] if arrival else None, trade_id, float(price), float(qty), is_buy))
    frame = pl.DataFrame(full, schema=CANONICAL_SCHEMA, orient="row")
    return frame.sort("ts_exchange", "trade_id")


def renumber(frame: pl.DataFrame, first_id: int) -> pl.DataFrame:
    return frame.with_columns(pl.int_range(first_id, first_id + frame.height, dtype=pl.Int64).alias("trade_id"))


def bars(current: pl.DataFrame, previous: pl.DataFrame | None = None, *, interval: str = "1m",
         month: str = "2024-01", timestamp: str = "exchange") -> pl.DataFrame:
    return compute_flow_bars(current, previous, month=month, timestamp=timestamp, intervals=(interval,))[interval]


def row_at(frame: pl.DataFrame, when: datetime) -> dict:
    return frame.filter(pl.col("time") == when).row(0, named=True)


def hand_score(window_flow: list[float], window_vol: list[float], flow: float, vol: float) -> float | None:
    std = statistics.stdev(window_flow)
    mean_vol = statistics.fmean(window_vol)
    if std == 0 or mean_vol == 0:
        return None
    return (flow - statistics.fmean(window_flow)) / std * (vol / mean_vol)


# --- plain fields --------------------------------------------------------------------------------------------


def test_one_bar_every_field_by_hand() -> None:
    t0 = us(2024, 1, 10, 12, 30)
    tape = trades(
        (t0, 100.0, 0.5, True),  # buy, notional 50: small
        (t0 + 1, 100.0, 2.0, True),  # buy, 200: medium
        (t0 + 2, 101.0, 20.0, True),  # buy, 2020: large
        (t0 + 3, 99.0, 1.0, False),  # sell, 99: small
        (t0 + 59_999_999, 100.0, 5.0, False),  # sell, 500: medium, last µs of the bar
    )
    row = row_at(bars(tape), dt(2024, 1, 10, 12, 30))
    buy_vol, sell_vol = 22.5, 6.0
    buy_notional, sell_notional = 50.0 + 200.0 + 2020.0, 99.0 + 500.0
    p = buy_vol / (buy_vol + sell_vol)
    expected = {
        "taker_buy_volume": buy_vol,
        "taker_sell_volume": sell_vol,
        "taker_buy_count": 3,
        "taker_sell_count": 2,
        "volume_delta": buy_vol - sell_vol,
        "volume_delta_notional": buy_notional - sell_notional,
        "flow_entropy": -p * math.log2(p) - (1 - p) * math.log2(1 - p),
        "flow_toxicity_score": None,  # first month, warm-up
        "taker_buy_sell_ratio": buy_vol / sell_vol,
        "taker_buy_sell_count_ratio": 1.5,
        "taker_buy_sell_percentage": p,
        "taker_buy_sell_count_percentage": 0.6,
        "taker_buy_small_order_volume": 50.0,
        "taker_buy_small_order_count": 1,
        "taker_buy_medium_order_volume": 200.0,
        "taker_buy_medium_order_count": 1,
        "taker_buy_large_order_volume": 2020.0,
        "taker_buy_large_order_count": 1,
        "taker_sell_small_order_volume": 99.0,
        "taker_sell_small_order_count": 1,
        "taker_sell_medium_order_volume": 500.0,
        "taker_sell_medium_order_count": 1,
        "taker_sell_large_order_volume": 0.0,
        "taker_sell_large_order_count": 0,
        "taker_buy_small_order_percentage": 50.0 / buy_notional,
        "taker_buy_medium_order_percentage": 200.0 / buy_notional,
        "taker_buy_large_order_percentage": 2020.0 / buy_notional,
        "taker_buy_small_order_count_percentage": 1 / 3,
        "taker_buy_medium_order_count_percentage": 1 / 3,
        "taker_buy_large_order_count_percentage": 1 / 3,
        "taker_sell_small_order_percentage": 99.0 / sell_notional,
        "taker_sell_medium_order_percentage": 500.0 / sell_notional,
        "taker_sell_large_order_percentage": 0.0,
        "taker_sell_small_order_count_percentage": 0.5,
        "taker_sell_medium_order_count_percentage": 0.5,
        "taker_sell_large_order_count_percentage": 0.0,
    }
    assert set(expected) == set(COLUMNS) - {"time"}
    for field, value in expected.items():
        if value is None:
            assert row[field] is None, field
        else:
            assert row[field] == pytest.approx(value, rel=H, abs=1e-12), field


def test_empty_bars_are_zero_and_null() -> None:
    frame = bars(trades((us(2024, 1, 5, 3, 7, 12), 100.0, 1.0, True)), interval="1m")
    empty = frame.filter(pl.col("time") != dt(2024, 1, 5, 3, 7))
    assert empty.height == 44_640 - 1
    for field in ADDITIVE_FIELDS:
        assert (empty[field] == 0).all(), field
    for field in NULLABLE_FIELDS:
        assert empty[field].null_count() == empty.height, field


def test_only_buys_and_only_sells() -> None:
    t0 = us(2024, 1, 2, 0, 0)
    tape = trades(
        (t0, 100.0, 1.0, True), (t0 + 5, 100.0, 3.0, True),  # minute 0: buys only
        (t0 + 60_000_000, 100.0, 2.0, False),  # minute 1: sells only
    )
    frame = bars(tape)
    buys = row_at(frame, dt(2024, 1, 2, 0, 0))
    assert buys["taker_sell_volume"] == 0 and buys["taker_sell_count"] == 0
    assert buys["taker_buy_sell_ratio"] is None and buys["taker_buy_sell_count_ratio"] is None  # x / 0
    assert buys["taker_buy_sell_percentage"] == 1.0 and buys["taker_buy_sell_count_percentage"] == 1.0
    assert buys["flow_entropy"] == 0.0  # p = 1
    for bucket in ("small", "medium", "large"):
        assert buys[f"taker_sell_{bucket}_order_percentage"] is None
        assert buys[f"taker_sell_{bucket}_order_count_percentage"] is None
    assert buys["taker_buy_medium_order_percentage"] == 1.0  # notionals 100 and 300: both medium
    assert buys["taker_buy_small_order_percentage"] == 0.0
    sells = row_at(frame, dt(2024, 1, 2, 0, 1))
    assert sells["taker_buy_sell_ratio"] == 0.0 and sells["taker_buy_sell_count_ratio"] == 0.0
    assert sells["taker_buy_sell_percentage"] == 0.0 and sells["flow_entropy"] == 0.0  # p = 0
    for bucket in ("small", "medium", "large"):
        assert sells[f"taker_buy_{bucket}_order_percentage"] is None
        assert sells[f"taker_buy_{bucket}_order_count_percentage"] is None


@pytest.mark.parametrize(
    ("buy_qty", "sell_qty", "entropy"),
    [(1.0, 1.0, 1.0), (1.0, 3.0, -(0.25 * math.log2(0.25) + 0.75 * math.log2(0.75))), (2.0, 0.0, 0.0)],
)
def test_entropy(buy_qty: float, sell_qty: float, entropy: float) -> None:
    t0 = us(2024, 1, 3, 8, 0)
    rows = [(t0, 10.0, buy_qty, True)] + ([(t0 + 1, 10.0, sell_qty, False)] if sell_qty else [])
    row = row_at(bars(trades(*rows), interval="1h"), dt(2024, 1, 3, 8))
    assert row["flow_entropy"] == pytest.approx(entropy, rel=H, abs=0)
    assert 0.0 <= row["flow_entropy"] <= 1.0


def test_bucket_edges_exactly_100_and_1000() -> None:
    t0 = us(2024, 1, 4, 0, 0)
    tape = trades(
        (t0, 100.0, 0.99, True),  # 99: small
        (t0 + 1, 100.0, 1.0, True),  # exactly 100: medium
        (t0 + 2, 200.0, 0.5, True),  # exactly 100 again: medium
        (t0 + 3, 100.0, 9.99, True),  # 999: medium
        (t0 + 4, 100.0, 10.0, True),  # exactly 1000: large
        (t0 + 5, 0.1, 10_000.0, False),  # exactly 1000: large
        (t0 + 6, 0.1, 1_000.0, False),  # exactly 100: medium
    )
    row = row_at(bars(tape), dt(2024, 1, 4, 0, 0))
    assert (row["taker_buy_small_order_count"], row["taker_buy_medium_order_count"],
            row["taker_buy_large_order_count"]) == (1, 3, 1)
    assert (row["taker_sell_small_order_count"], row["taker_sell_medium_order_count"],
            row["taker_sell_large_order_count"]) == (0, 1, 1)
    assert row["taker_buy_medium_order_volume"] == pytest.approx(1199.0, rel=H)
    assert row["taker_buy_large_order_volume"] == pytest.approx(1000.0, rel=H)
    assert row["taker_sell_large_order_percentage"] == pytest.approx(1000.0 / 1100.0, rel=H)
    assert row["taker_buy_medium_order_count_percentage"] == pytest.approx(0.6, rel=H)


# --- toxicity score ------------------------------------------------------------------------------------------


def _minute_tape(start: int, flows: list[tuple[float, float, bool]]) -> pl.DataFrame:
    """One trade per minute from `start`: (price, qty, is_buy)."""
    return trades(*[(start + i * 60_000_000, p, q, b) for i, (p, q, b) in enumerate(flows)])


def test_warm_up_first_twenty_bars_null_without_previous_month() -> None:
    prices = [100.0 + (i % 3) for i in range(30)]
    flows = [(prices[i], 1.0 + i % 4, i % 2 == 0) for i in range(30)]
    frame = bars(_minute_tape(us(2024, 1, 1), flows))
    scores = frame["flow_toxicity_score"].to_list()
    assert scores[:20] == [None] * 20
    s = [(p * q if b else -p * q) for p, q, b in flows]
    rv = [0.0] + [abs(math.log(prices[i] / prices[i - 1])) for i in range(1, 30)]
    for bar in range(20, 30):
        expected = hand_score(s[bar - 20:bar], rv[bar - 20:bar], s[bar], rv[bar])
        assert scores[bar] == pytest.approx(expected, rel=1e-9), bar
    # After the last trade: flow 0, volatility 0 (price carried forward): the score is (0 - mean)/std * 0.
    assert frame["flow_toxicity_score"][30] == 0.0


def test_window_reaches_into_previous_month_by_hand() -> None:
    # Dec 31: an anchor trade at 03:00 (price 100), then one trade per hour 04:00..23:00 alternating
    # buy 1 @ 100 (flow +100) and sell 1 @ 101 (flow -101). Jan 1 00:00: buy 2 @ 102 (flow +204).
    previous = trades(
        (us(2023, 12, 31, 3), 100.0, 1.0, True),
        *[(us(2023, 12, 31, 4 + j), 100.0 if j % 2 == 0 else 101.0, 1.0, j % 2 == 0) for j in range(20)],
    )
    current = renumber(trades((us(2024, 1, 1, 0), 102.0, 2.0, True)), 1_000)
    frame = bars(current, previous, interval="1h")
    # Window flows: ten +100 and ten -101 → mean -0.5, sample std 100.5·sqrt(20/19).
    # Window volatility: 04:00 has return ln(100/100) = 0, the other 19 hours |ln(101/100)|.
    flow_norm = (204.0 + 0.5) / (100.5 * math.sqrt(20 / 19))
    vol_norm = math.log(102 / 101) / (19 / 20 * math.log(1.01))
    assert frame["flow_toxicity_score"][0] == pytest.approx(flow_norm * vol_norm, rel=1e-12)
    assert frame["flow_toxicity_score"][0] == pytest.approx(2.0671186114157245, rel=1e-12)
    assert frame["flow_toxicity_score"][1] == 0.0  # empty bar after a full window: flow 0 × volatility 0
    # Same trades without the previous month: warm-up, nothing to normalise by.
    assert bars(current, None, interval="1h")["flow_toxicity_score"][:21].null_count() == 21


def test_window_of_seconds_with_empty_seconds_reaches_into_previous_month() -> None:
    # 1s bars: the last 20 seconds of December hold one trade each at :41, :50 and :59 only; empty seconds
    # count (flow 0, return 0 because the price is carried forward).
    previous = trades(
        (us(2023, 12, 31, 23, 59, 30), 100.0, 1.0, True),
        (us(2023, 12, 31, 23, 59, 41), 101.0, 1.0, True),
        (us(2023, 12, 31, 23, 59, 50), 100.0, 2.0, False),
        (us(2023, 12, 31, 23, 59, 59), 102.0, 1.0, True),
    )
    current = renumber(trades((us(2024, 1, 1), 101.0, 3.0, False)), 1_000)
    frame = bars(current, previous, interval="1s")
    window_flow = [0.0] * 20
    window_vol = [0.0] * 20
    window_flow[1], window_vol[1] = 101.0, math.log(101 / 100)
    window_flow[10], window_vol[10] = -200.0, abs(math.log(100 / 101))
    window_flow[19], window_vol[19] = 102.0, math.log(102 / 100)
    expected = hand_score(window_flow, window_vol, -303.0, abs(math.log(101 / 102)))
    assert frame["flow_toxicity_score"][0] == pytest.approx(expected, rel=1e-9)
    # The next (empty) second: its return is 0, so the score is 0, not null.
    assert frame["flow_toxicity_score"][1] == 0.0


def test_zero_std_gives_null_score() -> None:
    # Flow is +100 every minute (qty adjusts to price), prices alternate so volatility is not 0.
    flows = [(100.0, 1.0, True) if i % 2 == 0 else (200.0, 0.5, True) for i in range(22)]
    scores = bars(_minute_tape(us(2024, 1, 1), flows))["flow_toxicity_score"]
    assert scores[20] is None and scores[21] is None


def test_zero_mean_volatility_gives_null_score() -> None:
    # Constant price (no volatility in the window), varying flow; bar 20 moves the price but its window
    # volatility is still 0.
    flows = [(100.0, 1.0 + i, i % 2 == 0) for i in range(20)] + [(105.0, 3.0, True)]
    scores = bars(_minute_tape(us(2024, 1, 1), flows))["flow_toxicity_score"]
    assert scores[20] is None


def test_empty_previous_month_is_not_a_first_month() -> None:
    # Decision: previous=None → no earlier month, first 20 bars null. An empty previous DataFrame → the
    # earlier month exists without trades: its empty bars fill the window, so the score exists early.
    flows = [(100.0, 1.0, True), (101.0, 2.0, False), (100.0, 1.0, True), (102.0, 1.0, True)]
    current = _minute_tape(us(2024, 1, 1), flows)
    with_empty = bars(current, empty_trades())["flow_toxicity_score"]
    without = bars(current, None)["flow_toxicity_score"]
    assert without[:20].null_count() == 20
    s = [100.0, -202.0, 100.0, 102.0]
    rv = [0.0, math.log(1.01), abs(math.log(100 / 101)), math.log(1.02)]
    # Bar 2: window = 18 empty December minutes + minutes 0 and 1.
    expected = hand_score([0.0] * 18 + s[:2], [0.0] * 18 + rv[:2], s[2], rv[2])
    assert with_empty[2] == pytest.approx(expected, rel=1e-9)
    # Bar 1: the window's only volatility is the return of minute 0, which does not exist → mean rv 0 → null.
    assert with_empty[1] is None


# --- grid, month edges, variants ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("month", "interval", "rows"),
    [("2024-01", "1m", 44_640), ("2024-02", "1m", 41_760), ("2023-02", "1m", 40_320), ("2024-04", "1h", 720),
     ("2024-02", "1d", 29), ("2024-01", "4h", 186), ("2024-01", "5m", 8_928)],
)
def test_dense_row_counts(month: str, interval: str, rows: int) -> None:
    year, mon = (int(p) for p in month.split("-"))
    one = trades((us(year, mon, 2), 100.0, 1.0, True))
    frame = bars(one, month=month, interval=interval)
    assert frame.height == rows
    assert frame["time"][0] == dt(year, mon, 1)
    steps = frame["time"].diff().drop_nulls().unique()
    assert steps.len() == 1


def test_month_boundaries_exchange_variant() -> None:
    start, end = us(2024, 1, 1), us(2024, 2, 1)
    previous = trades((start - 1, 100.0, 1.0, True))  # December's last µs: belongs to December
    current = renumber(trades((start, 100.0, 2.0, False), (end - 1, 100.0, 3.0, True)), 10)
    frame = bars(current, previous, interval="1m")
    first, last = frame.row(0, named=True), frame.row(-1, named=True)
    assert (first["taker_buy_count"], first["taker_sell_count"], first["taker_sell_volume"]) == (0, 1, 2.0)
    assert (last["taker_buy_count"], last["taker_buy_volume"]) == (1, 3.0)
    assert frame["taker_buy_count"].sum() + frame["taker_sell_count"].sum() == 2


def test_true_variant_buckets_by_arrival() -> None:
    start, end = us(2024, 1, 1), us(2024, 2, 1)
    previous = trades(
        (start - 10, 100.0, 1.0, True, start - 5),  # arrives in December: not in January
        (start - 3, 100.0, 2.0, True, start + 4_000),  # raw December, arrives in January: included
    )
    current = renumber(trades(
        (start + 59_999_000, 100.0, 4.0, False, start + 60_001_000),  # exchange minute 0, arrival minute 1
        (end - 2, 100.0, 8.0, True, end + 2_000),  # arrives after the month: excluded
    ), 100)
    frame = bars(current, previous, interval="1m", timestamp="true")
    first, second = frame.row(0, named=True), frame.row(1, named=True)
    assert (first["taker_buy_count"], first["taker_buy_volume"], first["taker_sell_count"]) == (1, 2.0, 0)
    assert (second["taker_sell_count"], second["taker_sell_volume"]) == (1, 4.0)
    assert frame["taker_buy_count"].sum() + frame["taker_sell_count"].sum() == 2
    exchange = bars(current, previous, interval="1m", timestamp="exchange")
    assert exchange.row(0, named=True)["taker_sell_count"] == 1  # same trades, bucketed by exchange time
    assert exchange.row(-1, named=True)["taker_buy_count"] == 1


def test_true_variant_rejects_null_arrival() -> None:
    tape = trades((us(2024, 1, 3), 100.0, 1.0, True, us(2024, 1, 3) + 5), (us(2024, 1, 4), 100.0, 1.0, True))
    with pytest.raises(InvalidTradesError, match="ts_arrival"):
        compute_flow_bars(tape, None, month="2024-01", timestamp="true", intervals=("1h",))


def test_column_order_and_dtypes() -> None:
    frame = bars(trades((us(2024, 1, 3), 100.0, 1.0, True)), interval="1d")
    assert frame.columns == list(FLOW_COLUMNS) == COLUMNS
    assert frame.schema == pl.Schema(FLOW_SCHEMA)
    assert frame.schema["time"] == pl.Datetime("us")  # zone-less UTC wall clock (spec §2)
    for field in COLUMNS[1:]:
        assert frame.schema[field] == (pl.Int64 if field.endswith("_count") else pl.Float64), field


# --- validate_bars ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def valid_hour_bars() -> pl.DataFrame:
    tape = generate_tape("2024-01", 5_000, seed=9)
    frame = compute_flow_bars(tape, None, month="2024-01", intervals=("1h",))["1h"]
    validate_bars(frame, interval="1h", month="2024-01")
    return frame


def _busy_row(frame: pl.DataFrame) -> int:
    counts = frame["taker_buy_count"] * frame["taker_sell_count"]
    return int((counts > 0).arg_true()[0])


def _set(frame: pl.DataFrame, field: str, row: int, value: object) -> pl.DataFrame:
    column = frame[field].scatter([row], [value])
    return frame.with_columns(column)


@pytest.mark.parametrize(
    ("tamper", "field"),
    [
        (lambda f, r: _set(f, "volume_delta", r, f["volume_delta"][r] + 1.0), "volume_delta"),
        (lambda f, r: _set(f, "taker_buy_small_order_count", r, f["taker_buy_small_order_count"][r] + 1),
         "taker_buy_small_order_count"),
        (lambda f, r: _set(f, "taker_sell_large_order_volume", r, f["taker_sell_large_order_volume"][r] + 5e3),
         "bucket notional|volume_delta_notional"),
        (lambda f, r: _set(f, "taker_buy_sell_percentage", r, 1.5), "taker_buy_sell_percentage"),
        (lambda f, r: _set(f, "flow_entropy", r, 1.2), "flow_entropy"),
        (lambda f, r: _set(f, "flow_entropy", r, -0.1), "flow_entropy"),
        (lambda f, r: _set(f, "taker_sell_count", r, -1), "taker_sell_count"),
        (lambda f, r: f.filter(pl.int_range(pl.len()) != r), "time"),
        (lambda f, r: f.with_columns(pl.col("time").shift(-1).fill_null(pl.col("time").max())), "time"),
        (lambda f, r: f.with_columns(pl.col("taker_buy_count").cast(pl.Float64)), "taker_buy_count"),
        (lambda f, r: f.select(FLOW_COLUMNS[0], *reversed(FLOW_COLUMNS[1:])), "taker"),
    ],
    ids=["volume_delta", "bucket_counts", "bucket_notional", "percentage_above_1", "entropy_above_1",
         "entropy_below_0", "negative_count", "missing_bar", "time_not_dense", "wrong_dtype", "column_order"],
)
def test_validate_bars_rejects_tampered_tables(valid_hour_bars: pl.DataFrame, tamper, field: str) -> None:
    tampered = tamper(valid_hour_bars, _busy_row(valid_hour_bars))
    with pytest.raises(InvalidBarsError, match=field):
        validate_bars(tampered, interval="1h", month="2024-01")


# --- determinism ---------------------------------------------------------------------------------------------


def test_two_runs_write_identical_parquet_bytes() -> None:
    tape = generate_tape("2024-01", 4_000, seed=13, first_trade_id=1_000_000)
    previous = generate_tape("2023-12", 4_000, seed=14)

    def written() -> tuple[bytes, bytes]:
        frame = compute_flow_bars(tape, previous, month="2024-01", intervals=("5m",))["5m"]
        polars_buffer, arrow_buffer = io.BytesIO(), io.BytesIO()
        frame.write_parquet(polars_buffer, compression="zstd")
        pq.write_table(frame.to_arrow(), arrow_buffer, compression="zstd")
        return polars_buffer.getvalue(), arrow_buffer.getvalue()

    assert written() == written()


def test_trade_outside_its_raw_month_is_an_error_naming_the_month() -> None:
    """Decision (docs/flow.md): raw month m holds trades whose ts_exchange lies in m; anything else is a
    source bug and must not be dropped silently by the window filter."""
    stray = trades((us(2024, 1, 15), 100.0, 1.0, True), (us(2024, 2, 1), 100.0, 1.0, False))
    with pytest.raises(InvalidTradesError, match=r"1 trades have ts_exchange outside raw month 2024-01"):
        bars(stray)
    previous = trades((us(2024, 1, 3), 100.0, 1.0, True))  # January trades passed as December's
    with pytest.raises(InvalidTradesError, match=r"trades before 2024-01: .* outside raw month 2023-12"):
        bars(trades((us(2024, 1, 15), 100.0, 1.0, True)), previous)


def test_unsorted_trades_are_rejected_for_the_exchange_variant() -> None:
    """Spec §1 orders rows by (ts_exchange, trade_id); the streaming pass relies on it and says so."""
    ordered = trades((us(2024, 1, 2), 100.0, 1.0, True), (us(2024, 1, 3), 101.0, 1.0, False))
    shuffled = ordered.reverse()
    with pytest.raises(InvalidTradesError, match=r"not sorted by \(ts_exchange, trade_id\)"):
        bars(shuffled)


@pytest.mark.parametrize("column, value", [("price", 0.0), ("qty", -1.0), ("price", float("nan"))])
def test_non_positive_or_nan_price_and_qty_are_rejected(column: str, value: float) -> None:
    frame = trades((us(2024, 1, 2), 100.0, 1.0, True), (us(2024, 1, 3), 101.0, 1.0, False))
    frame = frame.with_columns(pl.when(pl.col("trade_id") == 2).then(value).otherwise(pl.col(column)).alias(column))
    with pytest.raises(InvalidTradesError, match=rf"column '{column}'"):
        bars(frame)


def test_no_negative_zero_anywhere() -> None:
    """Decision (docs/flow.md): −0.0 is normalised, so equal values always have equal bytes."""
    import numpy as np

    tape = generate_tape("2024-01", 20_000, seed=5)
    for interval, frame in compute_flow_bars(tape, month="2024-01", intervals=("1s", "1m", "1h")).items():
        for name, dtype in FLOW_SCHEMA.items():
            if dtype == pl.Float64:
                values = frame.get_column(name).drop_nulls().to_numpy()
                assert not np.signbit(values[values == 0]).any(), f"{interval} {name} has −0.0"
