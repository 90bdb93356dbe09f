"""`ExchangeTaggingRunCoordinator`, the run coordinator `dagster.yaml` configures.

It gives every submitted run of an exchange's graph the `aperiodic/exchange` tag the per-exchange run limit keys
on, whatever submitted it: the UI (asset backfills and single materialisations included), a schedule, a sensor or
the CLI. Dagster loads it by module path (`aperiodic_pipelines.operator.coordinator`) in the webserver, the daemon
and every process that submits runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dagster import QueuedRunCoordinator, SubmitRunContext

from aperiodic_pipelines.defs.policies import EXCHANGE_TAG
from aperiodic_pipelines.domain.exchanges import EXCHANGES_BY_NAME, exchange_of_slug

if TYPE_CHECKING:
    from dagster import DagsterRun

_JOB_EXCHANGE = {exchange.flow_job_name: exchange.name for exchange in EXCHANGES_BY_NAME.values()}


def exchange_of_run(run: DagsterRun) -> str | None:
    """The exchange whose graph a run belongs to: from its asset keys' prefix or its job's name."""
    prefixes = {key.path[0] for key in (run.asset_selection or ()) if len(key.path) > 1}
    prefixes |= {check.asset_key.path[0] for check in (run.asset_check_selection or ()) if len(check.asset_key.path) > 1}
    exchanges = {e.name for e in map(exchange_of_slug, prefixes) if e is not None}
    if not prefixes and run.job_name in _JOB_EXCHANGE:
        exchanges = {_JOB_EXCHANGE[run.job_name]}
    return exchanges.pop() if len(exchanges) == 1 else None


class ExchangeTaggingRunCoordinator(QueuedRunCoordinator):
    """The queued run coordinator, adding `aperiodic/exchange` to every run of one exchange's graph first."""

    def submit_run(self, context: SubmitRunContext) -> DagsterRun:
        run = context.dagster_run
        exchange = exchange_of_run(run)
        if exchange is not None and run.tags.get(EXCHANGE_TAG) != exchange:
            self._instance.add_run_tags(run.run_id, {EXCHANGE_TAG: exchange})
            context = SubmitRunContext(self._instance.get_run_by_id(run.run_id), context.workspace)
        return super().submit_run(context)
