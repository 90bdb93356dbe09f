"""`{exchange}/second_stats`: per-second statistics of month m (plus the tail of m−1 the toxicity window needs).

Reads raw trades of m and m−1 from the store; a raw month not in the store yet is fetched from the source into a
temporary file (not published: the raw zone belongs to `raw_trades`). Writes
`intermediate/seconds/{timestamp}/{exchange}/{native}/{YYYY-MM}.parquet` per variant the exchange has.
"""

# No `from __future__ import annotations` here: Dagster inspects the `context` annotation at runtime.
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import polars as pl
from dagster import (
    AssetDep,
    AssetExecutionContext,
    AssetKey,
    AssetsDefinition,
    DimensionPartitionMapping,
    IdentityPartitionMapping,
    MaterializeResult,
    MultiPartitionMapping,
    TimeWindowPartitionMapping,
    asset,
)

from aperiodic_pipelines.defs import policies
from aperiodic_pipelines.defs.metadata import SECONDS_TABLE_SCHEMA
from aperiodic_pipelines.defs.partitions import (
    PartitionedExchange,
    instrument_first_month,
    split_partition_key,
)
from aperiodic_pipelines.defs.raw import fetch_source_month, missing_days_of, raw_info
from aperiodic_pipelines.defs.resources import SourcesResource, StoreResource
from aperiodic_pipelines.defs.summaries import summarise
from aperiodic_pipelines.domain.errors import NotPublishedError
from aperiodic_pipelines.domain.months import previous_month
from aperiodic_pipelines.flow import compute_second_stats
from aperiodic_pipelines.storage import ObjectStore, seconds_key, write_parquet_deterministic
from aperiodic_pipelines.storage.json_objects import canonical_json

# second_stats(m) reads raw trades of month m and m−1 of the same instrument (spec §3).
MONTH_AND_PREVIOUS = MultiPartitionMapping(
    {
        "instrument": DimensionPartitionMapping("instrument", IdentityPartitionMapping()),
        "month": DimensionPartitionMapping(
            "month",
            TimeWindowPartitionMapping(start_offset=-1, end_offset=0, allow_nonexistent_upstream_partitions=True),
        ),
    }
)


@contextmanager
def raw_month_trades(
    store: ObjectStore, sources: SourcesResource, exchange: str, native: str, month: str
) -> Iterator[tuple[Path, dict, str]]:
    """Raw trades of one month as a local parquet path, from the store or else the source. Yields (path, info,
    where from). Raises `NotPublishedError` when the exchange does not have the month."""
    info = raw_info(store, exchange, native, month)
    if info is not None:
        # Pinned: a republication of the raw month during the step cannot change what its several reads see.
        with store.pinned(info["key"]) as path:
            yield path, info, f"{month} from the store"
        return
    with tempfile.TemporaryDirectory(prefix="aperiodic-fetch-") as tmp:
        info = fetch_source_month(sources, exchange, native, month, Path(tmp) / f"{month}.parquet")
        yield Path(info.pop("path")), info, f"{month} fetched from the source (raw_trades {month} not in the store)"


def _open_previous(
    stack: ExitStack, context: AssetExecutionContext, store: ObjectStore, sources: SourcesResource,
    exchange: PartitionedExchange, native: str, month: str,
) -> tuple[Path | None, dict | None, str]:
    """Raw trades of month m−1, or none when m is the exchange's (or the instrument's) first month."""
    # The instrument's first month is known from the listing when it was registered: asking the archive for m−1
    # would only wait out its 404s (the monthly file's, then every day's: ~3 s).
    first_month = instrument_first_month(context.instance, exchange, native)
    if month <= first_month:
        whose = f"{exchange.name}'s" if first_month == exchange.first_month else f"{native}'s registered"
        return None, None, f"{month} is {whose} first archive month: no previous month"
    prev = previous_month(month)
    try:
        return stack.enter_context(raw_month_trades(store, sources, exchange.name, native, prev))
    except NotPublishedError as exc:
        context.log.info(
            f"no {prev} for {exchange.name} {native}: treating {month} as its first month ({summarise(exc)})"
        )
        return None, None, f"{prev} not published by {exchange.name}: {month} is the instrument's first month"


def compute_and_store_second_stats(
    context: AssetExecutionContext, exchange: PartitionedExchange, store: ObjectStore, sources: SourcesResource
) -> MaterializeResult:
    native, month = split_partition_key(context.partition_key)
    metadata: dict[str, Any] = {"month": month, "native_symbol": native, "dagster/column_schema": SECONDS_TABLE_SCHEMA}
    with ExitStack() as stack:
        current_path, current, origin = stack.enter_context(
            raw_month_trades(store, sources, exchange.name, native, month)
        )
        prev_path, prev, note = _open_previous(stack, context, store, sources, exchange, native, month)
        metadata["this_month"], metadata["previous_month"] = origin, note
        sources_used = [*(prev or {}).get("objects", []), *current.get("objects", [])]
        variants = ["exchange"]
        if exchange.has_arrival_times:
            if not current.get("has_arrival_times"):
                metadata["true_variant"] = f"not produced: {month} has no arrival times (no trades?)"
            elif prev is not None and not prev.get("has_arrival_times"):
                metadata["true_variant"] = f"not produced: {month} has arrival times but the previous month has none"
            else:
                variants.append("true")
        for timestamp in variants:
            stats = compute_second_stats(
                pl.scan_parquet(current_path),
                None if prev_path is None else pl.scan_parquet(prev_path),
                month=month,
                timestamp=timestamp,
            )
            with tempfile.TemporaryDirectory(prefix="aperiodic-sec-") as tmp:
                path = Path(tmp) / "seconds.parquet"
                write_parquet_deterministic(
                    stats.frame,
                    path,
                    metadata={
                        "aperiodic.month": month,
                        "aperiodic.timestamp": timestamp,
                        "aperiodic.has_previous": str(stats.has_previous).lower(),
                        "aperiodic.sources": canonical_json(sources_used),
                        "aperiodic.missing_days": canonical_json(missing_days_of(current)),
                        "aperiodic.dataset": str(current.get("dataset", "")),
                    },
                )
                published = store.publish_file(path, seconds_key(timestamp, exchange.name, native, month))
            metadata[f"seconds/{timestamp}"] = stats.frame.height
            if timestamp == "exchange":
                metadata["dagster/uri"] = published.uri
                metadata["dagster/row_count"] = stats.frame.height
    return MaterializeResult(metadata=metadata)


def build_second_stats(exchange: PartitionedExchange, kinds: set[str]) -> AssetsDefinition:
    raw = AssetKey([exchange.slug, "raw_trades"])
    variants = "exchange and arrival time" if exchange.has_arrival_times else "exchange time"

    @asset(
        key=AssetKey([exchange.slug, "second_stats"]),
        **policies.exchange_asset_args(exchange.partitions, exchange.name, kinds),
        deps=[AssetDep(raw, partition_mapping=MONTH_AND_PREVIOUS)],
        group_name=policies.FLOW_GROUP,
        code_version=policies.SECOND_STATS_VERSION,
        retry_policy=policies.NETWORK_RETRY,
        description=f"Per-second statistics by {variants} of month m plus the 20-day tail of m−1 (spec §3).",
    )
    def second_stats(context: AssetExecutionContext, store: StoreResource, sources: SourcesResource) -> MaterializeResult:
        with policies.permanent_failures():
            return compute_and_store_second_stats(context, exchange, store.get_store(), sources)

    return second_stats
