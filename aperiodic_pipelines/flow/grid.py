"""The bar grid of spec §2: intervals, month bounds in µs, and the names of the 36 fields."""

from __future__ import annotations

import polars as pl

from aperiodic_pipelines.domain.contract import (  # noqa: F401  (the engine's names for the contract)
    ADDITIVE_FIELDS,
    BUCKETS,
    COUNT_FIELDS,
    FLOW_COLUMNS,
    FLOW_FIELDS,
    LARGE_FROM,
    NULL_WHEN_EMPTY,
    NULLABLE_FIELDS,
    SIDES,
    SMALL_BELOW,
    TOXICITY_WINDOW,
    ZERO_WHEN_EMPTY,
)
from aperiodic_pipelines.domain.intervals import INTERVAL_SECONDS, INTERVALS
from aperiodic_pipelines.domain.months import (  # noqa: F401
    US_PER_SECOND,
    month_bounds_us,
    month_start_us,
    parse_month,
    shift_month,
)

# Each interval is rolled up from the next finer one it divides evenly, so a coarser bar is, by construction,
# the sum of the finer bars it covers.
ROLLUP_FROM: dict[str, str] = dict(zip(INTERVALS[1:], INTERVALS[:-1], strict=True))

# Zone-less, holding UTC wall-clock values (spec §2): the catalog's client trims `time` with naive bounds.
TIME_DTYPE = pl.Datetime("us")

FLOW_SCHEMA: dict[str, pl.DataType] = {
    "time": TIME_DTYPE,
    **{f: (pl.Int64() if f in COUNT_FIELDS else pl.Float64()) for f in FLOW_FIELDS},
}


def bars_in_month(month: str, interval: str) -> int:
    start, end = month_bounds_us(month)
    return (end - start) // (INTERVAL_SECONDS[interval] * US_PER_SECOND)
