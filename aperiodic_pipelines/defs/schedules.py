"""The monthly schedule: every registered instrument, the month just closed, once exchanges have published it."""

from __future__ import annotations

from dagster import (
    AssetSelection,
    DefaultScheduleStatus,
    build_schedule_from_partitioned_job,
    define_asset_job,
)

from aperiodic_pipelines.defs.assets import ASSETS
from aperiodic_pipelines.defs.partitions import flow_partitions

# Binance publishes last month's monthly archive on the first Monday (so by the 7th at the latest); OKX's daily
# files appear about two days after the day. The 8th at 06:00 UTC is after both, with a margin.
SCHEDULE_DAY_OF_MONTH = 8
SCHEDULE_HOUR_UTC = 6

flow_bars_job = define_asset_job(
    "flow_bars_job",
    selection=AssetSelection.assets(*ASSETS),  # includes the assets' checks
    partitions_def=flow_partitions,
    description="raw_trades → second_stats → flow bars (+ blocking checks) → published_flow_bars, per partition.",
)

monthly_flow_bars_schedule = build_schedule_from_partitioned_job(
    flow_bars_job,
    name="monthly_flow_bars_schedule",
    day_of_month=SCHEDULE_DAY_OF_MONTH,
    hour_of_day=SCHEDULE_HOUR_UTC,
    minute_of_hour=0,
    default_status=DefaultScheduleStatus.RUNNING,
    description="On the 8th, 06:00 UTC: one run per registered instrument for the month just closed.",
)
