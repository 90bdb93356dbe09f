"""A month streamed in pieces gives what the month taken whole gives.

- The source's facts (rule breaks, order breaks, id gaps, repeats, the first conflict) are counted batch by batch
  while the canonical file is written: any split of the rows into batches counts the same.
- An out-of-order month sorted an hour at a time is the month sorted a day at a time.
- The mirror's 1m klines of a month given day by day (as `month_e2e_bench` generates a 200 M-trade month) are the
  bytes of the klines of the month given whole, also when a minute is split between two pieces.
"""

from __future__ import annotations

import io
from pathlib import Path

import polars as pl

from aperiodic_pipelines.mirror.klines import binance_klines_csv
from aperiodic_pipelines.sources.canonical import (
    DAY_US,
    HOUR_US,
    PARQUET_OPTIONS,
    CanonicalStats,
    _FactCounter,
    _sort_by_span,
    month_bounds_us,
)
from aperiodic_pipelines.synthetic import generate_tape, iter_tape_days
from aperiodic_pipelines.trades import CANONICAL_SCHEMA

MONTH = "2024-03"


def _rows() -> pl.DataFrame:
    start, end = month_bounds_us(MONTH)
    rows = [  # (ts, id, price, qty, is_buy)
        (start, 1, 10.0, 1.0, True),
        (start + 5, 2, 10.0, 1.0, False),
        (start + 5, 2, 10.0, 1.0, False),  # an exact repeat
        (start + 9, 5, 11.0, 2.0, True),  # an id gap
        (start + 9, 5, 11.5, 2.0, True),  # a conflict: same time and id, another price
        (start + 7, 6, 11.0, 0.0, True),  # out of order; qty not > 0
        (start + 12, 4, 12.0, 1.0, False),  # id decreases
        (end, 7, float("inf"), 1.0, True),  # outside the month; not finite
        (start + 20, 8, 12.0, 1.0, None),  # a null side
    ]
    return pl.DataFrame(
        [(ts, None, tid, price, qty, buy) for ts, tid, price, qty, buy in rows], schema=CANONICAL_SCHEMA, orient="row"
    )


def test_facts_counted_in_batches_do_not_depend_on_the_split() -> None:
    start, end = month_bounds_us(MONTH)
    rows = _rows()
    whole = _FactCounter(start, end)
    whole.add(rows)
    assert whole.totals == {
        "n": 9, "null": 1, "not_positive": 1, "not_finite": 1, "outside_month": 1, "unsorted": 4,
        "ids_not_increasing": 3, "gaps": 2, "repeats": 1, "conflicts": 1,
    }
    assert whole.first_conflict is not None
    assert [row["price"] for row in whole.first_conflict] == [11.0, 11.5]
    for cuts in ([4], [3, 5], [1, 2, 3, 4, 5, 6, 7, 8], [0, 9]):  # [4]: the conflicting pair spans the seam
        counter = _FactCounter(start, end)
        for lo, hi in zip([0, *cuts], [*cuts, rows.height], strict=True):
            counter.add(rows.slice(lo, hi - lo))
        assert counter.totals == whole.totals, cuts
        assert counter.first_conflict == whole.first_conflict, cuts


def test_klines_of_a_month_given_by_day_are_the_klines_of_the_whole_month() -> None:
    days = list(iter_tape_days(MONTH, 50_000, 3, start_price=60_000.0, with_arrival=False))
    whole = pl.concat(days)
    expected = binance_klines_csv(whole, MONTH)
    assert binance_klines_csv(iter(days), MONTH) == expected
    middle = whole.height // 2 + 1  # a minute split between the two pieces
    assert whole["ts_exchange"][middle - 1] // 60_000_000 == whole["ts_exchange"][middle] // 60_000_000
    assert binance_klines_csv([whole[:middle], whole[middle:]], MONTH) == expected
    assert binance_klines_csv(iter(days[1:]), MONTH) != expected  # a day missing shows


def test_out_of_order_month_sorted_by_hour_is_the_month_sorted_by_day(tmp_path: Path) -> None:
    """A busy month is sorted an hour at a time (memory flat in its size): the same file, counts and gaps."""
    tape = generate_tape(MONTH, 20_000, seed=5, with_arrival=False)
    shuffled = pl.concat([tape[::2], tape[1::2], tape[100:140]])  # halves interleaved, 40 exact repeats
    start, end = month_bounds_us(MONTH)
    results = {}
    for span in (DAY_US, HOUR_US):
        work = tmp_path / str(span)
        work.mkdir()
        shuffled.write_parquet(work / "staged.parquet", **PARQUET_OPTIONS)
        stats = _sort_by_span(work / "staged.parquet", work, start, end, span, name=MONTH)
        results[span] = (stats, (work / "sorted.parquet").read_bytes())
    assert results[DAY_US] == results[HOUR_US]
    assert results[DAY_US][0] == CanonicalStats(trade_count=tape.height, duplicates_dropped=40, id_gaps=0)
    assert pl.read_parquet(io.BytesIO(results[DAY_US][1])).equals(tape)
