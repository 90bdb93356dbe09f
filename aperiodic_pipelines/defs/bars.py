"""`{exchange}/flow_bars_{exchange,true}`: one variant's bars at all 8 intervals, checked, then staged.

The checks run inside the step on the frames it has just computed (reading a month of 1s bars back once per
check would multiply the IO), the 1s table a row group at a time as it is derived and written (a busy month's is
~0.8 GB whole): the three blocking bar checks of `checks.py`, plus any extra checks the exchange's
graph was built with (`BarCheck`, e.g. binance-futures' `reconciles_with_exchange_klines`). The bars go to
`staging/` (`storage.staging`); only `published_flow_bars`, which runs after the blocking checks passed,
publishes them.
"""

# No `from __future__ import annotations` here: Dagster inspects the `context` annotation at runtime.
import json
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import polars as pl
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    AssetsDefinition,
    MaterializeResult,
    asset,
)

from aperiodic_pipelines import SCHEMA_VERSION
from aperiodic_pipelines.defs import policies
from aperiodic_pipelines.defs.checks import FAILED_RULE, CheckOutcome, MonthBarChecks, bar_check_specs
from aperiodic_pipelines.defs.metadata import (
    BARS_TABLE_SCHEMA,
    PRIMARY_INTERVAL,
    missing_days_metadata,
    rows_by_interval,
)
from aperiodic_pipelines.defs.partitions import PartitionedExchange, split_partition_key
from aperiodic_pipelines.defs.resources import SourcesResource, StoreResource
from aperiodic_pipelines.flow import (
    FLOW_COLUMNS,
    INTERVALS,
    SecondStats,
    bars_from_second_stats,
    second_bar_slices,
)
from aperiodic_pipelines.storage import (
    ObjectStore,
    bars_metadata,
    flow_key,
    read_parquet_metadata,
    seconds_key,
    write_parquet_row_groups,
)
from aperiodic_pipelines.storage.lineage import publish_sources_lineage
from aperiodic_pipelines.storage.parquet import ROW_GROUP_SIZE, RowGroupWriter
from aperiodic_pipelines.storage.staging import MissingInputError, StagedFile, manifest_key, stage_variant

TIMESTAMP_LABELS = {"exchange": "exchange timestamps (ts_exchange)", "true": "arrival timestamps (ts_arrival)"}


@dataclass(frozen=True)
class BarsInput:
    """What an extra bar check sees besides the bars: which instrument-month, and the archive sources."""

    exchange: str
    symbol: str
    native_symbol: str
    month: str
    timestamp: str
    sources: SourcesResource
    dataset: str = ""  # what the bars were built from (aggTrades, trades, …), as the second statistics record it


@dataclass(frozen=True)
class BarCheck:
    """An extra check on a variant's bars, evaluated in the flow-bars step on the whole tables of 1m and coarser
    (the 1s table is never whole in memory). Attach with
    `build_exchange_graph(exchange, extra_bar_checks=[BarCheck(...)])`."""

    name: str
    description: str
    evaluate: Callable[[Mapping[str, pl.DataFrame], BarsInput], CheckOutcome]
    severity: AssetCheckSeverity = AssetCheckSeverity.WARN
    blocking: bool = False
    timestamps: tuple[str, ...] = ("exchange",)


def _extra_results(key: AssetKey, checks: Sequence[BarCheck], bars, bars_input: BarsInput) -> list[AssetCheckResult]:
    results = []
    for check in checks:
        try:
            outcome = check.evaluate(bars, bars_input)
        except Exception as exc:  # a crashing check is a failed check, reported with its cause
            outcome = CheckOutcome(False, f"check crashed: {type(exc).__name__}: {exc}")
        metadata: dict[str, Any] = dict(outcome.detail or {})
        if not outcome.passed:
            metadata[FAILED_RULE] = outcome.failed_rule[:2000]
        results.append(
            AssetCheckResult(asset_key=key, check_name=check.name, passed=outcome.passed,
                             severity=check.severity, metadata=metadata)
        )
    return results


def _read_second_stats(path: Path) -> tuple[SecondStats, dict[str, str]]:
    kv = read_parquet_metadata(path)
    stats = SecondStats(
        frame=pl.read_parquet(path), month=kv["aperiodic.month"], timestamp=kv["aperiodic.timestamp"],
        has_previous=kv["aperiodic.has_previous"] == "true",
    )
    return stats, kv


def _seconds_reader(path: Path) -> Callable[[int, int], pl.DataFrame]:
    """The per-second statistics of [start, end) s from their file: the row groups holding them are read, a
    morsel at a time, and only the rows in range kept (the file is sorted by `second`)."""
    def seconds_between(start: int, end: int) -> pl.DataFrame:
        return (pl.scan_parquet(path).filter(pl.col("second").is_between(start, end - 1))
                .collect(engine="streaming"))

    return seconds_between


def stage_flow_bars(
    context: AssetExecutionContext, key: AssetKey, bars_input: BarsInput, store: ObjectStore,
    extra_checks: Sequence[BarCheck],
) -> MaterializeResult:
    """Compute, check and stage one variant's bars for all intervals; the manifest records the checks' verdict."""
    exchange, native, month, timestamp = (
        bars_input.exchange, bars_input.native_symbol, bars_input.month, bars_input.timestamp
    )
    seconds = seconds_key(timestamp, exchange, native, month)
    if not store.exists(seconds):
        hint = " (the month has no arrival times: see second_stats' true_variant)" if timestamp == "true" else ""
        raise MissingInputError(f"{store.uri(seconds)} missing: materialize second_stats first{hint}")
    # Pinned: a republication of the statistics during the step cannot change what its several reads see.
    with tempfile.TemporaryDirectory(prefix="aperiodic-bars-") as tmp, store.pinned(seconds) as stats_file, \
            ThreadPoolExecutor(1, thread_name_prefix="coarser-bars") as beside:
        stats, kv = _read_second_stats(stats_file)
        bars_input = replace(bars_input, dataset=kv.get("aperiodic.dataset", ""))
        sources_used = json.loads(kv.get("aperiodic.sources", "[]"))
        missing_days = json.loads(kv.get("aperiodic.missing_days", "[]"))

        def metadata(interval: str, rows: int) -> dict[str, str]:
            return bars_metadata(
                exchange=exchange, symbol=bars_input.symbol, native_symbol=native, interval=interval,
                timestamp=timestamp, month=month, row_count=rows, sources=sources_used, missing_days=missing_days,
                code_version=policies.CODE_VERSION, schema_version=SCHEMA_VERSION,
            )

        # The coarser intervals roll up from the per-second statistics and are small; the 1s table (a busy
        # month: ~0.8 GB) is derived, checked and written one row group at a time, never whole. A quiet month's
        # statistics (smaller than one slice of bars) stay in memory and its coarser tables are derived beside
        # the 1s table too; a busy month's are rolled up first and let go (~0.4 GB that the 1s slices, read from
        # the statistics' file, do not need).
        quiet = stats.frame.estimated_size() < ROW_GROUP_SIZE * len(FLOW_COLUMNS) * 8
        coarser_tables = beside.submit(bars_from_second_stats, stats, intervals=INTERVALS[1:])
        if not quiet:
            coarser_tables.result()
        second_checks, coarser_checks = MonthBarChecks(month), MonthBarChecks(month)

        def check_and_write_coarser() -> tuple[list[StagedFile], list[AssetCheckResult]]:
            files = []
            coarser = coarser_tables.result()
            for interval, frame in coarser.items():
                coarser_checks.add(interval, frame)
                path = Path(tmp) / f"{interval}.parquet"
                # A month of bars at 1m or coarser (≤ 44,640 rows) is one row group.
                files.append(StagedFile(interval, path, write_parquet_row_groups(
                    [frame], path, metadata=metadata(interval, frame.height))))
            return files, _extra_results(key, extra_checks, coarser, bars_input)

        # More than 32 sources: the footers name a lineage sidecar instead of listing them (spec §4); it goes
        # first.
        publish_sources_lineage(store, sources_used)
        # The coarser tables are checked and written beside the 1s table (polars and pyarrow release the GIL):
        # a quiet month's step is mostly its 1s grid, and this is a fifth of the rest.
        coarser_work = beside.submit(check_and_write_coarser)
        path = Path(tmp) / "1s.parquet"
        slices = (second_bar_slices(stats, ROW_GROUP_SIZE) if quiet else second_bar_slices(
            replace(stats, frame=stats.frame.clear()), ROW_GROUP_SIZE, seconds_between=_seconds_reader(stats_file)))
        del stats
        files = [StagedFile("1s", path, _write_second_bars(slices, path, second_checks,
                                                           lambda rows: metadata("1s", rows)))]
        coarser_files, extra_results = coarser_work.result()
        files += coarser_files
        check_results = second_checks.results(key, coarser_checks) + extra_results
        passed = all(r.passed for r in check_results if r.severity == AssetCheckSeverity.ERROR)
        stage_variant(
            store, exchange=exchange, symbol=bars_input.symbol, native_symbol=native, month=month,
            timestamp=timestamp, files=files, checks_passed=passed,
        )
    days = coarser_tables.result()["1d"]
    trades = int(days.select(pl.col("taker_buy_count").sum() + pl.col("taker_sell_count").sum()).item() or 0)
    return MaterializeResult(
        metadata={
            # Where these bars are read once published (staging is cleared by publishing).
            "dagster/uri": store.uri(flow_key(timestamp, exchange, PRIMARY_INTERVAL, native, month)),
            "staged_manifest": store.uri(manifest_key(timestamp, exchange, native, month)),
            **rows_by_interval({f.interval: f.rows for f in files}),
            "dagster/column_schema": BARS_TABLE_SCHEMA,
            "checks_passed": passed,
            "trades": trades,
            **missing_days_metadata(missing_days),
        },
        check_results=check_results,
    )


def _write_second_bars(
    slices: Iterable[pl.DataFrame], path: Path, checks: MonthBarChecks, metadata: Callable[[int], Mapping[str, str]],
) -> int:
    """Check and write the month's 1s bars a row group at a time as `slices` derives them; returns the rows.

    The next slice is derived and checked while a thread writes the current one (pyarrow releases the GIL): two
    slices in memory (~80 MB each). At 50 M trades that took the step from 8.1 to 6.1 s for +18 MB, below the
    statistics step's peak; busy months used to write one slice at a time.
    """
    with RowGroupWriter(path) as writer, ThreadPoolExecutor(1, thread_name_prefix="bars-writer") as pool:
        writing: Future[None] | None = None
        for part in slices:
            checks.add("1s", part)
            if writing is not None:
                writing.result()
            writing = pool.submit(writer.write, part)
            del part  # the writer's alone
        if writing is not None:
            writing.result()
        return writer.finish(metadata(writer.rows))


def build_flow_bars(
    exchange: PartitionedExchange, timestamp: str, kinds: set[str], extra_checks: Sequence[BarCheck] = ()
) -> AssetsDefinition:
    key = AssetKey([exchange.slug, f"flow_bars_{timestamp}"])
    extra = [c for c in extra_checks if timestamp in c.timestamps]
    check_specs = bar_check_specs(key, exchange.partitions) + [
        AssetCheckSpec(c.name, asset=key, description=c.description, blocking=c.blocking,
                       partitions_def=exchange.partitions)
        for c in extra
    ]

    @asset(
        key=key,
        **policies.exchange_asset_args(exchange.partitions, exchange.name, kinds),
        deps=[AssetKey([exchange.slug, "second_stats"])],
        group_name=policies.FLOW_GROUP,
        code_version=policies.FLOW_BARS_VERSION,
        check_specs=check_specs,
        description=f"Flow bars by {TIMESTAMP_LABELS[timestamp]}, all 8 intervals, staged until the checks pass.",
    )
    def flow_bars(context: AssetExecutionContext, store: StoreResource, sources: SourcesResource) -> MaterializeResult:
        from aperiodic_pipelines.domain.symbols import to_atlas

        native, month = split_partition_key(context.partition_key)
        with policies.permanent_failures():
            bars_input = BarsInput(exchange.name, to_atlas(exchange.name, native), native, month, timestamp, sources)
            return stage_flow_bars(context, key, bars_input, store.get_store(), extra)

    return flow_bars
