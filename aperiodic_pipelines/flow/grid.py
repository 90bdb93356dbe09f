"""The bar grid of spec §2: intervals, month bounds in µs, and the names of the 36 fields."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import polars as pl

US_PER_SECOND = 1_000_000

INTERVAL_SECONDS: dict[str, int] = {
    "1s": 1,
    "1m": 60,
    "5m": 300,
    "15m": 900,
    "30m": 1_800,
    "1h": 3_600,
    "4h": 14_400,
    "1d": 86_400,
}
INTERVALS: tuple[str, ...] = tuple(INTERVAL_SECONDS)

# Each interval is rolled up from the next finer one it divides evenly, so a coarser bar is, by construction,
# the sum of the finer bars it covers.
ROLLUP_FROM: dict[str, str] = dict(zip(INTERVALS[1:], INTERVALS[:-1], strict=True))

TOXICITY_WINDOW = 20
SIDES = ("buy", "sell")
BUCKETS = ("small", "medium", "large")
SMALL_BELOW = 100.0  # notional < 100 is small
LARGE_FROM = 1_000.0  # notional >= 1000 is large

# Zone-less, holding UTC wall-clock values (spec §2): the catalog's client trims `time` with naive bounds.
TIME_DTYPE = pl.Datetime("us")

FLOW_FIELDS: tuple[str, ...] = (
    "taker_buy_volume",
    "taker_sell_volume",
    "taker_buy_count",
    "taker_sell_count",
    "volume_delta",
    "volume_delta_notional",
    "flow_entropy",
    "flow_toxicity_score",
    "taker_buy_sell_ratio",
    "taker_buy_sell_count_ratio",
    "taker_buy_sell_percentage",
    "taker_buy_sell_count_percentage",
    *(f"taker_{side}_{bucket}_order_{what}" for side in SIDES for bucket in BUCKETS for what in ("volume", "count")),
    *(f"taker_buy_{bucket}_order_percentage" for bucket in BUCKETS),
    *(f"taker_buy_{bucket}_order_count_percentage" for bucket in BUCKETS),
    *(f"taker_sell_{bucket}_order_percentage" for bucket in BUCKETS),
    *(f"taker_sell_{bucket}_order_count_percentage" for bucket in BUCKETS),
)
assert len(FLOW_FIELDS) == 36
FLOW_COLUMNS: tuple[str, ...] = ("time", *FLOW_FIELDS)

COUNT_FIELDS = frozenset(f for f in FLOW_FIELDS if f.endswith("_count"))
FLOW_SCHEMA: dict[str, pl.DataType] = {
    "time": TIME_DTYPE,
    **{f: (pl.Int64() if f in COUNT_FIELDS else pl.Float64()) for f in FLOW_FIELDS},
}

# Fields that are null where undefined (no volume, no trades on a side, warm-up); every other field is never null.
NULLABLE_FIELDS: frozenset[str] = frozenset(
    {
        "flow_entropy",
        "flow_toxicity_score",
        "taker_buy_sell_ratio",
        "taker_buy_sell_count_ratio",
        "taker_buy_sell_percentage",
        "taker_buy_sell_count_percentage",
        *(f"taker_{s}_{b}_order_{kind}" for s in SIDES for b in BUCKETS for kind in ("percentage", "count_percentage")),
    }
)

# Fields that are sums over trades: a coarser bar is the sum of the finer bars it covers.
ADDITIVE_FIELDS: tuple[str, ...] = (
    "taker_buy_volume",
    "taker_sell_volume",
    "taker_buy_count",
    "taker_sell_count",
    "volume_delta",
    "volume_delta_notional",
    *(f"taker_{side}_{bucket}_order_{what}" for side in SIDES for bucket in BUCKETS for what in ("volume", "count")),
)

_MONTH = re.compile(r"^(\d{4})-(0[1-9]|1[0-2])$")


def parse_month(month: str) -> tuple[int, int]:
    """`"2024-01"` → `(2024, 1)`; anything else is a ValueError naming the bad value."""
    match = _MONTH.match(month) if isinstance(month, str) else None
    if not match:
        raise ValueError(f"month must look like 'YYYY-MM', got {month!r}")
    return int(match.group(1)), int(match.group(2))


def shift_month(month: str, by: int) -> str:
    year, mon = parse_month(month)
    index = year * 12 + (mon - 1) + by
    return f"{index // 12:04d}-{index % 12 + 1:02d}"


def month_start_us(month: str) -> int:
    year, mon = parse_month(month)
    return int(datetime(year, mon, 1, tzinfo=UTC).timestamp()) * US_PER_SECOND


def month_bounds_us(month: str) -> tuple[int, int]:
    """[first µs of the month, first µs of the next month)."""
    return month_start_us(month), month_start_us(shift_month(month, 1))


def bars_in_month(month: str, interval: str) -> int:
    start, end = month_bounds_us(month)
    return (end - start) // (INTERVAL_SECONDS[interval] * US_PER_SECOND)
