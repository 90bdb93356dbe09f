"""The flow engine against the naive reference (tests/reference_flow.py), field by field.

Float fields match to a relative tolerance of 1e-9 (plus 1e-9 of the column's largest magnitude, for values
that cancel to about zero, e.g. a volume delta of two nearly equal sums); null masks match exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl
import pytest

from aperiodic_pipelines.flow import FLOW_COLUMNS, FLOW_SCHEMA, compute_flow_bars
from aperiodic_pipelines.synthetic import generate_tape
from aperiodic_pipelines.trades import empty_trades
from tests.reference_flow import COLUMNS, FIELDS, INTERVAL_SECONDS, reference_bars

RTOL = 1e-9


@dataclass(frozen=True)
class Case:
    name: str
    month: str
    timestamp: str
    previous: str  # "tape", "none" (first month) or "empty" (an earlier month without trades)
    n_trades: int
    seed: int
    intervals: tuple[str, ...]


CASES = [
    Case("exchange-with-previous", "2024-01", "exchange", "tape", 3_000, 1, ("1s", "1m", "15m", "1h", "1d")),
    Case("true-with-previous", "2024-01", "true", "tape", 3_000, 2, ("1s", "5m", "30m", "4h", "1d")),
    Case("exchange-first-month", "2024-03", "exchange", "none", 2_000, 3, ("1m", "5m", "1h", "4h")),
    Case("true-first-month", "2024-03", "true", "none", 2_000, 4, ("1m", "15m", "1d")),
    Case("exchange-empty-previous", "2024-02", "exchange", "empty", 2_000, 5, ("1m", "30m", "1h", "1d")),
    Case("exchange-busy-leap-february", "2024-02", "exchange", "tape", 10_000, 6, ("1m", "5m", "4h")),
]


def _inputs(case: Case) -> tuple[pl.DataFrame, pl.DataFrame | None]:
    year, mon = (int(p) for p in case.month.split("-"))
    previous_month = f"{year - (mon == 1):04d}-{(mon - 2) % 12 + 1:02d}"
    trades = generate_tape(case.month, case.n_trades, seed=case.seed, first_trade_id=10_000_000)
    if case.previous == "tape":
        previous = generate_tape(previous_month, case.n_trades, seed=case.seed + 100, start_price=41000.0)
    elif case.previous == "empty":
        previous = empty_trades()
    else:
        previous = None
    return trades, previous


def assert_frames_match(got: pl.DataFrame, expected: pl.DataFrame, *, label: str) -> None:
    assert got.columns == expected.columns, label
    assert got.schema == expected.schema, label
    assert got["time"].equals(expected["time"]), f"{label}: time grid"
    problems = []
    for field in FIELDS:
        a, b = got[field], expected[field]
        null_mismatch = (a.is_null() != b.is_null()).to_numpy()
        if null_mismatch.any():
            rows = np.flatnonzero(null_mismatch)[:3]
            problems.append(
                f"{field}: null mask differs on {null_mismatch.sum()} rows, e.g. "
                + ", ".join(f"{got['time'][int(i)]}: got {a[int(i)]} expected {b[int(i)]}" for i in rows)
            )
            continue
        mask = ~a.is_null().to_numpy()
        av, bv = a.to_numpy()[mask].astype(np.float64), b.to_numpy()[mask].astype(np.float64)
        if not av.size:
            continue
        scale = float(np.abs(bv).max())
        bad = ~np.isclose(av, bv, rtol=RTOL, atol=RTOL * scale)
        if bad.any():
            rows = np.flatnonzero(mask)[np.flatnonzero(bad)[:3]]
            problems.append(
                f"{field}: {bad.sum()} values differ, e.g. "
                + ", ".join(f"{got['time'][int(i)]}: got {a[int(i)]!r} expected {b[int(i)]!r}" for i in rows)
            )
    assert not problems, f"{label}:\n  " + "\n  ".join(problems)


@pytest.fixture(scope="module", params=CASES, ids=lambda c: c.name)
def case_results(request: pytest.FixtureRequest) -> tuple[Case, pl.DataFrame, pl.DataFrame | None, dict]:
    case: Case = request.param
    trades, previous = _inputs(case)
    bars = compute_flow_bars(trades, previous, month=case.month, timestamp=case.timestamp,
                             intervals=case.intervals)
    return case, trades, previous, bars


def test_engine_matches_reference(case_results) -> None:
    case, trades, previous, bars = case_results
    assert set(bars) == set(case.intervals)
    for interval in case.intervals:
        expected = reference_bars(trades, previous, month=case.month, interval=interval,
                                  timestamp=case.timestamp)
        assert_frames_match(bars[interval], expected, label=f"{case.name} {interval}")


def test_engine_columns_and_dtypes_are_the_contract(case_results) -> None:
    case, _, _, bars = case_results
    assert list(FLOW_COLUMNS) == COLUMNS
    days = {"2024-01": 31, "2024-02": 29, "2024-03": 31}[case.month]
    for interval, frame in bars.items():
        assert frame.height == days * 86_400 // INTERVAL_SECONDS[interval], interval  # 1s in January: 2,678,400
        assert frame.columns == COLUMNS, interval
        assert frame.schema == pl.Schema(FLOW_SCHEMA), interval
        assert frame["time"].null_count() == 0


@pytest.mark.parametrize("timestamp", ["exchange", "true"])
def test_lazy_input_gives_the_same_bars(timestamp: str) -> None:
    trades = generate_tape("2024-01", 1_500, seed=21, first_trade_id=10_000_000)
    previous = generate_tape("2023-12", 1_500, seed=22)
    intervals = ("1m", "1h", "1d")
    eager = compute_flow_bars(trades, previous, month="2024-01", timestamp=timestamp, intervals=intervals)
    lazy = compute_flow_bars(trades.lazy(), previous.lazy(), month="2024-01", timestamp=timestamp,
                             intervals=intervals)
    for interval in intervals:
        assert lazy[interval].equals(eager[interval]), interval
