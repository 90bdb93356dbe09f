"""The public entry point: canonical trades → dense flow bars at every interval."""

from __future__ import annotations

from collections.abc import Iterable

import polars as pl

from aperiodic_pipelines.flow.bars import bars_from_second_stats
from aperiodic_pipelines.flow.grid import INTERVALS
from aperiodic_pipelines.flow.seconds import compute_second_stats


def compute_flow_bars(
    trades: pl.DataFrame | pl.LazyFrame,
    previous: pl.DataFrame | pl.LazyFrame | None = None,
    *,
    month: str,
    timestamp: str = "exchange",
    intervals: Iterable[str] = INTERVALS,
) -> dict[str, pl.DataFrame]:
    """Flow bars of `month` (spec §2–§3) for each interval, keyed by interval name.

    `trades` are the canonical trades of raw month m, `previous` those of raw month m−1 (None for an
    instrument's first month; an empty table for a month without trades). Pass `pl.scan_parquet(...)` for
    large months: the trades are read one day at a time, so memory does not grow with the month's size.
    """
    stats = compute_second_stats(trades, previous, month=month, timestamp=timestamp)
    return bars_from_second_stats(stats, intervals=intervals)
