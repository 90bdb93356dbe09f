"""The code location: one asset graph per exchange, the alert and freshness sensors, and the resources.

Loaded by `workspace.yaml` (module `aperiodic_pipelines.defs.definitions`, attribute `defs`). Everything here is
built from one `Settings` object read once, below: which variants each exchange has (`Exchange.variants` of the
source kind), the store and sources resources, and where alerts go. Global policies (retries, pools, kinds,
owners, tags, code versions, due dates) are in `policies.py`; the per-exchange graph in `factory.py`. Executor:
in-process (a partition's steps form a chain, so a process per step would only add start-up time and memory;
parallelism comes from running partitions side by side).
"""

from dataclasses import dataclass

from dagster import Definitions, SensorDefinition, in_process_executor

from aperiodic_pipelines.defs import policies
from aperiodic_pipelines.defs.bars import BarCheck
from aperiodic_pipelines.defs.daily import DailyGraph, build_daily_graph
from aperiodic_pipelines.defs.factory import ExchangeGraph, build_exchange_graph
from aperiodic_pipelines.defs.freshness import build_overdue_days_sensor, build_overdue_sensor
from aperiodic_pipelines.defs.klines_check import reconciles_with_exchange_klines
from aperiodic_pipelines.defs.partitions import partitioned_exchange
from aperiodic_pipelines.defs.resources import sources_resource, store_resource
from aperiodic_pipelines.defs.sensors import build_alert_sensors
from aperiodic_pipelines.domain.exchanges import EXCHANGES_BY_NAME
from aperiodic_pipelines.domain.settings import Settings

# Extra checks on an exchange's flow bars, evaluated in its flow-bars steps (see `bars.BarCheck`).
EXTRA_BAR_CHECKS: dict[str, list[BarCheck]] = {"binance-futures": [reconciles_with_exchange_klines]}


@dataclass(frozen=True)
class CodeLocation:
    defs: Definitions
    graphs: dict[str, ExchangeGraph]  # by exchange name
    alert_sensors: tuple[SensorDefinition, SensorDefinition, SensorDefinition]  # see sensors.build_alert_sensors
    daily: dict[str, DailyGraph] | None = None  # the open month's asset, job and schedule, by exchange name


def build_code_location(settings: Settings) -> CodeLocation:
    """The code location for `settings`."""
    graphs = {
        name: build_exchange_graph(
            partitioned_exchange(exchange, settings.sources.source),
            s3_store=settings.store.is_s3,
            extra_bar_checks=EXTRA_BAR_CHECKS.get(name, ()),
        )
        for name, exchange in EXCHANGES_BY_NAME.items()
    }
    # The open month, day by day (daily.py): one asset per exchange, partitioned by instrument only.
    daily = {
        name: build_daily_graph(graph.exchange, policies.kinds(settings.store.is_s3), settings.daily)
        for name, graph in graphs.items()
    }
    secrets = (settings.sources.tardis_api_key, (settings.api.signing_key or b"").decode(errors="replace") or None)
    alert_sensors = build_alert_sensors(settings.alerts, secrets)
    definitions = Definitions(
        assets=[*(a for graph in graphs.values() for a in graph.assets), *(d.asset for d in daily.values())],
        jobs=[*(job for graph in graphs.values() for job in (graph.job, *graph.extra_jobs)),
              *(d.job for d in daily.values())],
        schedules=[*(graph.schedule for graph in graphs.values()), *(d.schedule for d in daily.values())],
        sensors=[
            *alert_sensors,
            build_overdue_sensor(settings.alerts),
            build_overdue_days_sensor(settings.alerts, settings.daily, [d.job for d in daily.values()]),
            *(sensor for graph in graphs.values() for sensor in graph.sensors),
        ],
        executor=in_process_executor,
        resources={"store": store_resource(settings.store), "sources": sources_resource(settings.sources)},
    )
    return CodeLocation(definitions, graphs, alert_sensors, daily)


SETTINGS = Settings.from_env()  # the one read of the environment for this code location
LOCATION = build_code_location(SETTINGS)
defs = LOCATION.defs
GRAPHS = LOCATION.graphs
# The alert sensors, for scripts and tests that evaluate one directly.
check_failure_alert_on_success, check_failure_alert_on_failure, run_failure_alert = LOCATION.alert_sensors
