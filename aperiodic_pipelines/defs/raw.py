"""`{exchange}/raw_trades`: one month of canonical trades per instrument, where data enters the platform.

The month is fetched from the exchange's archive, published to `raw/trades/{exchange}/{native}/{YYYY-MM}.parquet`
with a lineage sidecar (`….sources.json`: every source object with its sha256, counts, missing days), then checked:
- `canonical_schema` (blocking): the file's columns and dtypes are spec §1's;
- `nonempty_month` (blocking): at least one trade (an empty month is a missing or truncated archive);
- `duplicates_and_gaps` (WARN): duplicates dropped ≤ 1 % of the trades, id gaps ≤ 1 per 1,000 trades;
- `complete_month` (WARN): the source lacked no day of the month (`missing_days` is empty).
"""

# No `from __future__ import annotations` here: Dagster inspects the `context` annotation at runtime.
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import polars as pl
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetDep,
    AssetExecutionContext,
    AssetKey,
    AssetsDefinition,
    MaterializeResult,
    asset,
)

from aperiodic_pipelines.defs import policies
from aperiodic_pipelines.defs.checks import FAILED_RULE
from aperiodic_pipelines.defs.metadata import RAW_TABLE_SCHEMA, lineage_metadata, missing_days_metadata
from aperiodic_pipelines.defs.partitions import PartitionedExchange, split_partition_key
from aperiodic_pipelines.defs.resources import SourcesResource, StoreResource
from aperiodic_pipelines.storage import ObjectStore, raw_key
from aperiodic_pipelines.storage.json_objects import publish_json, read_json
from aperiodic_pipelines.trades import CANONICAL_SCHEMA

MAX_DUPLICATE_FRACTION = 0.01  # duplicates the source dropped, per trade kept
MAX_ID_GAP_FRACTION = 0.001  # places where consecutive trade ids jump, per trade


def raw_sources_key(exchange: str, native_symbol: str, month: str) -> str:
    """Sidecar of a raw month: what the source read (objects, digests, counts), as canonical JSON."""
    return raw_key(exchange, native_symbol, month).removesuffix(".parquet") + ".sources.json"


def raw_info(store: ObjectStore, exchange: str, native: str, month: str) -> dict | None:
    key = raw_sources_key(exchange, native, month)
    return read_json(store, key) if store.exists(key) else None


def missing_days_of(info: dict) -> list[str]:
    """The source's `missing_days` (sorted `YYYY-MM-DD`); sources that do not report it count as complete."""
    return sorted(info.get("missing_days") or [])


def fetch_source_month(
    sources: SourcesResource, exchange: str, native: str, month: str, dest: Path, **source_args: Any
) -> dict:
    """Fetch one month from the archive into `dest`; returns the source's result as plain metadata. `source_args`
    go to the source's `fetch_month` (e.g. Hyperliquid's `prepared=` month from `venue_hours`)."""
    from aperiodic_pipelines.sources import fetch_month

    kwargs: dict[str, Any] = dict(source_args)
    if (client := sources.get_s3_client()) is not None:
        kwargs["s3_client"] = client
    result = fetch_month(exchange, native, month, dest=dest, config=sources.get_config(), **kwargs)
    info = result.to_metadata()
    info["missing_days"] = missing_days_of(info)
    return info


def fetch_and_publish_raw(
    store: ObjectStore, sources: SourcesResource, exchange: str, native: str, month: str, workdir: Path,
    **source_args: Any,
) -> dict[str, Any]:
    """Fetch one instrument-month and publish canonical parquet + sources sidecar; returns the sidecar."""
    info = fetch_source_month(sources, exchange, native, month, workdir / f"{month}.parquet", **source_args)
    local = Path(info.pop("path"))
    key = raw_key(exchange, native, month)
    published = store.publish_file(local, key)
    info.update(key=key, uri=published.uri, size=published.size, sha256=published.sha256)
    # The sidecar goes last: its presence means the month's parquet is complete.
    publish_json(store, info, raw_sources_key(exchange, native, month))
    info["local_path"] = str(local)
    return info


def _result(key: AssetKey, name: str, passed: bool, rule: str, severity: AssetCheckSeverity, **detail: Any):
    metadata: dict[str, Any] = dict(detail)
    if not passed:
        metadata[FAILED_RULE] = rule
    return AssetCheckResult(asset_key=key, check_name=name, passed=passed, severity=severity, metadata=metadata)


def raw_check_results(key: AssetKey, info: dict, local_path: Path) -> list[AssetCheckResult]:
    """Evaluate the four raw checks on the month just published (its local file and sidecar)."""
    error, warn = AssetCheckSeverity.ERROR, AssetCheckSeverity.WARN
    schema = dict(pl.read_parquet_schema(local_path))
    expected = dict(CANONICAL_SCHEMA)
    differs = [f"{name}: {schema.get(name)} (expected {dtype})" for name, dtype in expected.items()
               if schema.get(name) != dtype] + [f"unexpected column {name}" for name in schema if name not in expected]
    trades = int(info["trade_count"])
    duplicates, gaps = int(info.get("duplicates_dropped", 0)), int(info.get("id_gaps", 0))
    missing = missing_days_of(info)
    month = f"{info['exchange']} {info['native_symbol']} {info['month']}"
    return [
        _result(key, "canonical_schema", not differs, f"{month}: " + "; ".join(differs[:5]), error,
                columns=len(schema)),
        _result(key, "nonempty_month", trades > 0,
                f"no trades in {month}: the source month is empty or truncated", error, trades=trades),
        _result(
            key, "duplicates_and_gaps",
            duplicates <= MAX_DUPLICATE_FRACTION * max(trades, 1) and gaps <= MAX_ID_GAP_FRACTION * max(trades, 1),
            f"{month}: {duplicates} duplicates dropped and {gaps} id gaps for {trades} trades (limits "
            f"{MAX_DUPLICATE_FRACTION:.0%} duplicates, {MAX_ID_GAP_FRACTION * 1000:g} gap per 1,000 trades)",
            warn, duplicates_dropped=duplicates, id_gaps=gaps,
        ),
        _result(key, "complete_month", not missing,
                f"{month}: the source lacks {len(missing)} day(s): {', '.join(missing[:10])}", warn,
                missing_days=len(missing)),
    ]


RAW_CHECKS = {
    "canonical_schema": ("spec §1 columns and dtypes", True),
    "nonempty_month": ("at least one trade in the month", True),
    "duplicates_and_gaps": (
        f"duplicates dropped ≤ {MAX_DUPLICATE_FRACTION:.0%} of trades, id gaps ≤ 1 per 1,000 trades", False
    ),
    "complete_month": ("the source lacked no day of the month (missing_days is empty)", False),
}


def build_raw_trades(
    exchange: PartitionedExchange,
    kinds: set[str],
    *,
    deps: Sequence[AssetDep] = (),
    source_args: Callable[[SourcesResource, str], dict[str, Any]] | None = None,
) -> AssetsDefinition:
    """`deps` and `source_args(sources, month)`: the venue-wide step a month is built from, if any (venue.py)."""
    key = AssetKey([exchange.slug, "raw_trades"])
    check_specs = [
        AssetCheckSpec(name, asset=key, description=description, blocking=blocking,
                       partitions_def=exchange.partitions)
        for name, (description, blocking) in RAW_CHECKS.items()
    ]

    @asset(
        key=key,
        **policies.exchange_asset_args(exchange.partitions, exchange.name, kinds),
        group_name=policies.RAW_GROUP,
        code_version=policies.RAW_TRADES_VERSION,
        pool=policies.pool_name(exchange.slug),
        retry_policy=policies.NETWORK_RETRY,
        check_specs=check_specs,
        description=f"One month of {exchange.name} trades, canonical (spec §1), with the source objects that fed it.",
        deps=list(deps),
    )
    def raw_trades(context: AssetExecutionContext, store: StoreResource, sources: SourcesResource) -> MaterializeResult:
        native, month = split_partition_key(context.partition_key)
        object_store = store.get_store()
        with policies.permanent_failures(), tempfile.TemporaryDirectory(prefix="aperiodic-raw-") as tmp:
            context.log.info(f"fetching {exchange.name} {native} {month}")
            extra = source_args(sources, month) if source_args is not None else {}
            info = fetch_and_publish_raw(object_store, sources, exchange.name, native, month, Path(tmp), **extra)
            checks = raw_check_results(key, info, Path(info["local_path"]))
        sidecar = object_store.uri(raw_sources_key(exchange.name, native, month))
        return MaterializeResult(
            metadata={
                "dagster/uri": info["uri"],
                "dagster/row_count": int(info["trade_count"]),
                "dagster/column_schema": RAW_TABLE_SCHEMA,
                "symbol": info["symbol"],
                "native_symbol": native,
                "month": month,
                "dataset": info.get("dataset", ""),
                "duplicates_dropped": int(info.get("duplicates_dropped", 0)),
                "id_gaps": int(info.get("id_gaps", 0)),
                "has_arrival_times": bool(info.get("has_arrival_times", False)),
                "sha256": info["sha256"],
                **missing_days_metadata(info["missing_days"]),
                **lineage_metadata(info.get("objects", []), [sidecar]),
            },
            check_results=checks,
        )

    return raw_trades
