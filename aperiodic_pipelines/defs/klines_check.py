"""`reconciles_with_exchange_klines`: a non-blocking (WARN) check that binance-futures 1m exchange-time bars add up
to Binance's own 1m klines for the month (docs/reconciliation.md).

It is a `BarCheck` attached to binance-futures' graph in `definitions.EXTRA_BAR_CHECKS`; the flow-bars step
evaluates it on the 1m bars it has just computed, with the dataset the second statistics recorded.

It never fails the step: a failed reconciliation, or a klines archive that cannot be read (wrong checksum,
corrupt zip, download failure), is a failed WARN result whose `failed_rule` the alert sensor quotes, and the
month is still published. Klines that Binance has not published make a passing result with a note.
"""

from __future__ import annotations

from typing import Any

import polars as pl
from dagster import AssetCheckSeverity, MetadataValue

from aperiodic_pipelines.defs.bars import BarCheck
from aperiodic_pipelines.defs.checks import CheckOutcome
from aperiodic_pipelines.domain.errors import AperiodicError
from aperiodic_pipelines.flow.reconcile import Reconciliation, reconcile_with_klines
from aperiodic_pipelines.sources.config import SourceConfig
from aperiodic_pipelines.sources.download import Downloader
from aperiodic_pipelines.sources.klines import fetch_klines_month, klines_path

KLINES_CHECK = "reconciles_with_exchange_klines"
COUNTED_DATASET = "trades"  # the only source whose trade count is the klines' count of individual trades


def count_not_compared(dataset: str) -> str:
    what = "aggregate trades" if dataset == "aggTrades" else f"{dataset!r} records"
    return f"count not compared: the bars count {what} ({dataset} dataset), the klines count individual trades"


def klines_outcome(
    bars_1m: pl.DataFrame,
    native_symbol: str,
    month: str,
    dataset: str,
    config: SourceConfig,
    *,
    downloader: Downloader | None = None,
) -> CheckOutcome:
    """Fetch (or reuse from cache) the month's klines and reconcile `bars_1m` with them.

    `dataset` is what the bars were built from (`SourceResult.dataset`: aggTrades, trades, tardis, …); trade
    counts are compared only for `trades`.
    """
    url = f"{config.binance_url.rstrip('/')}/{klines_path(native_symbol, month)}"
    try:
        klines = fetch_klines_month(native_symbol, month, config, downloader=downloader)
    except AperiodicError as exc:  # permanent (checksum, corrupt) or retries exhausted: tell, do not block
        return CheckOutcome(False, f"klines unusable: {type(exc).__name__}: {exc}"[:2000], {"klines_object": url})
    if klines is None:
        return CheckOutcome(True, detail={"klines": f"no klines published: {url}"})
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
    if outcome.passed:
        return CheckOutcome(True, detail=metadata)
    worst = outcome.worst.describe() if outcome.worst else ""
    return CheckOutcome(
        False,
        f"{outcome.bars_differing} of {outcome.bars_compared} 1m bars differ from "
        f"{klines.object.location.rsplit('/', 1)[-1]}; worst: {worst}",
        metadata,
    )


reconciles_with_exchange_klines = BarCheck(
    name=KLINES_CHECK,
    description="binance-futures: every 1m bar's buy volume, volume, buy and total notional (and, with the "
    "trades dataset, trade count) equal Binance's published 1m klines within their printed decimals",
    evaluate=lambda bars, given: klines_outcome(
        bars["1m"], given.native_symbol, given.month, given.dataset, given.sources.get_config()
    ),
    severity=AssetCheckSeverity.WARN,
    blocking=False,
    timestamps=("exchange",),
)


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
