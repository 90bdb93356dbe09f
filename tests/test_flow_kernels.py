"""The engine's two per-second paths and its toxicity window against plain numpy formulations, bit for bit.

Months bigger than one batch are summed by a compiled loop (flow.kernels), smaller ones by np.bincount; both
must give the bits of the reference below, whatever the batches, including where a batch splits a second.
The toxicity window (blocked, quiet blocks skipped) must give the bits of the unblocked lag-by-lag sums.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from aperiodic_pipelines.domain.errors import InvalidTradesError
from aperiodic_pipelines.flow import compute_flow_bars, compute_second_stats
from aperiodic_pipelines.flow.grid import LARGE_FROM, SMALL_BELOW, US_PER_SECOND
from aperiodic_pipelines.flow.toxicity import toxicity_scores
from aperiodic_pipelines.synthetic import generate_tape
from aperiodic_pipelines.trades import CANONICAL_SCHEMA

MONTH = "2024-02"
START = 1_706_745_600 * US_PER_SECOND  # 2024-02-01T00:00:00Z


def reference_seconds(trades: pl.DataFrame) -> pl.DataFrame:
    """Per-second sums with np.bincount, which adds each second's values in row order, from 0.0."""
    seconds = trades.get_column("ts_exchange").to_numpy() // US_PER_SECOND
    new_second = np.concatenate([[True], seconds[1:] != seconds[:-1]])
    starts = np.flatnonzero(new_second)
    index = np.cumsum(new_second) - 1
    n = len(starts)
    price, qty = trades.get_column("price").to_numpy(), trades.get_column("qty").to_numpy()
    side = (~trades.get_column("is_buy").to_numpy()).astype(np.int64)
    notional = price * qty
    slot = index * 6 + side * 3 + (notional >= SMALL_BELOW) + (notional >= LARGE_FROM)
    slot_notional = np.bincount(slot, weights=notional, minlength=n * 6).reshape(n, 6)
    slot_count = np.bincount(slot, minlength=n * 6).reshape(n, 6).astype(np.int64)
    side_qty = np.bincount(index * 2 + side, weights=qty, minlength=n * 2).reshape(n, 2)
    columns = {"second": seconds[new_second], "taker_buy_volume": side_qty[:, 0], "taker_sell_volume": side_qty[:, 1],
               "taker_buy_count": slot_count[:, :3].sum(axis=1), "taker_sell_count": slot_count[:, 3:].sum(axis=1)}
    for side_index, side_name in enumerate(("buy", "sell")):
        for bucket_index, bucket in enumerate(("small", "medium", "large")):
            columns[f"taker_{side_name}_{bucket}_order_volume"] = slot_notional[:, side_index * 3 + bucket_index]
            columns[f"taker_{side_name}_{bucket}_order_count"] = slot_count[:, side_index * 3 + bucket_index]
    columns["last_price"] = price[np.append(starts[1:], len(price)) - 1]
    return pl.DataFrame(columns)


def reference_toxicity(signed_flow: np.ndarray, volatility: np.ndarray, window: int = 20) -> np.ndarray:
    """Sums over the lagged arrays, lag 1 first, then the ddof=1 deviation; the exact definedness tests."""
    n = len(signed_flow)
    scores = np.full(n, np.nan)
    if n <= window:
        return scores
    rows = n - window

    def lagged(values: np.ndarray, lag: int) -> np.ndarray:
        return values[window - lag : n - lag]

    flow_sum, vol_sum = np.zeros(rows), np.zeros(rows)
    for lag in range(1, window + 1):
        flow_sum += lagged(signed_flow, lag)
        vol_sum += lagged(volatility, lag)
    flow_mean, vol_mean = flow_sum / window, vol_sum / window
    squares = np.zeros(rows)
    for lag in range(1, window + 1):
        squares += (lagged(signed_flow, lag) - flow_mean) ** 2
    changes = np.concatenate([[0], np.cumsum(signed_flow[1:] != signed_flow[:-1])])
    positives = np.concatenate([[0], np.cumsum(volatility > 0)])
    defined = (changes[window - 1 : n - 1] != changes[: n - window]) & (positives[window:n] != positives[: n - window])
    with np.errstate(divide="ignore", invalid="ignore"):
        score = (signed_flow[window:] - flow_mean) / np.sqrt(squares / (window - 1)) * (volatility[window:] / vol_mean)
    score[~defined] = np.nan
    score[score == 0] = 0.0
    scores[window:] = score
    return scores


def same_bits(left: np.ndarray, right: np.ndarray) -> bool:
    return left.dtype == right.dtype and left.shape == right.shape and bool(
        np.array_equal(left.view(np.int64), right.view(np.int64)) if left.dtype == np.float64
        else np.array_equal(left, right))


def edge_tape(seed: int, n: int = 5_000) -> pl.DataFrame:
    """Trades crowded into a few minutes, many on one µs and on both edges of a second, notionals at the bucket
    edges (100, 1000) and far from them."""
    rng = np.random.default_rng(seed)
    ts = START + np.sort(rng.integers(0, 3 * 60 * US_PER_SECOND, n))
    ts[::5] = ts[::5] // US_PER_SECOND * US_PER_SECOND
    ts[1::5] = ts[1::5] // US_PER_SECOND * US_PER_SECOND + US_PER_SECOND - 1
    ts = np.sort(np.concatenate([ts, ts[: n // 10]]))
    price = rng.choice([100.0, 1000.0, 0.1, 99.99, 1e-9, 3e5, 7.3], len(ts))
    qty = rng.choice([1.0, 0.1, 1e-7, 1.5, 3.0], len(ts))
    return pl.DataFrame({
        "ts_exchange": ts, "ts_arrival": ts + rng.integers(0, 2 * US_PER_SECOND, len(ts)),
        "trade_id": np.arange(1, len(ts) + 1), "price": price, "qty": qty, "is_buy": rng.random(len(ts)) < 0.5,
    }).cast(CANONICAL_SCHEMA).select(list(CANONICAL_SCHEMA))


@pytest.mark.parametrize("batch_rows", [1, 7, 1_000, 1_000_000])
@pytest.mark.parametrize("tape", ["edge", "synthetic"])
def test_second_sums_match_bincount_whatever_the_batches(monkeypatch, tape: str, batch_rows: int) -> None:
    trades = edge_tape(1) if tape == "edge" else generate_tape(MONTH, 20_000, seed=4)
    monkeypatch.setattr("aperiodic_pipelines.flow.seconds.STREAM_BATCH_ROWS", batch_rows)
    frame = compute_second_stats(trades, month=MONTH).frame
    expected = reference_seconds(trades)
    assert frame.height == expected.height
    for name in expected.columns:
        assert same_bits(frame.get_column(name).to_numpy(), expected.get_column(name).to_numpy()), name


def test_true_variant_sums_match_bincount_of_the_tape_sorted_by_arrival() -> None:
    trades = edge_tape(2)
    frame = compute_second_stats(trades, month=MONTH, timestamp="true").frame
    by_arrival = trades.sort(["ts_arrival", "trade_id"]).with_columns(pl.col("ts_arrival").alias("ts_exchange"))
    expected = reference_seconds(by_arrival)
    for name in expected.columns:
        assert same_bits(frame.get_column(name).to_numpy(), expected.get_column(name).to_numpy()), name


def _flows(seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Flows and volatilities with quiet stretches, constant runs, sign flips, zeros and tiny values."""
    rng = np.random.default_rng(seed)
    flow = rng.normal(0, 1e4, n) * (rng.random(n) < 0.3)
    flow[n // 4 : n // 4 + 60] = 5.0  # a constant stretch: std 0
    if n >= 100:
        flow[n // 2 : n // 2 + 30] = -flow[n // 2 - 30 : n // 2]
    flow[::97] = 1e-300
    volatility = np.abs(rng.normal(0, 1e-3, n)) * (rng.random(n) < 0.2)
    volatility[n // 3 : n // 3 + 100] = 0.0  # no volatility: mean 0
    volatility[::89] = 5e-324
    return flow, volatility


@pytest.mark.parametrize(("seed", "n"), [(0, 0), (1, 20), (2, 21), (3, 5_000), (4, 100_000)])
def test_toxicity_matches_lagged_numpy_sums(seed: int, n: int) -> None:
    flow, volatility = _flows(seed, n)
    expected = reference_toxicity(flow, volatility)
    got = toxicity_scores(flow, volatility)
    assert same_bits(got, expected)
    if n > 1_000:
        assert np.isfinite(got).sum() > n // 10  # the comparison covered defined scores too


def _quiet_flows(seed: int, n: int, extreme: str) -> tuple[np.ndarray, np.ndarray]:
    """A quiet month's 1s inputs: trades in ~6 % of the bars, the price moving in ~2 %; `extreme` puts values
    outside the sparse path's safe range into every block (it must then run the formula on every row)."""
    rng = np.random.default_rng(seed)
    flow = np.round(rng.normal(0, 5e3, n), 2) * (rng.random(n) < 0.06)
    volatility = np.abs(rng.normal(0, 1e-4, n)) * (rng.random(n) < 0.02)
    if extreme == "tiny flow":
        flow[::997] = 1e-300  # a window's deviation squared underflows: std 0 although the flow changes
    elif extreme == "tiny volatility":
        volatility[::997] = 5e-324  # the window's mean volatility underflows to 0
    elif extreme == "huge flow":
        flow[::997] = 1e200  # squares overflow
    elif extreme == "nan flow":  # never from validated trades; if ever, the dense path's NaNs, not zeros
        flow[::997] = np.nan
    return flow, volatility


@pytest.mark.filterwarnings("ignore:overflow encountered", "ignore:invalid value")  # huge and NaN flows, on purpose
@pytest.mark.parametrize("extreme", ["", "tiny flow", "tiny volatility", "huge flow", "nan flow"])
def test_quiet_blocks_score_only_their_moving_rows_bit_for_bit(monkeypatch, extreme: str) -> None:
    from aperiodic_pipelines.flow import toxicity

    sparse_rows = []
    formula = toxicity._formula

    def counting(signed_flow, volatility, window, rows):
        sparse_rows.append(0 if rows is None else len(rows))
        return formula(signed_flow, volatility, window, rows)

    monkeypatch.setattr(toxicity, "_formula", counting)
    flow, volatility = _quiet_flows(7, 200_000, extreme)
    got = toxicity_scores(flow, volatility)
    assert same_bits(got, reference_toxicity(flow, volatility))
    defined = np.isfinite(got)
    assert defined.sum() > 20_000 and (got[defined] != 0).sum() > 500  # zeros, non-zeros and nulls compared
    # Quiet blocks in the safe range ran the formula on their rows with volatility only; the others on all rows.
    assert all(rows > 0 for rows in sparse_rows) if not extreme else not any(sparse_rows)
    assert sum(sparse_rows) < 0.03 * len(flow) if not extreme else len(sparse_rows) > 10


def test_a_zero_score_is_positive_zero() -> None:
    flow = np.array([1.0, 3.0] * 10 + [0.0])  # a quiet bar after buying: (0 − 2)/std × 0/mean is −0.0 in IEEE
    volatility = np.array([1.0] * 20 + [0.0])
    score = toxicity_scores(flow, volatility)[-1]
    assert score == 0 and not np.signbit(score)


@pytest.mark.parametrize(("column", "value", "message"), [
    ("price", 0.0, "column 'price' breaks spec"),
    ("qty", float("inf"), "column 'qty' breaks spec"),
    ("ts_exchange", START - 1, "outside raw month 2024-02"),
])
def test_bad_rows_in_a_later_batch_are_named(monkeypatch, column: str, value: float, message: str) -> None:
    trades = generate_tape(MONTH, 5_000, seed=3)
    row = 4_321 if column != "ts_exchange" else 0
    trades = trades.with_columns(pl.when(pl.int_range(pl.len()) == row).then(pl.lit(value)).otherwise(pl.col(column))
                                 .cast(CANONICAL_SCHEMA[column]).alias(column))
    monkeypatch.setattr("aperiodic_pipelines.flow.seconds.STREAM_BATCH_ROWS", 1_000)
    with pytest.raises(InvalidTradesError, match=message):
        compute_flow_bars(trades, month=MONTH, intervals=["1h"])


def test_time_going_back_across_a_batch_edge_is_unsorted(monkeypatch) -> None:
    trades = generate_tape(MONTH, 3_000, seed=6)
    ts = trades.get_column("ts_exchange").to_numpy().copy()
    ts[1_000] = ts[999] - 1  # first row of the second batch goes back
    monkeypatch.setattr("aperiodic_pipelines.flow.seconds.STREAM_BATCH_ROWS", 1_000)
    with pytest.raises(InvalidTradesError, match="not sorted"):
        compute_second_stats(trades.with_columns(pl.Series("ts_exchange", ts)), month=MONTH)


@pytest.mark.parametrize("batch_rows", [10, 1_000_000])
def test_null_time_is_named(monkeypatch, batch_rows: int) -> None:
    monkeypatch.setattr("aperiodic_pipelines.flow.seconds.STREAM_BATCH_ROWS", batch_rows)
    trades = generate_tape(MONTH, 100, seed=8).with_columns(
        pl.when(pl.int_range(pl.len()) == 50).then(None).otherwise(pl.col("ts_exchange")).alias("ts_exchange"))
    with pytest.raises(InvalidTradesError, match="column 'ts_exchange' breaks spec"):
        compute_second_stats(trades, month=MONTH)


def _in_chunks(trades: pl.DataFrame, cuts: list[int]) -> pl.DataFrame:
    """`trades` as a frame whose columns are chunked at `cuts` (as polars' streaming batches arrive)."""
    edges = [0, *cuts, trades.height]
    return pl.concat([trades.slice(lo, hi - lo) for lo, hi in zip(edges[:-1], edges[1:], strict=True)],
                     rechunk=False)


def test_batches_in_several_chunks_are_summed_in_parts_without_copies(monkeypatch) -> None:
    from aperiodic_pipelines.flow.seconds import _single_chunk_parts

    trades = edge_tape(2)
    chunked = _in_chunks(trades, [700, 701, 2_345])
    parts = list(_single_chunk_parts(chunked))
    assert [part.height for part in parts] == [700, 1, 1_644, trades.height - 2_345]
    assert all(part.get_column(col).n_chunks() == 1 for part in parts for col in part.columns)
    # Columns chunked differently cannot be cut alike: one copy, still one part.
    uneven = chunked.with_columns(pl.Series("qty", trades.get_column("qty")))
    assert [part.height for part in _single_chunk_parts(uneven)] == [trades.height]

    monkeypatch.setattr("aperiodic_pipelines.flow.seconds.STREAM_BATCH_ROWS", 1_000)
    frame = compute_second_stats(chunked.lazy(), month=MONTH).frame
    expected = reference_seconds(trades)
    for name in expected.columns:
        assert same_bits(frame.get_column(name).to_numpy(), expected.get_column(name).to_numpy()), name
    # A row going back in time right after a chunk edge is caught there, with the time before the edge.
    ts = trades.get_column("ts_exchange").to_numpy().copy()
    ts[701] = ts[700] - 1
    with pytest.raises(InvalidTradesError, match="not sorted"):
        compute_second_stats(_in_chunks(trades.with_columns(pl.Series("ts_exchange", ts)), [701]).lazy(), month=MONTH)
