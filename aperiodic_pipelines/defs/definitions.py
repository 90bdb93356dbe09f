"""The code location: every asset, check, job, schedule, sensor and resource, and the global policies, in one place.

Loaded by `workspace.yaml` (module `aperiodic_pipelines.defs.definitions`, attribute `defs`).
Policies that apply across assets live here or in the assets' shared constants:
- partitions: instrument × month (`partitions.flow_partitions`); no BackfillPolicy, so a backfill runs one run per
  partition and checks record per-partition results;
- retries: `assets.NETWORK_RETRY` on every step that touches the network; run retries in dagster.yaml;
- concurrency: one pool per exchange for downloads (`download_<exchange>`), run limits in dagster.yaml;
- executor: in-process. A partition's steps form a chain, so a process per step would only add start-up time
  and memory; parallelism comes from running partitions (runs) side by side.
"""

from dagster import Definitions, in_process_executor

from aperiodic_pipelines.defs.assets import ASSETS
from aperiodic_pipelines.defs.resources import sources_resource_from_env, store_resource_from_env
from aperiodic_pipelines.defs.schedules import flow_bars_job, monthly_flow_bars_schedule
from aperiodic_pipelines.defs.sensors import SENSORS

defs = Definitions(
    assets=ASSETS,
    jobs=[flow_bars_job],
    schedules=[monthly_flow_bars_schedule],
    sensors=SENSORS,
    executor=in_process_executor,
    resources={"store": store_resource_from_env(), "sources": sources_resource_from_env()},
)
