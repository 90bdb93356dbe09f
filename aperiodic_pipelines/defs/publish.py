"""`{exchange}/published_flow_bars`: the checked bars in the published layout, where data leaves the platform.

`storage.staging.publish_month` does the work (stage → checks → publish the month as a whole, idempotent). The
asset's `dagster/uri` is the month's index manifest `index/flow/{exchange}/{native}/{YYYY-MM}.json`, which names
all its files; its first metadata entry is the month picture. Check `matches_staged_and_index`: every published
object carries its staged (or indexed) sha256 and the index in the store names exactly what was published.

A second run publishing the same partition at the same time fails at once (`PublicationConflictError`, not
retried) and records no materialization: its metadata would describe files it did not leave in place.
"""

# No `from __future__ import annotations` here: Dagster inspects the `context` annotation at runtime.
import io

import polars as pl
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    AssetsDefinition,
    Failure,
    MaterializeResult,
    asset,
)

from aperiodic_pipelines.defs import policies
from aperiodic_pipelines.defs.checks import FAILED_RULE
from aperiodic_pipelines.defs.metadata import BARS_TABLE_SCHEMA, lineage_metadata, rows_by_interval
from aperiodic_pipelines.defs.partitions import PartitionedExchange as Exchange
from aperiodic_pipelines.defs.partitions import split_partition_key
from aperiodic_pipelines.defs.plots import month_picture_metadata
from aperiodic_pipelines.defs.raw import raw_info, raw_sources_key
from aperiodic_pipelines.defs.resources import StoreResource
from aperiodic_pipelines.storage import ObjectStore
from aperiodic_pipelines.storage.index import PublishedMonth
from aperiodic_pipelines.storage.staging import PublicationConflictError, publish_month

PUBLISHED_CHECK = "matches_staged_and_index"



def _picture(store: ObjectStore, published: PublishedMonth):
    (daily_file,) = [f for f in published.files if (f.timestamp, f.interval) == ("exchange", "1d")]
    daily = pl.read_parquet(io.BytesIO(store.read_bytes(daily_file.key)))  # ~31 rows, the version just committed
    return month_picture_metadata(daily, title=f"{published.exchange} {published.native_symbol} {published.month}")


def build_published_flow_bars(exchange: Exchange, kinds: set[str]) -> AssetsDefinition:
    key = AssetKey([exchange.slug, "published_flow_bars"])
    timestamps = ("exchange", "true") if exchange.has_arrival_times else ("exchange",)

    @asset(
        key=key,
        **policies.exchange_asset_args(exchange.partitions, exchange.name, kinds),
        deps=[AssetKey([exchange.slug, f"flow_bars_{t}"]) for t in timestamps],
        group_name=policies.FLOW_GROUP,
        code_version=policies.PUBLISHED_VERSION,
        retry_policy=policies.NETWORK_RETRY,
        freshness_policy=policies.MONTHLY_FRESHNESS,
        check_specs=[
            AssetCheckSpec(PUBLISHED_CHECK, asset=key, partitions_def=exchange.partitions,
                           description="every published object has its staged sha256; the month's index names them")
        ],
        description=(
            f"Checked {exchange.name} bars ({' and '.join(timestamps)} time), published atomically to "
            "flow/{timestamp}/{exchange}/{interval}/{native}/{YYYY-MM}.parquet and indexed per month."
        ),
    )
    def published_flow_bars(context: AssetExecutionContext, store: StoreResource) -> MaterializeResult:
        from aperiodic_pipelines.domain.symbols import to_atlas

        native, month = split_partition_key(context.partition_key)
        object_store = store.get_store()
        try:
            with policies.permanent_failures():
                outcome = publish_month(
                    object_store, exchange=exchange.name, symbol=to_atlas(exchange.name, native),
                    native_symbol=native, month=month, timestamps=timestamps,
                )
        except PublicationConflictError as exc:  # another run has the partition: a retry would race it again
            raise Failure(description=f"PublicationConflictError: {exc}", allow_retries=False) from exc
        if outcome.reverified:
            context.log.info(f"already published, re-verified against the index: {', '.join(outcome.reverified)}")
        if outcome.retired:
            context.log.info(f"retired {len(outcome.retired)} superseded versions (their URLs have expired)")
        problems = list(outcome.problems)
        metadata = {}
        try:  # first entry: what the operator sees first on the asset's page
            metadata["month_picture"] = _picture(object_store, outcome.month)
        except Exception as exc:  # a picture must never fail the data
            context.log.warning(f"month picture not drawn: {exc}")
        info = raw_info(object_store, exchange.name, native, month) or {}
        sidecar = object_store.uri(raw_sources_key(exchange.name, native, month))
        first_variant = [f for f in outcome.month.files if f.timestamp == "exchange"]
        metadata.update(
            {
                "dagster/uri": outcome.index_uri,
                **rows_by_interval({f.interval: f.rows for f in first_variant}),
                "dagster/column_schema": BARS_TABLE_SCHEMA,
                "files": len(outcome.month.files),
                "variants": ", ".join(sorted({f.timestamp for f in outcome.month.files})),
                "published_now": ", ".join(outcome.from_staging) or "none (re-verified)",
                **lineage_metadata(info.get("objects", []), [sidecar]),
            }
        )
        check = AssetCheckResult(
            asset_key=key, check_name=PUBLISHED_CHECK, passed=not problems, severity=AssetCheckSeverity.ERROR,
            metadata={"files": len(outcome.month.files), **({FAILED_RULE: "; ".join(problems)[:2000]} if problems else {})},
        )
        return MaterializeResult(metadata=metadata, check_results=[check])

    return published_flow_bars
