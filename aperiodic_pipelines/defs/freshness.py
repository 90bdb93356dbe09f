"""When a published month is due, and which ones are overdue.

Month m is due on day `DUE_DAY_OF_MONTH` of m+1 at `DUE_HOUR_UTC` (policies: the 9th, 00:00 UTC, 18 h after the
monthly schedule): every exchange has published m's archive by the schedule's day, and the schedule's runs
(with their retries) finish well within the grace. A registered instrument whose due month is not in the
published index (`storage.index`) then is overdue; the `overdue_months` sensor reports it once. Instruments
registered after a month was due are checked from the next due month on; months before an exchange's first
archive month are never due.

The open month's days (issue 15): `overdue_days` reports, hourly, each registered instrument whose published
days are behind the newest due day (a day is due `APERIODIC_DAILY_DUE_HOURS` after it ends), once per instrument
and due day, with the reason its last daily run gave (not published upstream yet, skipped upstream, or no run),
and requests a daily run of that instrument: it publishes the day if upstream has it by now, else its
`days_on_time` check fails with the same words, so the UI shows the failure beside the alert (see `daily.py`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from dagster import (
    DagsterInstance,
    DefaultSensorStatus,
    RunRequest,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from aperiodic_pipelines.defs import policies
from aperiodic_pipelines.defs.resources import StoreResource
from aperiodic_pipelines.defs.sensors import send_alert
from aperiodic_pipelines.domain.exchanges import EXCHANGES_BY_NAME
from aperiodic_pipelines.domain.months import current_month, next_month, previous_month
from aperiodic_pipelines.domain.settings import AlertSettings, DailySettings
from aperiodic_pipelines.storage import ObjectStore
from aperiodic_pipelines.storage.index import read_published_month

if TYPE_CHECKING:
    from aperiodic_pipelines.defs.daily import DayLateness

CHECK_INTERVAL_SECONDS = 3600


def due_at(month: str) -> datetime:
    """When month `YYYY-MM` must be published (UTC)."""
    year, mon = (int(part) for part in next_month(month).split("-"))
    return datetime(year, mon, policies.DUE_DAY_OF_MONTH, policies.DUE_HOUR_UTC, tzinfo=UTC)


def latest_due_month(now: datetime) -> str:
    """The newest month whose due time has passed at `now`."""
    month = previous_month(current_month(now))
    return month if due_at(month) <= now else previous_month(month)


@dataclass(frozen=True)
class OverdueMonth:
    exchange: str
    native_symbol: str
    month: str

    def key(self) -> str:
        return f"{self.exchange}|{self.native_symbol}|{self.month}"


def overdue_months_at(instance: DagsterInstance, store: ObjectStore, now: datetime) -> list[OverdueMonth]:
    """Registered instruments whose latest due month is not published."""
    month = latest_due_month(now)
    overdue = []
    for exchange in EXCHANGES_BY_NAME.values():
        if month < exchange.first_month:
            continue
        for native in sorted(instance.get_dynamic_partitions(exchange.instruments_name)):
            entry = read_published_month(store, exchange.name, native, month)
            if entry is None or entry.only_days:  # daily files alone do not publish the month
                overdue.append(OverdueMonth(exchange.name, native, month))
    return overdue


def overdue_message(months: list[OverdueMonth], now: datetime) -> str:
    lines = [f"Overdue ({len(months)}): published flow bars due by {due_at(months[0].month):%Y-%m-%d %H:%M} UTC "
             f"are missing at {now:%Y-%m-%d %H:%M} UTC"]
    lines += [f"• {m.exchange} {m.native_symbol} {m.month}" for m in months[:50]]
    if len(months) > 50:
        lines.append(f"… and {len(months) - 50} more")
    return "\n".join(lines)


def build_overdue_sensor(alerts: AlertSettings) -> SensorDefinition:
    """The `overdue_months` sensor, posting to `alerts.webhook_url`."""

    @sensor(
        name="overdue_months",
        minimum_interval_seconds=CHECK_INTERVAL_SECONDS,
        default_status=DefaultSensorStatus.RUNNING,
        description="Alerts once per instrument-month whose published bars are overdue (see defs/freshness.py).",
    )
    def overdue_months(context: SensorEvaluationContext, store: StoreResource):
        now = datetime.now(UTC)
        reported = set(json.loads(context.cursor)) if context.cursor else set()
        overdue = overdue_months_at(context.instance, store.get_store(), now)
        new = [m for m in overdue if m.key() not in reported]
        if not new:
            return SkipReason(f"{len(overdue)} overdue month(s), none new")
        send_alert(overdue_message(new, now), context.log, alerts.webhook_url)
        # Keep only keys still overdue: a month published later and overdue again would be reported again.
        context.update_cursor(json.dumps(sorted({m.key() for m in overdue})))
        return None

    return overdue_months


# --- the open month: overdue days, per instrument (issue 15) ----------------------------------------------------


@dataclass(frozen=True)
class OverdueDay:
    exchange: str
    native_symbol: str
    lateness: DayLateness

    def key(self) -> str:
        return f"{self.exchange}|{self.native_symbol}|{self.lateness.due_day}"


def _last_daily_reason(instance: DagsterInstance, slug: str, native: str) -> str:
    """Why the instrument's last daily run stopped (its materialization's metadata), for the alert."""
    from dagster import AssetRecordsFilter

    from aperiodic_pipelines.defs.daily import daily_asset_key, lateness_reason

    records = instance.fetch_materializations(
        AssetRecordsFilter(asset_key=daily_asset_key(slug), asset_partitions=[native]), limit=1
    ).records
    if not records or records[0].asset_materialization is None:
        return "no daily run has materialized it"
    meta = {k: getattr(v, "value", v) for k, v in records[0].asset_materialization.metadata.items()}
    waiting = meta.get("waiting_for")
    missing = [m for m in str(meta.get("upstream_missing", "")).split(", ") if m]
    return lateness_reason(str(waiting) if waiting else None, missing, bool(meta.get("skipped_upstream")))


def overdue_days_at(
    instance: DagsterInstance, store: ObjectStore, now: datetime, daily: DailySettings
) -> list[OverdueDay]:
    """Registered instruments whose open-month days are behind their due day at `now`."""
    from aperiodic_pipelines.defs.daily import day_lateness
    from aperiodic_pipelines.defs.partitions import recorded_first_month

    overdue = []
    for exchange in EXCHANGES_BY_NAME.values():
        for native in sorted(instance.get_dynamic_partitions(exchange.instruments_name)):
            first = max(recorded_first_month(instance, exchange.name, native) or "", exchange.first_month)
            lateness = day_lateness(store, exchange.name, native, now, daily, first)
            if lateness is not None and lateness.overdue:
                lateness = type(lateness)(lateness.due_day, lateness.complete_through,
                                          _last_daily_reason(instance, exchange.slug, native))
                overdue.append(OverdueDay(exchange.name, native, lateness))
    return overdue


def overdue_days_message(days: list[OverdueDay], now: datetime) -> str:
    lines = [f"Overdue daily files ({len(days)}) at {now:%Y-%m-%d %H:%M} UTC:"]
    lines += [f"• {d.exchange} {d.native_symbol}: {d.lateness.describe()}" for d in days[:50]]
    if len(days) > 50:
        lines.append(f"… and {len(days) - 50} more")
    return "\n".join(lines)


def build_overdue_days_sensor(alerts: AlertSettings, daily: DailySettings, jobs: Sequence[Any] = ()) -> SensorDefinition:
    """The `overdue_days` sensor: alerts once per instrument and due day, and requests a daily run of each overdue
    instrument (`jobs`: the exchanges' daily jobs), whose `days_on_time` check then records the same verdict in the
    UI, or which publishes the day if upstream has it by now."""

    @sensor(
        name="overdue_days",
        minimum_interval_seconds=CHECK_INTERVAL_SECONDS,
        default_status=DefaultSensorStatus.RUNNING,
        jobs=list(jobs) or None,
        description="Alerts once per instrument whose open-month days are overdue (APERIODIC_DAILY_DUE_HOURS) and "
        "re-runs its daily step, whose days_on_time check shows the verdict per instrument (see defs/daily.py).",
    )
    def overdue_days(context: SensorEvaluationContext, store: StoreResource):
        return evaluate_overdue_days(context, store.get_store(), datetime.now(UTC), daily, alerts)

    return overdue_days


def evaluate_overdue_days(
    context: SensorEvaluationContext, store: ObjectStore, now: datetime, daily: DailySettings, alerts: AlertSettings
) -> SensorResult | SkipReason:
    """One evaluation of `overdue_days` at `now` (the sensor's body, callable from tests)."""
    from aperiodic_pipelines.defs.daily import daily_job_name

    reported = set(json.loads(context.cursor)) if context.cursor else set()
    overdue = overdue_days_at(context.instance, store, now, daily)
    new = [d for d in overdue if d.key() not in reported]
    cursor = json.dumps(sorted({d.key() for d in overdue}))  # still overdue only: a relapse is reported again
    if not new:
        context.update_cursor(cursor)
        return SkipReason(f"{len(overdue)} instrument(s) with overdue days, none new")
    send_alert(overdue_days_message(new, now), context.log, alerts.webhook_url)
    requests = [
        RunRequest(run_key=d.key(), partition_key=d.native_symbol,
                   job_name=daily_job_name(EXCHANGES_BY_NAME[d.exchange].slug))
        for d in new
    ]
    return SensorResult(run_requests=requests, cursor=cursor)
