"""The asset graph: raw_trades → second_stats → flow_bars_{exchange,true} (+ blocking checks) → published_flow_bars.

Assets read and write parquet through the store resource and return metadata; no IO manager ever pickles a
frame. Bars are staged under `staging/` and only `published_flow_bars`, which runs after the blocking checks
passed, copies them to the published layout `flow/{timestamp}/{exchange}/{interval}/{native}/{YYYY-MM}.parquet`.
"""

# No `from __future__ import annotations` here: Dagster inspects the `context` annotation of ops at runtime.
import json
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import polars as pl
from dagster import (
    AssetDep,
    AssetExecutionContext,
    AssetKey,
    Backoff,
    DimensionPartitionMapping,
    Failure,
    IdentityPartitionMapping,
    Jitter,
    MaterializeResult,
    MetadataValue,
    MultiPartitionMapping,
    OpExecutionContext,
    Out,
    Output,
    RetryPolicy,
    TableColumn,
    TableSchema,
    TimeWindowPartitionMapping,
    asset,
    graph_asset,
    op,
)

from aperiodic_pipelines import SCHEMA_VERSION
from aperiodic_pipelines.defs.checks import bar_check_specs, not_applicable_results, run_bar_checks
from aperiodic_pipelines.defs.partitions import (
    EXCHANGES,
    FIRST_MONTH,
    flow_partitions,
    month_of,
    previous_month,
    split_partition_key,
)
from aperiodic_pipelines.defs.plots import month_picture_metadata
from aperiodic_pipelines.defs.resources import SourcesResource, StoreResource, store_is_s3
from aperiodic_pipelines.errors import (
    AperiodicError,
    ChecksumMismatchError,
    CorruptArchiveError,
    InvalidBarsError,
    InvalidTradesError,
    NotPublishedError,
    SymbolError,
)
from aperiodic_pipelines.flow import (
    FLOW_SCHEMA,
    INTERVALS,
    SECOND_STATS_SCHEMA,
    SecondStats,
    bars_from_second_stats,
    compute_second_stats,
)
from aperiodic_pipelines.storage import (
    LocalStore,
    ObjectStore,
    flow_key,
    raw_key,
    read_parquet_metadata,
    seconds_key,
    sha256_file,
    write_parquet_deterministic,
)
from aperiodic_pipelines.storage.index import PublishedFile, PublishedMonth, record_published_month
from aperiodic_pipelines.trades import CANONICAL_SCHEMA

# Bump an asset's code version when its output for the same input changes; Dagster then flags stale partitions.
RAW_TRADES_VERSION = "1"
SECOND_STATS_VERSION = "1"
FLOW_BARS_VERSION = "2"  # 2: `time` is zone-less UTC wall clock (spec §2 as changed)
PUBLISHED_VERSION = "2"
CODE_VERSION = f"flow-bars-v{FLOW_BARS_VERSION}"  # written into every published file (spec §4)

RAW_GROUP = "raw"
FLOW_GROUP = "flow_bars"
KINDS = {"polars", "parquet", *({"s3"} if store_is_s3() else set())}
TIMESTAMPS = ("exchange", "true")
STAGING_PREFIX = "staging/"

# Network steps: archive downloads and store uploads fail transiently; retry with growing, jittered waits.
NETWORK_RETRY = RetryPolicy(max_retries=3, delay=5, backoff=Backoff.EXPONENTIAL, jitter=Jitter.PLUS_MINUS)

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


class MissingInputError(AperiodicError):
    """An object an upstream asset should have written is absent or unusable; rerun that asset first."""


# Errors that a retry cannot fix (bad or missing data, wrong order of runs): fail at once, never retried.
PERMANENT_ERRORS = (
    InvalidTradesError,
    InvalidBarsError,
    SymbolError,
    NotPublishedError,
    ChecksumMismatchError,
    CorruptArchiveError,
    MissingInputError,
    ValueError,
)


@contextmanager
def permanent_failures() -> Iterator[None]:
    """Turn permanent errors into a `Failure` that skips the RetryPolicy (transient ones stay retryable)."""
    try:
        yield
    except PERMANENT_ERRORS as exc:
        raise Failure(description=f"{type(exc).__name__}: {exc}", allow_retries=False) from exc


def _table_schema(schema: Mapping[str, pl.DataType]) -> TableSchema:
    return TableSchema(columns=[TableColumn(name, str(dtype)) for name, dtype in schema.items()])


BARS_TABLE_SCHEMA = _table_schema(FLOW_SCHEMA)
RAW_TABLE_SCHEMA = _table_schema(CANONICAL_SCHEMA)
SECONDS_TABLE_SCHEMA = _table_schema(SECOND_STATS_SCHEMA)


def exchange_slug(exchange: str) -> str:
    """`binance-futures` → `binance_futures` (op and pool names)."""
    return exchange.replace("-", "_")


def raw_sources_key(exchange: str, native_symbol: str, month: str) -> str:
    """Sidecar of a raw month: what the source read (objects, digests, counts), as canonical JSON."""
    return raw_key(exchange, native_symbol, month).removesuffix(".parquet") + ".sources.json"


def staged_key(timestamp: str, exchange: str, interval: str, native_symbol: str, month: str) -> str:
    return STAGING_PREFIX + flow_key(timestamp, exchange, interval, native_symbol, month)


def manifest_key(timestamp: str, exchange: str, native_symbol: str, month: str) -> str:
    """What a flow_bars step staged for one variant, and whether its checks passed."""
    return f"{STAGING_PREFIX}manifests/{timestamp}/{exchange}/{native_symbol}/{month}.json"


def _native(exchange: str, symbol: str) -> str:
    from aperiodic_pipelines.sources.symbols import to_native

    return to_native(exchange, symbol)


def _canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _publish_json(store: ObjectStore, value: Any, key: str, workdir: Path) -> None:
    path = workdir / Path(key).name
    path.write_text(_canonical_json(value) + "\n")
    store.publish_file(path, key, content_type="application/json")


def _read_json(store: ObjectStore, key: str) -> Any:
    return json.loads(store.read_bytes(key))


@contextmanager
def _local_copy(store: ObjectStore, key: str) -> Iterator[Path]:
    """A local path of the object: the file itself for a local store, else a temporary download."""
    if isinstance(store, LocalStore):
        yield store.path(key)
        return
    with tempfile.TemporaryDirectory(prefix="aperiodic-") as tmp:
        yield store.download(key, Path(tmp) / Path(key).name)


# ---------------------------------------------------------------------------------------------- raw_trades
# A graph-backed asset, so that each exchange's download is its own op with its own concurrency pool
# (`download_binance_futures`, …): one op runs per partition, the others are skipped.


@op(out={exchange_slug(e): Out(str, is_required=False) for e in EXCHANGES})
def route_to_exchange(context: OpExecutionContext) -> Iterator[Output]:
    """Start only the download op of the partition's exchange."""
    exchange, _, _ = split_partition_key(context.partition_key)
    yield Output(str(context.partition_key), output_name=exchange_slug(exchange))


def fetch_and_publish_raw(
    store: ObjectStore, sources: SourcesResource, exchange: str, symbol: str, month: str
) -> dict[str, Any]:
    """Fetch one instrument-month from its archive and publish canonical parquet + sources sidecar."""
    from aperiodic_pipelines.sources import fetch_month

    native = _native(exchange, symbol)
    kwargs: dict[str, Any] = {}
    if (client := sources.get_s3_client()) is not None:
        kwargs["s3_client"] = client
    with tempfile.TemporaryDirectory(prefix="aperiodic-raw-") as tmp:
        result = fetch_month(
            exchange, symbol, month, dest=Path(tmp) / f"{month}.parquet", config=sources.get_config(), **kwargs
        )
        key = raw_key(exchange, native, month)
        published = store.publish_file(result.path, key)
        info = result.to_metadata()
        info.pop("path", None)
        info.update(key=key, uri=published.uri, size=published.size, sha256=published.sha256)
        # The sidecar goes last: its presence means the month's parquet is complete.
        _publish_json(store, info, raw_sources_key(exchange, native, month), Path(tmp))
    return info


def _download_op(exchange: str):
    slug = exchange_slug(exchange)

    @op(
        name=f"download_{slug}",
        pool=f"download_{slug}",
        retry_policy=NETWORK_RETRY,
        tags={"aperiodic/exchange": exchange},
        description=f"Fetch one month of {exchange} trades and publish canonical parquet to the raw zone.",
    )
    def download(
        context: OpExecutionContext, store: StoreResource, sources: SourcesResource, partition: str
    ) -> dict:
        with permanent_failures():
            exchange_, symbol, month = split_partition_key(partition)
            context.log.info(f"fetching {exchange_} {symbol} {month}")
            return fetch_and_publish_raw(store.get_store(), sources, exchange_, symbol, month)

    return download


DOWNLOAD_OPS = {exchange: _download_op(exchange) for exchange in EXCHANGES}


@op(description="Record the raw month's lineage as the asset's materialization metadata.")
def record_raw_trades(context: OpExecutionContext, results: list[dict]) -> None:
    info = results[0]
    objects = info.get("objects", [])
    context.add_output_metadata(
        {
            "dagster/uri": info["uri"],
            "dagster/row_count": int(info["trade_count"]),
            "dagster/column_schema": RAW_TABLE_SCHEMA,
            "exchange": info["exchange"],
            "symbol": info["symbol"],
            "native_symbol": info["native_symbol"],
            "month": info["month"],
            "dataset": info.get("dataset", ""),
            "trade_count": int(info["trade_count"]),
            "duplicates_dropped": int(info.get("duplicates_dropped", 0)),
            "id_gaps": int(info.get("id_gaps", 0)),
            "has_arrival_times": bool(info.get("has_arrival_times", False)),
            "sha256": info["sha256"],
            "source_objects": MetadataValue.json(objects),
            "source_digests": MetadataValue.md(
                "\n".join(f"- `{o['location']}` sha256 `{o['sha256']}` ({o['size']} B)" for o in objects) or "none"
            ),
        }
    )


@graph_asset(
    partitions_def=flow_partitions,
    group_name=RAW_GROUP,
    kinds=KINDS,
    code_version=RAW_TRADES_VERSION,
    description="One month of canonical trades (spec §1) per instrument, with the source objects that fed it.",
)
def raw_trades():
    routed = route_to_exchange()
    downloads = [DOWNLOAD_OPS[e](getattr(routed, exchange_slug(e))) for e in EXCHANGES]
    return record_raw_trades(downloads)


# -------------------------------------------------------------------------------------------- second_stats


def _raw_info(store: ObjectStore, exchange: str, native: str, month: str) -> dict | None:
    key = raw_sources_key(exchange, native, month)
    return _read_json(store, key) if store.exists(key) else None


@contextmanager
def _raw_month_trades(
    store: ObjectStore, sources: SourcesResource, exchange: str, symbol: str, month: str
) -> Iterator[tuple[Path, dict, str]]:
    """Raw trades of one month as a local parquet path: from the store, else fetched from the source into a
    temporary file (not published; the raw zone belongs to `raw_trades`). Yields (path, info, where from).
    Raises `NotPublishedError` when the exchange does not have the month."""
    native = _native(exchange, symbol)
    info = _raw_info(store, exchange, native, month)
    if info is not None:
        with _local_copy(store, info["key"]) as path:
            yield path, info, f"{month} from the store"
        return
    from aperiodic_pipelines.sources import fetch_month

    kwargs: dict[str, Any] = {}
    if (client := sources.get_s3_client()) is not None:
        kwargs["s3_client"] = client
    with tempfile.TemporaryDirectory(prefix="aperiodic-fetch-") as tmp:
        result = fetch_month(
            exchange, symbol, month, dest=Path(tmp) / f"{month}.parquet", config=sources.get_config(), **kwargs
        )
        info = result.to_metadata()
        info.pop("path", None)
        yield result.path, info, f"{month} fetched from the source (raw_trades {month} not in the store yet)"


@contextmanager
def _previous_month_trades(
    context: AssetExecutionContext, store: ObjectStore, sources: SourcesResource, exchange: str, symbol: str, month: str
) -> Iterator[tuple[Path | None, dict | None, str]]:
    """Raw trades of month m−1, or none when m is the instrument's first month (the exchange has no m−1)."""
    prev = previous_month(month)
    if f"{month}-01" == FIRST_MONTH:
        yield None, None, f"{month} is the first month of the partitions: no previous month"
        return
    try:
        context_manager = _raw_month_trades(store, sources, exchange, symbol, prev)
        path, info, origin = context_manager.__enter__()
    except NotPublishedError as exc:
        context.log.info(f"no {prev} for {exchange} {symbol}: treating {month} as its first month ({exc})")
        yield None, None, f"{prev} not published by {exchange}: {month} is the instrument's first month"
        return
    try:
        yield path, info, f"previous month {origin}"
    finally:
        context_manager.__exit__(None, None, None)


@asset(
    partitions_def=flow_partitions,
    deps=[AssetDep(AssetKey("raw_trades"), partition_mapping=MONTH_AND_PREVIOUS)],
    group_name=FLOW_GROUP,
    kinds=KINDS,
    code_version=SECOND_STATS_VERSION,
    retry_policy=NETWORK_RETRY,
    description="Per-second sufficient statistics of the month (plus the tail of the month before), per variant.",
)
def second_stats(context: AssetExecutionContext, store: StoreResource, sources: SourcesResource) -> MaterializeResult:
    with permanent_failures():
        return compute_and_store_second_stats(context, store, sources)


def compute_and_store_second_stats(
    context: AssetExecutionContext, store: StoreResource, sources: SourcesResource
) -> MaterializeResult:
    """Per-second statistics of each variant the raw months allow, written to the intermediate zone."""
    exchange, symbol, month = split_partition_key(context.partition_key)
    native = _native(exchange, symbol)
    object_store = store.get_store()
    metadata: dict[str, Any] = {
        "month": month, "exchange": exchange, "symbol": symbol, "dagster/column_schema": SECONDS_TABLE_SCHEMA,
    }
    # raw_trades(m) is normally in the store; an asset backfill also reaches month b+1 of a range [a, b]
    # (second_stats(b+1) reads raw(b)), whose raw trades are then fetched on the fly.
    with (
        _raw_month_trades(object_store, sources, exchange, symbol, month) as (current_path, current, origin),
        _previous_month_trades(context, object_store, sources, exchange, symbol, month) as (prev_path, prev, note),
    ):
        metadata["this_month"] = origin
        sources_used = [*(prev or {}).get("objects", []), *current.get("objects", [])]
        variants = {"exchange": ""}
        if not current.get("has_arrival_times"):
            variants["true"] = f"{current.get('dataset') or exchange} has no arrival times"
        elif prev is not None and not prev.get("has_arrival_times"):
            variants["true"] = f"{month} has arrival times but the previous month does not"
        else:
            variants["true"] = ""
        metadata["previous_month"] = note
        for timestamp, missing in variants.items():
            if missing:
                metadata[f"{timestamp}_variant"] = f"not produced: {missing}"
                continue
            stats = compute_second_stats(
                pl.scan_parquet(current_path),
                None if prev_path is None else pl.scan_parquet(prev_path),
                month=month,
                timestamp=timestamp,
            )
            key = seconds_key(timestamp, exchange, native, month)
            with tempfile.TemporaryDirectory(prefix="aperiodic-sec-") as tmp:
                path = Path(tmp) / "seconds.parquet"
                write_parquet_deterministic(
                    stats.frame,
                    path,
                    metadata={
                        "aperiodic.month": month,
                        "aperiodic.timestamp": timestamp,
                        "aperiodic.has_previous": str(stats.has_previous).lower(),
                        "aperiodic.sources": _canonical_json(sources_used),
                        "aperiodic.dataset": str(current.get("dataset", "")),
                    },
                )
                published = object_store.publish_file(path, key)
            metadata[f"{timestamp}_variant"] = published.uri
            metadata[f"{timestamp}_seconds"] = stats.frame.height
            if timestamp == "exchange":
                metadata["dagster/uri"] = published.uri
                metadata["dagster/row_count"] = stats.frame.height
    return MaterializeResult(metadata=metadata)


# ------------------------------------------------------------------------------------- flow_bars_{variant}


def _load_second_stats(store: ObjectStore, key: str) -> tuple[SecondStats, dict[str, str]]:
    with _local_copy(store, key) as path:
        kv = read_parquet_metadata(path)
        frame = pl.read_parquet(path)
    stats = SecondStats(
        frame=frame, month=kv["aperiodic.month"], timestamp=kv["aperiodic.timestamp"],
        has_previous=kv["aperiodic.has_previous"] == "true",
    )
    return stats, kv


def stage_flow_bars(
    context: AssetExecutionContext, store_resource: StoreResource, timestamp: str, asset_key: AssetKey
) -> MaterializeResult:
    """Compute, check and stage one variant's bars for all intervals; record a manifest for publishing."""
    from aperiodic_pipelines.storage import bars_metadata

    exchange, symbol, month = split_partition_key(context.partition_key)
    native = _native(exchange, symbol)
    store = store_resource.get_store()
    manifest: dict[str, Any] = {
        "timestamp": timestamp, "exchange": exchange, "symbol": symbol, "native_symbol": native, "month": month,
    }
    with tempfile.TemporaryDirectory(prefix="aperiodic-bars-") as tmp:
        seconds = seconds_key(timestamp, exchange, native, month)
        if not store.exists(seconds):
            reason = f"no {timestamp}-time statistics for {exchange} {symbol} {month} (source has no arrival times)"
            if timestamp == "exchange":
                raise MissingInputError(f"{seconds} missing from {store!r}: materialize second_stats first")
            manifest.update(produced=False, reason=reason, checks_passed=True, files=[])
            _publish_json(store, manifest, manifest_key(timestamp, exchange, native, month), Path(tmp))
            context.log.info(f"{timestamp} variant skipped: {reason}")
            return MaterializeResult(
                metadata={
                    "produced": False,
                    "note": f"not produced: {reason}",
                    "dagster/row_count": 0,
                    "dagster/column_schema": BARS_TABLE_SCHEMA,
                    "dagster/uri": store.uri(manifest_key(timestamp, exchange, native, month)),
                },
                check_results=not_applicable_results(asset_key, reason),
            )
        stats, kv = _load_second_stats(store, seconds)
        bars = bars_from_second_stats(stats, intervals=INTERVALS)
        check_results = run_bar_checks(asset_key, bars, month)
        passed = all(result.passed for result in check_results)
        sources_used = json.loads(kv.get("aperiodic.sources", "[]"))
        files = []
        for interval, frame in bars.items():
            path = Path(tmp) / f"{interval}.parquet"
            write_parquet_deterministic(
                frame,
                path,
                metadata=bars_metadata(
                    exchange=exchange, symbol=symbol, native_symbol=native, interval=interval,
                    timestamp=timestamp, month=month, row_count=frame.height, sources=sources_used,
                    code_version=CODE_VERSION, schema_version=SCHEMA_VERSION,
                ),
            )
            key = staged_key(timestamp, exchange, interval, native, month)
            published = store.publish_file(path, key)
            files.append(
                {
                    "interval": interval, "staged_key": key, "key": flow_key(timestamp, exchange, interval, native, month),
                    "sha256": published.sha256, "size": published.size, "rows": frame.height,
                }
            )
        manifest.update(produced=True, reason="", checks_passed=passed, files=files)
        _publish_json(store, manifest, manifest_key(timestamp, exchange, native, month), Path(tmp))
    metadata: dict[str, Any] = {
        "dagster/uri": store.uri(manifest_key(timestamp, exchange, native, month)),
        "dagster/row_count": sum(f["rows"] for f in files),
        "dagster/column_schema": BARS_TABLE_SCHEMA,
        "produced": True,
        "checks_passed": passed,
        "rows_per_interval": MetadataValue.json({f["interval"]: f["rows"] for f in files}),
        "staged_files": MetadataValue.json({f["interval"]: store.uri(f["staged_key"]) for f in files}),
        "source_objects": MetadataValue.json(sources_used),
        "trades": int(bars["1d"].select(pl.col("taker_buy_count").sum() + pl.col("taker_sell_count").sum()).item()),
    }
    try:
        metadata["month_picture"] = month_picture_metadata(
            bars["1d"], title=f"{exchange} {symbol} {month} ({timestamp} time)"
        )
    except Exception as exc:  # a picture must never fail the data
        context.log.warning(f"month picture not drawn: {exc}")
    return MaterializeResult(metadata=metadata, check_results=check_results)


def _flow_bars_asset(timestamp: str):
    key = AssetKey(f"flow_bars_{timestamp}")
    label = "exchange timestamps (ts_exchange)" if timestamp == "exchange" else "arrival timestamps (ts_arrival)"

    @asset(
        key=key,
        partitions_def=flow_partitions,
        deps=[AssetKey("second_stats")],
        group_name=FLOW_GROUP,
        kinds=KINDS,
        code_version=FLOW_BARS_VERSION,
        check_specs=bar_check_specs(key),
        description=f"Flow bars by {label}, all 8 intervals, staged under staging/ until the checks pass.",
    )
    def flow_bars(context: AssetExecutionContext, store: StoreResource) -> MaterializeResult:
        with permanent_failures():
            return stage_flow_bars(context, store, timestamp, key)

    return flow_bars


flow_bars_exchange = _flow_bars_asset("exchange")
flow_bars_true = _flow_bars_asset("true")


# ------------------------------------------------------------------------------------- published_flow_bars


def publish_staged(store: ObjectStore, manifest: Mapping[str, Any], workdir: Path) -> list[dict[str, Any]]:
    """Copy one variant's staged files to their published keys, verifying each against the manifest."""
    if not manifest["checks_passed"]:
        raise MissingInputError(
            f"refusing to publish {manifest['timestamp']} bars of {manifest['exchange']} {manifest['symbol']} "
            f"{manifest['month']}: their checks failed"
        )
    published = []
    for entry in manifest["files"]:
        local = store.download(entry["staged_key"], workdir / f"{manifest['timestamp']}-{entry['interval']}.parquet")
        size, sha = sha256_file(local)
        if sha != entry["sha256"]:
            raise MissingInputError(f"staged {entry['staged_key']} changed since its checks ran (sha256 {sha})")
        obj = store.publish_file(local, entry["key"])
        published.append(
            {
                "timestamp": manifest["timestamp"], "interval": entry["interval"], "key": obj.key, "uri": obj.uri,
                "sha256": obj.sha256, "size": size, "rows": entry["rows"],
            }
        )
        local.unlink()
    return published


@asset(
    partitions_def=flow_partitions,
    deps=[AssetKey("flow_bars_exchange"), AssetKey("flow_bars_true")],
    group_name=FLOW_GROUP,
    kinds=KINDS,
    code_version=PUBLISHED_VERSION,
    retry_policy=NETWORK_RETRY,
    description="Checked bars, atomically published to flow/{timestamp}/{exchange}/{interval}/{native}/{YYYY-MM}.parquet.",
)
def published_flow_bars(context: AssetExecutionContext, store: StoreResource) -> MaterializeResult:
    with permanent_failures():
        return publish_partition(context, store)


def publish_partition(context: AssetExecutionContext, store: StoreResource) -> MaterializeResult:
    """Publish every staged file of the partition whose checks passed, then clear its staging."""
    exchange, symbol, month = split_partition_key(context.partition_key)
    native = _native(exchange, symbol)
    object_store = store.get_store()
    published: list[dict[str, Any]] = []
    notes: dict[str, str] = {}
    manifests = {}
    with tempfile.TemporaryDirectory(prefix="aperiodic-pub-") as tmp:
        for timestamp in TIMESTAMPS:
            key = manifest_key(timestamp, exchange, native, month)
            if not object_store.exists(key):
                raise MissingInputError(f"{key} missing from {object_store!r}: materialize flow_bars_{timestamp} first")
            manifests[timestamp] = manifest = _read_json(object_store, key)
            if not manifest["produced"]:
                notes[timestamp] = f"not published: {manifest['reason']}"
                continue
            published.extend(publish_staged(object_store, manifest, Path(tmp)))
    # Staging is done with once every file is in place; a failure above keeps it for the retry.
    for timestamp, manifest in manifests.items():
        for entry in manifest["files"]:
            object_store.delete(entry["staged_key"])
        object_store.delete(manifest_key(timestamp, exchange, native, month))
    # The index goes last: a manifest never names a file that is not published yet.
    record_published_month(
        object_store,
        PublishedMonth(
            exchange=exchange, symbol=symbol, native_symbol=native, month=month,
            files=tuple(
                PublishedFile(
                    timestamp=p["timestamp"], interval=p["interval"], key=p["key"], sha256=p["sha256"],
                    rows=p["rows"], size=p["size"],
                )
                for p in published
            ),
        ),
    )
    exchange_1m = next(p for p in published if p["key"] == flow_key("exchange", exchange, "1m", native, month))
    return MaterializeResult(
        metadata={
            "dagster/uri": exchange_1m["uri"],
            "dagster/row_count": sum(p["rows"] for p in published),
            "dagster/column_schema": BARS_TABLE_SCHEMA,
            "month": month_of(month),
            "exchange": exchange,
            "symbol": symbol,
            "native_symbol": native,
            "files": len(published),
            "objects": MetadataValue.json(published),
            **{f"{timestamp}_variant": note for timestamp, note in notes.items()},
        }
    )


ASSETS = [raw_trades, second_stats, flow_bars_exchange, flow_bars_true, published_flow_bars]
