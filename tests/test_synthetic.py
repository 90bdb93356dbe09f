"""The synthetic tape generator: valid canonical trades, deterministic, with the features tests rely on."""

from __future__ import annotations

import warnings

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest

from aperiodic_pipelines.synthetic import (
    generate_tape,
    generate_tape_to_parquet,
    month_bounds_us,
    synthetic_parquet_metadata,
)
from aperiodic_pipelines.trades import CANONICAL_SCHEMA, validate_trades

US_PER_MINUTE = 60_000_000


@pytest.fixture(scope="module")
def tape() -> pl.DataFrame:
    return generate_tape("2024-01", n_trades=60_000, seed=11)


def test_tape_is_valid_canonical_trades(tape: pl.DataFrame) -> None:
    validate_trades(tape)
    assert tape.schema == pl.Schema(CANONICAL_SCHEMA)
    assert tape.height == 60_000
    assert tape["trade_id"].to_list() == list(range(1, 60_001))
    assert tape["ts_arrival"].null_count() == 0


def test_same_seed_same_tape_other_seed_other_tape(tape: pl.DataFrame) -> None:
    assert generate_tape("2024-01", n_trades=60_000, seed=11).equals(tape)
    assert not generate_tape("2024-01", n_trades=60_000, seed=12).equals(tape)


def test_prices_on_tick_grid_and_quantities_in_lots(tape: pl.DataFrame) -> None:
    ticks = tape["price"].to_numpy() / 0.1
    assert np.allclose(ticks, np.round(ticks), rtol=0, atol=1e-6)
    lots = tape["qty"].to_numpy() / 0.001
    assert np.allclose(lots, np.round(lots), rtol=0, atol=1e-6)
    assert tape["qty"].min() >= 0.001
    assert tape["price"].min() > 0
    assert tape["price"].n_unique() > 50  # the price actually walks


def test_all_three_notional_buckets_are_well_populated(tape: pl.DataFrame) -> None:
    notional = tape["price"] * tape["qty"]
    small, large = (notional < 100).sum(), (notional >= 1000).sum()
    medium = tape.height - small - large
    assert min(small, medium, large) > tape.height * 0.05


def test_month_edges_first_and_last_microsecond(tape: pl.DataFrame) -> None:
    start, end = month_bounds_us("2024-01")
    assert tape["ts_exchange"][0] == start
    assert tape["ts_exchange"][-1] == end - 1
    assert tape["ts_exchange"].max() < end
    # Trades in the last milliseconds whose arrival spills into the next month (the `true` variant's edge).
    assert (tape["ts_arrival"] >= end).sum() >= 1
    assert tape.filter(pl.col("ts_exchange") >= end - 3_000).height >= 3


def test_arrival_a_few_milliseconds_after_exchange_time(tape: pl.DataFrame) -> None:
    latency = tape["ts_arrival"] - tape["ts_exchange"]
    assert latency.min() > 0
    assert 1_000 < latency.median() < 5_000
    assert latency.std() > 300  # jitter, not a constant shift
    assert latency.max() < 100_000


def test_bursts_quiet_gaps_and_fully_empty_minutes(tape: pl.DataFrame) -> None:
    start, end = month_bounds_us("2024-01")
    gaps = tape["ts_exchange"].diff().drop_nulls()
    assert gaps.max() > 2 * US_PER_MINUTE  # quiet gap spanning a whole minute
    assert (gaps < gaps.mean() / 10).sum() > tape.height * 0.2  # bursts: many gaps far below the average
    busy_minutes = ((tape["ts_exchange"] - start) // US_PER_MINUTE).n_unique()
    assert busy_minutes < (end - start) // US_PER_MINUTE
    # Even a busy tape (more trades than minutes) keeps fully empty minutes.
    busy = generate_tape("2024-01", n_trades=400_000, seed=3)
    assert ((busy["ts_exchange"] - start) // US_PER_MINUTE).n_unique() < (end - start) // US_PER_MINUTE


def test_same_millisecond_and_exact_boundaries(tape: pl.DataFrame) -> None:
    ms = tape["ts_exchange"] // 1_000
    assert tape.height - ms.n_unique() > 100
    assert (tape["ts_exchange"] % 1_000_000 == 0).sum() > 100
    assert (tape["ts_exchange"] % US_PER_MINUTE == 0).sum() > 20


def test_one_sided_stretches(tape: pl.DataFrame) -> None:
    runs = tape["is_buy"].rle().struct.field("len")
    assert runs.max() >= 30
    assert 0.3 < tape["is_buy"].mean() < 0.7


def test_without_arrival_and_custom_grid() -> None:
    tape = generate_tape("2024-02", n_trades=5_000, seed=1, with_arrival=False, start_price=2.5, tick=0.0001,
                         lot=1.0, first_trade_id=1_000_000)
    validate_trades(tape)
    assert tape["ts_arrival"].null_count() == tape.height
    assert tape["trade_id"][0] == 1_000_000
    start, end = month_bounds_us("2024-02")
    assert end - start == 29 * 86_400_000_000  # leap year
    assert tape["ts_exchange"].min() == start and tape["ts_exchange"].max() == end - 1
    notional = tape["price"] * tape["qty"]
    assert (notional < 100).any() and (notional >= 1000).any()


def test_tiny_and_empty_tapes() -> None:
    assert generate_tape(n_trades=0).schema == pl.Schema(CANONICAL_SCHEMA)
    assert generate_tape(n_trades=0).height == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. a division by zero for a day holding a single trade
        for n in (1, 2, 7, 10, 40):
            tape = generate_tape(n_trades=n, seed=n)
            validate_trades(tape)
            assert tape.height == n
            assert tape["ts_exchange"][0] == month_bounds_us("2024-01")[0]


def test_bad_arguments_are_rejected() -> None:
    with pytest.raises(ValueError, match="2024-13"):
        generate_tape("2024-13")
    with pytest.raises(ValueError, match="YYYY-MM"):
        generate_tape("2024-1")
    with pytest.raises(ValueError, match="n_trades"):
        generate_tape(n_trades=-1)


def test_parquet_matches_in_memory_tape_and_records_arguments(tmp_path) -> None:
    path = tmp_path / "tape.parquet"
    rows = generate_tape_to_parquet(path, "2024-03", n_trades=20_000, seed=5)
    assert rows == 20_000
    assert pl.read_parquet(path).equals(generate_tape("2024-03", n_trades=20_000, seed=5))
    assert pq.ParquetFile(path).num_row_groups == 31  # one per day: bounded memory while writing
    meta = synthetic_parquet_metadata(path)
    assert meta is not None and meta["n_trades"] == 20_000 and meta["seed"] == 5 and meta["month"] == "2024-03"
    assert [p.name for p in tmp_path.iterdir()] == ["tape.parquet"]  # no temporary file left behind
    # Same arguments, same bytes.
    again = tmp_path / "again.parquet"
    generate_tape_to_parquet(again, "2024-03", n_trades=20_000, seed=5)
    assert again.read_bytes() == path.read_bytes()
