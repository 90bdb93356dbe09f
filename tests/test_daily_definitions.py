"""The open month in the code location: per exchange an asset partitioned by instrument only, its daily job, a
daily schedule at the exchange's configurable hour (one run per registered instrument), the `days_on_time` check,
and the `overdue_days` sensor; the due-day rule."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from dagster import (
    AssetKey,
    DefaultScheduleStatus,
    DefaultSensorStatus,
    build_schedule_context,
    instance_for_test,
)

from aperiodic_pipelines.defs.daily import complete_days_before, day_due_at, latest_due_day
from aperiodic_pipelines.defs.definitions import build_code_location
from aperiodic_pipelines.domain.settings import ConfigError, DailySettings, Settings


def test_each_exchange_has_its_open_month_asset_job_and_schedule_at_its_hour() -> None:
    location = build_code_location(Settings.from_env({"APERIODIC_DAILY_HOUR_OKX": "11"}))
    hours = {"binance_futures": 2, "okx_perps": 11, "hyperliquid_perps": 1}
    for name in location.daily:
        slug = location.graphs[name].exchange.slug
        asset = location.defs.resolve_assets_def(AssetKey([slug, "open_month_flow_bars"]))
        assert asset.partitions_def == location.graphs[name].exchange.instrument_partitions  # no instrument × day
        assert {spec.name for spec in asset.check_specs} == {"days_on_time"}
        job = location.defs.resolve_job_def(f"{slug}_daily_flow_bars_job")
        assert job.tags["aperiodic/exchange"] == name
        schedule = location.defs.get_schedule_def(f"{slug}_daily_schedule")
        assert schedule.cron_schedule == f"0 {hours[slug]} * * *" and schedule.execution_timezone == "UTC"
        assert schedule.default_status == DefaultScheduleStatus.RUNNING
    sensor = location.defs.get_sensor_def("overdue_days")
    assert sensor.default_status == DefaultSensorStatus.RUNNING
    assert {t.job_name for t in sensor.targets} == {f"{g.exchange.slug}_daily_flow_bars_job" for g in location.graphs.values()}


def test_with_tardis_every_exchange_runs_at_the_tardis_hour() -> None:
    location = build_code_location(Settings.from_env({"APERIODIC_SOURCE": "tardis", "APERIODIC_TARDIS_URL": "/srv",
                                                      "APERIODIC_DAILY_HOUR_TARDIS": "8"}))
    assert {location.defs.get_schedule_def(f"{g.exchange.slug}_daily_schedule").cron_schedule
            for g in location.graphs.values()} == {"0 8 * * *"}


def test_the_daily_schedule_requests_one_run_per_registered_instrument() -> None:
    location = build_code_location(Settings.from_env({}))
    schedule = location.defs.get_schedule_def("binance_futures_daily_schedule")
    with instance_for_test() as instance:
        instance.add_dynamic_partitions("binance_futures_instruments", ["ETHUSDT", "BTCUSDT"])
        context = build_schedule_context(instance=instance, repository_def=location.defs.get_repository_def(),
                                         scheduled_execution_time=datetime(2026, 12, 6, 2, tzinfo=UTC))
        requests = list(schedule.evaluate_tick(context).run_requests or [])
    assert [(r.partition_key, r.run_key) for r in requests] == [
        ("BTCUSDT", "BTCUSDT|2026-12-06"), ("ETHUSDT", "ETHUSDT|2026-12-06")]


def test_daily_hours_are_checked_by_the_settings() -> None:
    with pytest.raises(ConfigError, match="APERIODIC_DAILY_HOUR_BINANCE=24: expected a UTC hour"):
        Settings.from_env({"APERIODIC_DAILY_HOUR_BINANCE": "24"})
    with pytest.raises(ConfigError, match="APERIODIC_DAILY_DUE_HOURS"):
        Settings.from_env({"APERIODIC_DAILY_DUE_HOURS": "0"})


def test_a_day_is_due_a_configurable_number_of_hours_after_it_ends() -> None:
    daily = DailySettings(due_hours=36)
    assert day_due_at("2026-12-04", daily) == datetime(2026, 12, 6, 12, tzinfo=UTC)
    assert latest_due_day(datetime(2026, 12, 6, 12, tzinfo=UTC), daily) == "2026-12-04"
    assert latest_due_day(datetime(2026, 12, 6, 11, 59, tzinfo=UTC), daily) == "2026-12-03"
    assert complete_days_before(datetime(2026, 12, 1).date()) == []  # the 1st: nothing complete yet
    assert complete_days_before(datetime(2026, 12, 3).date()) == ["2026-12-01", "2026-12-02"]
