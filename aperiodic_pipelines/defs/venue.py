"""`{exchange}/venue_hours`: the venue-wide step of an exchange whose archive objects hold every instrument.

Hyperliquid publishes one object per hour holding every coin. Its graph therefore starts one step earlier:

    hyperliquid_perps/venue_hours ──(month)──► hyperliquid_perps/raw_trades ──► … (factory.py)
        (month)                                    (coin × month)

`venue_hours` (monthly partitions from the exchange's first month) lists, downloads and parses every hourly object
of the month once, for all coins, into the source's parsed-hour cache (`APERIODIC_CACHE_DIR`, which the runs of one
deployment share), and records what it read (objects, hours, bytes, cache hits, parse throughput). Each coin's
`raw_trades` partition depends on its month (`MultiToSingleDimensionPartitionMapping` on `month`) and builds its
month from those parsed hours without touching the bucket. When the venue month has not been prepared, the coin's
step fails at once (not retried), naming the partition of `venue_hours` to run: preparing it there instead would
let the coins of a backfill race to download and parse the same hours, which is what this step exists to avoid.

Operating it: the exchange's monthly schedule runs `{slug}_venue_job` for the month just closed, and the sensor
`{slug}_instruments_after_venue` then requests one `{slug}_flow_bars_job` run per registered instrument of that
month. `aperiodic-pipelines materialize` and `backfill` (operator/) order the two the same way.
"""

# No `from __future__ import annotations` here: Dagster inspects the `context` annotation at runtime.
from dataclasses import dataclass
from typing import Any

from dagster import (
    AssetDep,
    AssetExecutionContext,
    AssetKey,
    AssetsDefinition,
    DagsterRunStatus,
    DefaultScheduleStatus,
    DefaultSensorStatus,
    Failure,
    MaterializeResult,
    MetadataValue,
    MultiToSingleDimensionPartitionMapping,
    RunRequest,
    RunStatusSensorContext,
    SkipReason,
    asset,
    build_schedule_from_partitioned_job,
    define_asset_job,
    run_status_sensor,
)

from aperiodic_pipelines.defs import policies
from aperiodic_pipelines.defs.partitions import (
    PartitionedExchange,
    flow_partition_key,
    month_of,
    month_partition_key,
)
from aperiodic_pipelines.defs.resources import SourcesResource
from aperiodic_pipelines.domain.exchanges import exchange_of

# Exchanges whose archive objects each hold the whole venue (with the exchanges' own archives as the source).
VENUE_WIDE_ARCHIVES = frozenset({"hyperliquid-perps"})
VENUE_HOURS_VERSION = "1"
# On a venue run: request the instruments' runs of the month when it succeeds (set by the monthly schedule).
FAN_OUT_TAG = "aperiodic/fan_out"
FAN_OUT_ALL = "registered_instruments"


def has_venue_step(exchange: str, source: str = "archive") -> bool:
    """Whether `exchange`'s graph starts with `venue_hours` when read from `source` (`SourceSettings.source`):
    not with a Tardis-format source, whose files are per symbol."""
    return exchange in VENUE_WIDE_ARCHIVES and source != "tardis"


def venue_hours_key(exchange: PartitionedExchange) -> AssetKey:
    return AssetKey([exchange.slug, "venue_hours"])


def venue_job_name(exchange: str) -> str:
    return f"{exchange_of(exchange).slug}_venue_job"


def prepared_source_args(exchange: PartitionedExchange, sources: SourcesResource, month: str) -> dict[str, Any]:
    """Keyword arguments for the source's `fetch_month`: the month as `venue_hours` prepared it. Fails the step,
    without retries, when it has not been prepared."""
    from aperiodic_pipelines.sources.hyperliquid import MonthNotPreparedError, load_prepared_month

    try:
        return {"prepared": load_prepared_month(month, config=sources.get_config())}
    except MonthNotPreparedError as exc:
        raise Failure(
            description=(
                f"{exchange.name} {month} has not been prepared: materialize "
                f"{venue_hours_key(exchange).to_user_string()} partition {month_partition_key(month)} first "
                f"(job {venue_job_name(exchange.name)}; `aperiodic-pipelines materialize` does it for you). {exc}"
            ),
            allow_retries=False,
        ) from exc


@dataclass(frozen=True)
class VenueStep:
    """One exchange's venue-wide step: its asset, the dependency raw_trades takes on it, and its job."""

    exchange: PartitionedExchange
    asset: AssetsDefinition
    job: Any  # unresolved asset job

    @property
    def dep(self) -> AssetDep:
        """raw_trades (instrument × month) reads the venue month of its month."""
        return AssetDep(
            venue_hours_key(self.exchange),
            partition_mapping=MultiToSingleDimensionPartitionMapping(partition_dimension_name="month"),
        )

    def source_args(self, sources: SourcesResource, month: str) -> dict[str, Any]:
        return prepared_source_args(self.exchange, sources, month)

    def schedule(self, name: str, description: str):  # noqa: ANN201 - Dagster's unresolved schedule type
        """The exchange's monthly schedule: the venue month first; the instruments follow (`fan_out_sensor`)."""
        return build_schedule_from_partitioned_job(
            self.job,
            name=name,
            day_of_month=policies.SCHEDULE_DAY_OF_MONTH,
            hour_of_day=policies.SCHEDULE_HOUR_UTC,
            minute_of_hour=0,
            default_status=DefaultScheduleStatus.RUNNING,
            tags={FAN_OUT_TAG: FAN_OUT_ALL},
            description=description,
        )

    def fan_out_sensor(self, flow_job: Any):  # noqa: ANN201 - RunStatusSensorDefinition
        """After a successful venue run tagged to fan out: one flow-job run per registered instrument of its
        month (run key: venue run id + instrument, so a tick never requests a partition twice)."""
        exchange = self.exchange

        @run_status_sensor(
            name=f"{exchange.slug}_instruments_after_venue",
            run_status=DagsterRunStatus.SUCCESS,
            monitored_jobs=[self.job],
            request_job=flow_job,
            default_status=DefaultSensorStatus.RUNNING,
            description=(
                f"When {venue_hours_key(exchange).to_user_string()} of a month succeeds in a run tagged "
                f"{FAN_OUT_TAG}={FAN_OUT_ALL} (the monthly schedule's), run {exchange.name}'s flow job for every "
                "registered instrument of that month."
            ),
        )
        def instruments_after_venue(context: RunStatusSensorContext):  # noqa: ANN202
            run = context.dagster_run
            if run.tags.get(FAN_OUT_TAG) != FAN_OUT_ALL:
                return SkipReason(f"run {run.run_id} is not tagged {FAN_OUT_TAG}={FAN_OUT_ALL}")
            month = month_of(run.tags["dagster/partition"])
            natives = sorted(context.instance.get_dynamic_partitions(exchange.instruments_name))
            if not natives:
                return SkipReason(f"no {exchange.name} instrument is registered")
            return [
                RunRequest(
                    run_key=f"{run.run_id}:{native}",
                    partition_key=str(flow_partition_key(exchange.name, native, month)),
                    tags={policies.EXCHANGE_TAG: exchange.name, "aperiodic/venue_run": run.run_id},
                )
                for native in natives
            ]

        return instruments_after_venue


def build_venue_step(exchange: PartitionedExchange, kinds: set[str]) -> VenueStep:
    key = venue_hours_key(exchange)

    @asset(
        key=key,
        **policies.exchange_asset_args(exchange.month_partitions, exchange.name, kinds - {"s3"}),
        group_name=policies.RAW_GROUP,
        code_version=VENUE_HOURS_VERSION,
        pool=policies.pool_name(exchange.slug),
        retry_policy=policies.NETWORK_RETRY,
        description=(
            f"Every hourly object of a {exchange.name} month, downloaded and parsed once for all coins into the "
            "source's parsed-hour cache; each coin's raw_trades of the month is built from it."
        ),
    )
    def venue_hours(context: AssetExecutionContext, sources: SourcesResource) -> MaterializeResult:
        from aperiodic_pipelines.sources.hyperliquid import prepare_month

        month = month_of(context.partition_key)
        kwargs: dict[str, Any] = {}
        if (client := sources.get_s3_client()) is not None:
            kwargs["s3_client"] = client
        context.log.info(f"preparing every hourly object of {exchange.name} {month}")
        with policies.permanent_failures():
            prepared = prepare_month(month, config=sources.get_config(), **kwargs)
        stats = prepared.stats()
        context.log.info(
            f"{stats['objects']} objects ({stats['parsed_now']} parsed now, {stats['cache_hits']} from the cache), "
            f"{stats['ndjson_bytes_parsed'] / 1e6:.1f} MB of NDJSON at {stats['parse_mb_per_s']} MB/s"
        )
        first = prepared.objects[0].location if prepared.objects else ""
        return MaterializeResult(
            metadata={
                **stats,
                "manifest": MetadataValue.path(str(prepared.manifest)),
                "first_object": first,
            }
        )

    job = define_asset_job(
        f"{exchange.slug}_venue_job",
        selection=[key],
        partitions_def=exchange.month_partitions,
        tags={policies.EXCHANGE_TAG: exchange.name},
        description=f"{exchange.name}: every hourly object of a month, parsed once for all coins.",
    )
    return VenueStep(exchange, venue_hours, job)
