"""`reconciles_with_exchange_klines`: a non-blocking (WARN) check that binance-futures 1m exchange-time bars add up
to Binance's own 1m klines for the month (docs/reconciliation.md).

To attach it to `flow_bars_exchange`: add `klines_check_spec(key)` to the asset's `check_specs`, and in the step
yield `evaluate_klines_check(...)` for binance-futures partitions (with `bars["1m"]` and the dataset recorded in
the second statistics' `aperiodic.dataset`) and `klines_not_applicable(...)` for the other exchanges.

It never fails the step: a failed reconciliation, or a klines archive that cannot be read (wrong checksum,
corrupt zip, download failure), is a failed WARN result whose `failed_rule` the alert sensor quotes, and the
month is still published. Klines that Binance has not published make a passing result with a note.
"""

from __future__ import annotations

from typing import Any

import polars as pl
from dagster import AssetCheckResult, AssetCheckSeverity, AssetCheckSpec, AssetKey, MetadataValue

from aperiodic_pipelines.defs.checks import FAILED_RULE
from aperiodic_pipelines.defs.partitions import flow_partitions
from aperiodic_pipelines.errors import AperiodicError
from aperiodic_pipelines.flow.reconcile import Reconciliation, reconcile_with_klines
from aperiodic_pipelines.sources.config import SourceConfig
from aperiodic_pipelines.sources.download import Downloader
from aperiodic_pipelines.sources.klines import fetch_klines_month, klines_path

KLINES_CHECK = "reconciles_with_exchange_klines"
COUNTED_DATASET = "trades"  # the only source whose trade count is the klines' count of individual trades


def count_not_compared(dataset: str) -> str:
    what = "aggregate trades" if dataset == "aggTrades" else f"{dataset!r} records"
    return f"count not compared: the bars count {what} ({dataset} dataset), the klines count individual trades"


def klines_check_spec(asset_key: AssetKey) -> AssetCheckSpec:
    """The per-partition, non-blocking reconciliation check of the exchange-time bars."""
    return AssetCheckSpec(
        KLINES_CHECK,
        asset=asset_key,
        description="binance-futures: every 1m bar's buy volume, volume, buy and total notional (and, with the "
        "trades dataset, trade count) equal Binance's published 1m klines within their printed decimals",
        blocking=False,
        partitions_def=flow_partitions,
    )


def evaluate_klines_check(
    asset_key: AssetKey,
    bars_1m: pl.DataFrame,
    native_symbol: str,
    month: str,
    dataset: str,
    config: SourceConfig,
    *,
    downloader: Downloader | None = None,
) -> AssetCheckResult:
    """Fetch (or reuse from cache) the month's klines and reconcile `bars_1m` with them; severity WARN.

    `dataset` is what the bars were built from (`SourceResult.dataset`: aggTrades, trades, tardis, …); trade
    counts are compared only for `trades`.
    """
    url = f"{config.binance_url.rstrip('/')}/{klines_path(native_symbol, month)}"
    try:
        klines = fetch_klines_month(native_symbol, month, config, downloader=downloader)
    except AperiodicError as exc:  # permanent (checksum, corrupt) or retries exhausted: tell, do not block
        return _result(asset_key, False, {
            "klines_object": url,
            FAILED_RULE: f"klines unusable: {type(exc).__name__}: {exc}"[:2000],
        })
    if klines is None:
        return _result(asset_key, True, {"klines": f"no klines published: {url}"})
    compare_counts = dataset == COUNTED_DATASET
    outcome = reconcile_with_klines(bars_1m, klines.frame, compare_counts=compare_counts, decimals=klines.decimals)
    metadata = {
        **reconciliation_metadata(outcome),
        "klines_object": klines.object.location,
        "klines_sha256": klines.object.sha256,
        "klines_size": klines.object.size,
        "dataset": dataset,
    }
    if not compare_counts:
        metadata["count"] = count_not_compared(dataset)
    if not outcome.passed:
        worst = outcome.worst.describe() if outcome.worst else ""
        metadata[FAILED_RULE] = (
            f"{outcome.bars_differing} of {outcome.bars_compared} 1m bars differ from "
            f"{klines.object.location.rsplit('/', 1)[-1]}; worst: {worst}"
        )
    return _result(asset_key, outcome.passed, metadata)


def klines_not_applicable(asset_key: AssetKey, reason: str) -> AssetCheckResult:
    """A passing result with a note, for partitions without exchange klines (other exchanges)."""
    return _result(asset_key, True, {"not_applicable": reason})


def reconciliation_metadata(outcome: Reconciliation) -> dict[str, Any]:
    """Counts, the worst bar with both values, and per-field tolerances, as check metadata."""
    metadata: dict[str, Any] = {
        "bars_compared": outcome.bars_compared,
        "bars_differing": outcome.bars_differing,
        "bars_without_kline": outcome.bars_without_kline,
        "bars_with_trades_without_kline": outcome.bars_with_trades_without_kline,
        "fields": MetadataValue.json({
            f.field: {
                "ours": f.ours, "decimals": f.decimals, "half_unit": f.half_unit, "bars_differing": f.bars_differing,
            }
            for f in outcome.fields
        }),
        "tolerance": "half a unit of the kline's last printed decimal + (trades in bar + 8)·2^-52·|value|; "
        "count exact",
    }
    if outcome.klines_outside_bars:
        metadata["klines_outside_bars"] = outcome.klines_outside_bars
    if outcome.worst is not None:
        worst = outcome.worst
        metadata.update(
            worst_bar=worst.time.isoformat(sep=" "),
            worst_field=worst.field,
            worst_ours=worst.ours,
            worst_exchange=worst.exchange if worst.exchange is not None else "no kline",
        )
        if worst.difference is not None:
            metadata.update(worst_difference=worst.difference, worst_tolerance=worst.tolerance)
    return metadata


def _result(asset_key: AssetKey, passed: bool, metadata: dict[str, Any]) -> AssetCheckResult:
    return AssetCheckResult(
        asset_key=asset_key,
        check_name=KLINES_CHECK,
        passed=passed,
        severity=AssetCheckSeverity.WARN,
        metadata=metadata,
    )
