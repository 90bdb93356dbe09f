"""The code location: one asset graph per exchange, the alert and freshness sensors, and the resources.

Loaded by `workspace.yaml` (module `aperiodic_pipelines.defs.definitions`, attribute `defs`). Global policies
(retries, pools, kinds, owners, tags, code versions, due dates) are in `policies.py`; the per-exchange graph in
`factory.py`. Executor: in-process (a partition's steps form a chain, so a process per step would only add
start-up time and memory; parallelism comes from running partitions side by side).
"""

from dagster import Definitions, in_process_executor

from aperiodic_pipelines.defs.bars import BarCheck
from aperiodic_pipelines.defs.factory import ExchangeGraph, build_exchange_graph
from aperiodic_pipelines.defs.freshness import overdue_months
from aperiodic_pipelines.defs.klines_check import reconciles_with_exchange_klines
from aperiodic_pipelines.defs.partitions import EXCHANGES_BY_NAME
from aperiodic_pipelines.defs.resources import sources_resource_from_env, store_resource_from_env
from aperiodic_pipelines.defs.sensors import SENSORS

# Extra checks on an exchange's flow bars, evaluated in its flow-bars steps (see `bars.BarCheck`).
EXTRA_BAR_CHECKS: dict[str, list[BarCheck]] = {"binance-futures": [reconciles_with_exchange_klines]}

GRAPHS: dict[str, ExchangeGraph] = {
    name: build_exchange_graph(exchange, extra_bar_checks=EXTRA_BAR_CHECKS.get(name, ()))
    for name, exchange in EXCHANGES_BY_NAME.items()
}

defs = Definitions(
    assets=[a for graph in GRAPHS.values() for a in graph.assets],
    jobs=[job for graph in GRAPHS.values() for job in (graph.job, *graph.extra_jobs)],
    schedules=[graph.schedule for graph in GRAPHS.values()],
    sensors=[*SENSORS, overdue_months, *(sensor for graph in GRAPHS.values() for sensor in graph.sensors)],
    executor=in_process_executor,
    resources={"store": store_resource_from_env(), "sources": sources_resource_from_env()},
)
