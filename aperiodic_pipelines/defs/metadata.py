"""What the assets tell the operator: table schemas with the spec's column descriptions, row counts, lineage.

Conventions (docs/dagster.md, "Metadata"):
- `dagster/row_count` is the number of rows of the asset's primary object: canonical trades for `raw_trades`,
  non-empty seconds (exchange time) for `second_stats`, and the **1m bars** of the month for the flow-bar assets
  (one row per minute of the month, in the 1m file). Every interval's count is its own entry `rows/<interval>`.
- `dagster/uri` names an object that exists after the run: the raw parquet, the per-second parquet, the staged
  variant's manifest (flow bars), the published month's index manifest (published bars).
- Source lineage: a count, a sha256 digest of the canonical list, and the link to the sidecar in the store
  (`raw/trades/…/{YYYY-MM}.sources.json`) that lists every object; never the list itself.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import polars as pl
from dagster import MetadataValue, TableColumn, TableSchema

from aperiodic_pipelines.flow import FLOW_SCHEMA, SECOND_STATS_SCHEMA
from aperiodic_pipelines.storage.json_objects import canonical_json
from aperiodic_pipelines.trades import CANONICAL_SCHEMA

PRIMARY_INTERVAL = "1m"  # the interval `dagster/row_count` of bar assets counts

_BUCKET_RANGES = {"small": "notional < 100", "medium": "100 <= notional < 1000", "large": "notional >= 1000"}
_SIDE_NAMES = {"buy": "buys", "sell": "sells"}


def _flow_descriptions() -> dict[str, str]:
    """Spec §2's definition of `time` and the 36 fields, one line each."""
    out = {
        "time": "bar open time, UTC wall clock without a time zone; bars are [t, t + interval)",
        "taker_buy_volume": "Σ qty of taker buys (base units)",
        "taker_sell_volume": "Σ qty of taker sells (base units)",
        "taker_buy_count": "number of taker buys",
        "taker_sell_count": "number of taker sells",
        "volume_delta": "buy volume − sell volume (base units)",
        "volume_delta_notional": "Σ notional of buys − Σ notional of sells (quote currency)",
        "flow_entropy": "binary entropy (base 2) of buy volume / (buy + sell volume); null if no volume",
        "flow_toxicity_score": "flow toxicity (spec §3); null in warm-up or with zero denominators",
        "taker_buy_sell_ratio": "buy volume / sell volume; null if sell volume = 0",
        "taker_buy_sell_count_ratio": "buy count / sell count; null if sell count = 0",
        "taker_buy_sell_percentage": "buy volume / (buy + sell volume), a fraction; null if no volume",
        "taker_buy_sell_count_percentage": "buy count / (buy + sell count), a fraction; null if no trades",
    }
    for side, trades in _SIDE_NAMES.items():
        for bucket, bounds in _BUCKET_RANGES.items():
            out[f"taker_{side}_{bucket}_order_volume"] = f"Σ notional of {bucket} {trades} ({bounds})"
            out[f"taker_{side}_{bucket}_order_count"] = f"number of {bucket} {trades} ({bounds})"
    for side, trades in _SIDE_NAMES.items():
        for bucket in _BUCKET_RANGES:
            out[f"taker_{side}_{bucket}_order_percentage"] = (
                f"{bucket} {side} notional / total {side} notional, a fraction; null if no {side} notional"
            )
        for bucket in _BUCKET_RANGES:
            out[f"taker_{side}_{bucket}_order_count_percentage"] = (
                f"{bucket} {side} count / {side} count, a fraction; null if no {trades}"
            )
    return out


FLOW_COLUMN_DESCRIPTIONS = _flow_descriptions()
TRADE_COLUMN_DESCRIPTIONS = {
    "ts_exchange": "trade time as the exchange reports it, µs since the epoch (UTC)",
    "ts_arrival": "time the trade reached the collector, µs (UTC); null where the source has none",
    "trade_id": "exchange trade id (Binance aggTrades: the aggregate id)",
    "price": "quote currency per unit of base, > 0",
    "qty": "base units, > 0 (OKX contracts times the contract value)",
    "is_buy": "true when the taker (aggressor) bought",
}


def table_schema(schema: Mapping[str, pl.DataType], descriptions: Mapping[str, str] | None = None) -> TableSchema:
    descriptions = descriptions or {}
    return TableSchema(
        columns=[TableColumn(name, str(dtype), description=descriptions.get(name)) for name, dtype in schema.items()]
    )


BARS_TABLE_SCHEMA = table_schema(FLOW_SCHEMA, FLOW_COLUMN_DESCRIPTIONS)
RAW_TABLE_SCHEMA = table_schema(CANONICAL_SCHEMA, TRADE_COLUMN_DESCRIPTIONS)
SECONDS_TABLE_SCHEMA = table_schema(SECOND_STATS_SCHEMA)


def rows_by_interval(rows: Mapping[str, int]) -> dict[str, Any]:
    """`dagster/row_count` (1m rows) and one numeric `rows/<interval>` entry per interval."""
    out: dict[str, Any] = {f"rows/{interval}": int(count) for interval, count in rows.items()}
    if PRIMARY_INTERVAL in rows:
        out["dagster/row_count"] = int(rows[PRIMARY_INTERVAL])
    return out


def lineage_digest(objects: Sequence[Mapping[str, Any]]) -> str:
    """sha256 of the canonical JSON of the source objects (same inputs → same digest)."""
    return hashlib.sha256(canonical_json([dict(o) for o in objects]).encode()).hexdigest()


def lineage_metadata(objects: Sequence[Mapping[str, Any]], sidecar_uris: Sequence[str]) -> dict[str, Any]:
    """Source lineage in three entries, whatever the number of objects."""
    return {
        "source_objects": len(objects),
        "source_digest": lineage_digest(objects),
        "source_lineage": MetadataValue.path(sidecar_uris[0]) if len(sidecar_uris) == 1
        else MetadataValue.json(list(sidecar_uris)),
    }


def missing_days_metadata(missing_days: Sequence[str]) -> dict[str, Any]:
    """The days the source lacked (sorted `YYYY-MM-DD`): a count and the list (a month has at most 31)."""
    return {"missing_days": len(missing_days), "missing_day_list": MetadataValue.json(list(missing_days))}
