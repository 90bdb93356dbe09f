"""The per-exchange asset graph, built in one place (Hyperliquid's starts with `venue_hours`, see venue.py):

    {slug}/raw_trades ──► {slug}/second_stats ──► {slug}/flow_bars_exchange ─┬─► {slug}/published_flow_bars
        (m and m−1)                          └─► {slug}/flow_bars_true ──────┘   (true: arrival-time sources only)

plus the exchange's job (`{slug}_flow_bars_job`, tagged with the exchange) and monthly schedule. Every graph has
its own partitions (`partitions.PartitionedExchange`), so each stays under Dagster's ~100,000 partitions per asset.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from dagster import (
    AssetsDefinition,
    AssetSelection,
    DefaultScheduleStatus,
    ScheduleDefinition,
    build_schedule_from_partitioned_job,
    define_asset_job,
)

from aperiodic_pipelines.defs import policies
from aperiodic_pipelines.defs.bars import BarCheck, build_flow_bars
from aperiodic_pipelines.defs.partitions import PartitionedExchange
from aperiodic_pipelines.defs.publish import build_published_flow_bars
from aperiodic_pipelines.defs.raw import build_raw_trades
from aperiodic_pipelines.defs.seconds import build_second_stats
from aperiodic_pipelines.defs.venue import build_venue_step, has_venue_step


@dataclass(frozen=True)
class ExchangeGraph:
    exchange: PartitionedExchange
    assets: tuple[AssetsDefinition, ...]
    job: Any  # the unresolved asset job `define_asset_job` returns
    schedule: ScheduleDefinition
    extra_jobs: tuple[Any, ...] = ()  # e.g. the venue job (venue.py)
    sensors: tuple[Any, ...] = ()


def build_exchange_graph(
    exchange: PartitionedExchange, *, s3_store: bool = False, extra_bar_checks: Sequence[BarCheck] = ()
) -> ExchangeGraph:
    """One exchange's assets, checks, job and schedule. `s3_store` adds the `s3` kind to the assets;
    `extra_bar_checks` run in its flow-bars steps."""
    kinds = policies.kinds(s3_store)
    venue = build_venue_step(exchange, kinds) if has_venue_step(exchange.name, exchange.source) else None
    raw_args: dict[str, Any] = {"deps": [venue.dep], "source_args": venue.source_args} if venue else {}
    flow_assets = (
        build_raw_trades(exchange, kinds, **raw_args),
        build_second_stats(exchange, kinds),
        *(build_flow_bars(exchange, t, kinds, extra_bar_checks) for t in exchange.variants),
        build_published_flow_bars(exchange, kinds),
    )
    assets = (venue.asset, *flow_assets) if venue else flow_assets
    job = define_asset_job(
        exchange.exchange.flow_job_name,
        selection=AssetSelection.assets(*flow_assets),  # includes the assets' checks
        partitions_def=exchange.partitions,
        tags={policies.EXCHANGE_TAG: exchange.name},
        description=f"{exchange.name}: raw_trades → second_stats → flow bars (+ checks) → published, per partition.",
    )
    if venue:  # the venue month first, then every registered instrument (venue.py)
        schedule = venue.schedule(
            f"{exchange.slug}_monthly_schedule",
            f"On day {policies.SCHEDULE_DAY_OF_MONTH}, {policies.SCHEDULE_HOUR_UTC:02d}:00 UTC: {exchange.name}'s "
            "venue month just closed, then (sensor) one run per registered instrument.",
        )
        return ExchangeGraph(exchange, assets, job, schedule, (venue.job,), (venue.fan_out_sensor(job),))
    schedule = build_schedule_from_partitioned_job(
        job,
        name=f"{exchange.slug}_monthly_schedule",
        day_of_month=policies.SCHEDULE_DAY_OF_MONTH,
        hour_of_day=policies.SCHEDULE_HOUR_UTC,
        minute_of_hour=0,
        default_status=DefaultScheduleStatus.RUNNING,
        description=(
            f"On day {policies.SCHEDULE_DAY_OF_MONTH}, {policies.SCHEDULE_HOUR_UTC:02d}:00 UTC: one run per registered "
            f"{exchange.name} instrument for the month just closed."
        ),
    )
    return ExchangeGraph(exchange, assets, job, schedule)
