"""When a published month is due, and which ones are overdue.

Month m is due on day `DUE_DAY_OF_MONTH` of m+1 at `DUE_HOUR_UTC` (policies: the 9th, 00:00 UTC, 18 h after the
monthly schedule): every exchange has published m's archive by the schedule's day, and the schedule's runs
(with their retries) finish well within the grace. A registered instrument whose due month is not in the
published index (`storage.index`) then is overdue; the `overdue_months` sensor reports it once. Instruments
registered after a month was due are checked from the next due month on; months before an exchange's first
archive month are never due.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime

from dagster import (
    DagsterInstance,
    DefaultSensorStatus,
    SensorDefinition,
    SensorEvaluationContext,
    SkipReason,
    sensor,
)

from aperiodic_pipelines.defs import policies
from aperiodic_pipelines.defs.resources import StoreResource
from aperiodic_pipelines.defs.sensors import send_alert
from aperiodic_pipelines.domain.exchanges import EXCHANGES_BY_NAME
from aperiodic_pipelines.domain.months import current_month, next_month, previous_month
from aperiodic_pipelines.domain.settings import AlertSettings
from aperiodic_pipelines.storage import ObjectStore
from aperiodic_pipelines.storage.index import read_published_month

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
            if read_published_month(store, exchange.name, native, month) is None:
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
