"""The 36-field contract (spec §2–§3): field names, which are counts, which are nullable, which add up.

Names only: the polars dtypes live with the engine (`flow.grid.FLOW_SCHEMA`).
"""

from __future__ import annotations

TOXICITY_WINDOW = 20
SIDES = ("buy", "sell")
BUCKETS = ("small", "medium", "large")
SMALL_BELOW = 100.0  # notional < 100 is small
LARGE_FROM = 1_000.0  # notional >= 1000 is large

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

# An empty bar (no trades) is one constant row (spec §2): these fields are 0 in it, these null; the score, the
# only field that depends on its neighbours, is null or 0 (its flow and volatility are 0).
ZERO_WHEN_EMPTY: tuple[str, ...] = tuple(f for f in FLOW_FIELDS if f not in NULLABLE_FIELDS)
NULL_WHEN_EMPTY: tuple[str, ...] = tuple(f for f in FLOW_FIELDS if f in NULLABLE_FIELDS and f != "flow_toxicity_score")

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
