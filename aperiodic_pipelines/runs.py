"""Runs the UI knows: the Dagster instance, instruments, partition runs submitted through the code location, and
backfills submitted to a webserver (GraphQL).

Used by the CLI (`cli.py`) and the demo (`demo.py`). A run is created from the code location's job snapshot
(loaded from `workspace.yaml`, as the webserver and the daemon load it), so it carries the repository origin:
it appears under its job, on the Overview timeline and its partition, and Re-execute offers it without a
"different version" warning. It is then submitted to the instance: queued within the run limits when a
`dagster-daemon` dequeues, else launched directly by the instance's run launcher. The caller waits for it.

`ExchangeTaggingRunCoordinator` (configured in `dagster.yaml`) gives every submitted run of an exchange's graph
the `aperiodic/exchange` tag the per-exchange run limit keys on, whatever launched it: UI (asset backfills
and single materialisations included), schedule, sensor or this module.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dagster._core.run_coordinator import QueuedRunCoordinator, SubmitRunContext

from aperiodic_pipelines.defs.policies import EXCHANGE_TAG
from aperiodic_pipelines.domain.errors import AperiodicError
from aperiodic_pipelines.domain.months import check_month

if TYPE_CHECKING:
    from dagster import DagsterInstance, DagsterRun
    from dagster._core.workspace.context import WorkspaceProcessContext

LAUNCHED_BY_TAG = "aperiodic/launched_by"
DEFAULT_DAGSTER_HOME = ".dagster_home"
DEFAULT_CODE_LOCATION = "aperiodic_pipelines"  # location_name in workspace.yaml
FINISHED = {"SUCCESS", "FAILURE", "CANCELED"}
POLL_SECONDS = 0.5

Say = Callable[[str], None]


class RunSetupError(AperiodicError):
    """A problem the user can fix: bad month range, no workspace file, code location not loadable, unreachable
    webserver."""


def _quiet(_message: str) -> None:
    pass


# --- the exchange tag on every run ---------------------------------------------------------------------------


def exchange_of_run(run: DagsterRun) -> str | None:
    """The exchange whose graph a run belongs to: from its asset keys' prefix or its job's name."""
    from aperiodic_pipelines.defs.partitions import exchange_of_slug

    prefixes = {key.path[0] for key in (run.asset_selection or ()) if len(key.path) > 1}
    prefixes |= {check.asset_key.path[0] for check in (run.asset_check_selection or ()) if len(check.asset_key.path) > 1}
    if not prefixes and run.job_name.endswith("_flow_bars_job"):
        prefixes = {run.job_name.removesuffix("_flow_bars_job")}
    exchanges = {e.name for e in map(exchange_of_slug, prefixes) if e is not None}
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


# --- the instance --------------------------------------------------------------------------------------------


def project_file(name: str) -> Path | None:
    """A project file (`dagster.yaml`, `workspace.yaml`) from the current directory, else the source tree."""
    for base in (Path.cwd(), Path(__file__).resolve().parent.parent):
        if (base / name).is_file():
            return base / name
    return None


def ensure_dagster_home(warn: Say = _quiet) -> Path:
    """DAGSTER_HOME, or `./.dagster_home` (created, with the project's dagster.yaml) when it is unset."""
    configured = os.environ.get("DAGSTER_HOME")
    if configured:
        home = Path(configured).expanduser().resolve()
        home.mkdir(parents=True, exist_ok=True)
        os.environ["DAGSTER_HOME"] = str(home)  # Dagster insists on an absolute path
        return home
    home = Path(DEFAULT_DAGSTER_HOME).resolve()
    home.mkdir(parents=True, exist_ok=True)
    source, target, note = project_file("dagster.yaml"), home / "dagster.yaml", ""
    if not target.exists():
        if source is not None:
            shutil.copyfile(source, target)
            note = f", copied {source}"
        else:  # an explicit empty config: Dagster's defaults, without its "no dagster.yaml" warning
            target.write_text("# Dagster instance settings; empty means Dagster's defaults (storage in this dir).\n")
    os.environ["DAGSTER_HOME"] = str(home)
    warn(
        f"DAGSTER_HOME is not set; using {home}{note}. "
        f"Run `export DAGSTER_HOME={home}` before `dg dev` / `dagster dev` to see these runs in the UI."
    )
    return home


def get_instance(warn: Say = _quiet) -> DagsterInstance:
    from dagster import DagsterInstance

    ensure_dagster_home(warn)
    return DagsterInstance.get()


# --- instruments and months ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Instrument:
    exchange: str
    atlas: str
    native: str

    @property
    def instruments_name(self) -> str:
        from aperiodic_pipelines.defs.partitions import exchange_of

        return exchange_of(self.exchange).instruments_name


def resolve_instrument(exchange: str, symbol: str) -> Instrument:
    """An Atlas symbol or native id on `exchange`, checked; the partition key is the native id."""
    from aperiodic_pipelines.defs.partitions import instrument_key
    from aperiodic_pipelines.domain.symbols import resolve_symbol

    atlas, native = resolve_symbol(exchange, symbol)
    return Instrument(exchange, atlas, instrument_key(exchange, native))


def register_instrument(instance: DagsterInstance, instrument: Instrument) -> bool:
    """Add the instrument to its exchange's dynamic partitions; returns whether it was new."""
    if instance.has_dynamic_partition(instrument.instruments_name, instrument.native):
        return False
    instance.add_dynamic_partitions(instrument.instruments_name, [instrument.native])
    return True


def month_range(first: str, last: str | None = None) -> list[str]:
    """Inclusive `YYYY-MM` range in calendar order; `last=None` means just `first`."""
    check_month(first)
    last = check_month(last) if last is not None else first
    if last < first:
        raise RunSetupError(f"month range is backwards: {first} .. {last}")
    year, mon = (int(p) for p in first.split("-"))
    months = []
    while (current := f"{year:04d}-{mon:02d}") <= last:
        months.append(current)
        year, mon = (year + 1, 1) if mon == 12 else (year, mon + 1)
    return months


# --- runs through the code location ----------------------------------------------------------------------------


def flow_job_name(exchange: str) -> str:
    from aperiodic_pipelines.defs.partitions import exchange_of

    return f"{exchange_of(exchange).slug}_flow_bars_job"


@contextmanager
def code_location(instance: DagsterInstance, workspace_file: Path | None = None) -> Iterator[WorkspaceProcessContext]:
    """The workspace (`workspace.yaml` from the current directory or the source tree), loaded as the webserver
    loads it: a code server process running the definitions with this process's environment."""
    from dagster import __version__
    from dagster._core.workspace.context import WorkspaceProcessContext
    from dagster._core.workspace.load_target import WorkspaceFileTarget

    workspace_file = workspace_file or project_file("workspace.yaml")
    if workspace_file is None:
        raise RunSetupError("no workspace.yaml in the current directory or the source tree")
    with WorkspaceProcessContext(
        instance, WorkspaceFileTarget(paths=[str(workspace_file)]), version=__version__
    ) as context:
        yield context


def _daemon_dequeues(instance: DagsterInstance) -> bool:
    """Whether submitting queues the run for a live `dagster-daemon` (else it would wait forever)."""
    if not isinstance(instance.run_coordinator, QueuedRunCoordinator):
        return True  # the default coordinator launches at once
    from dagster._daemon.controller import get_daemon_statuses

    statuses = get_daemon_statuses(instance, ["QUEUED_RUN_COORDINATOR"], ignore_errors=True)
    return statuses["QUEUED_RUN_COORDINATOR"].healthy is True


def submit_partition_run(
    process_context: WorkspaceProcessContext,
    instrument: Instrument,
    month: str,
    *,
    tags: dict[str, str] | None = None,
    log_level: str = "INFO",
    location: str = DEFAULT_CODE_LOCATION,
    say: Say = _quiet,
) -> str:
    """Create one partition run of the exchange's flow job from the code location and submit it; its run id."""
    from aperiodic_pipelines.defs.partitions import flow_partition_key, month_partition_key

    partition_tags = {
        "dagster/partition": str(flow_partition_key(instrument.exchange, instrument.native, month)),
        "dagster/partition/instrument": instrument.native,
        "dagster/partition/month": month_partition_key(month),
    }
    return _submit_job_run(process_context, flow_job_name(instrument.exchange), instrument.exchange, partition_tags,
                           tags=tags, log_level=log_level, location=location, say=say)


def submit_venue_run(
    process_context: WorkspaceProcessContext,
    exchange: str,
    month: str,
    *,
    tags: dict[str, str] | None = None,
    log_level: str = "INFO",
    location: str = DEFAULT_CODE_LOCATION,
    say: Say = _quiet,
) -> str:
    """Create one month's run of the exchange's venue job (`{slug}/venue_hours`, venue.py) and submit it."""
    from aperiodic_pipelines.defs.partitions import month_partition_key
    from aperiodic_pipelines.defs.venue import venue_job_name

    partition_tags = {"dagster/partition": month_partition_key(month)}
    return _submit_job_run(process_context, venue_job_name(exchange), exchange, partition_tags,
                           tags=tags, log_level=log_level, location=location, say=say)


def _submit_job_run(
    process_context: WorkspaceProcessContext,
    job_name: str,
    exchange: str,
    partition_tags: dict[str, str],
    *,
    tags: dict[str, str] | None,
    log_level: str,
    location: str,
    say: Say,
) -> str:
    from dagster._core.definitions.selector import JobSubsetSelector

    workspace = process_context.create_request_context()
    if workspace.has_code_location_error(location):
        raise RunSetupError(f"code location {location!r} failed to load: {workspace.get_code_location_error(location)}")
    if location not in workspace.code_location_names:
        raise RunSetupError(f"no code location {location!r} in the workspace (found {workspace.code_location_names})")
    code = workspace.get_code_location(location)
    (repository,) = code.get_repositories().values()
    remote_job = code.get_job(JobSubsetSelector(location_name=location, repository_name=repository.name,
                                                job_name=job_name, op_selection=None))
    run_config: dict[str, Any] = {"loggers": {"console": {"config": {"log_level": log_level}}}}
    plan = code.get_execution_plan(remote_job, run_config, step_keys_to_execute=None, known_state=None,
                                   instance=workspace.instance)
    run_tags = {**remote_job.tags, **partition_tags, EXCHANGE_TAG: exchange, **(tags or {})}
    instance = workspace.instance
    run = instance.create_run(
        job_name=job_name, run_id=None, run_config=run_config, resolved_op_selection=None,
        step_keys_to_execute=None, op_selection=None, status=None, root_run_id=None, parent_run_id=None,
        tags=run_tags, job_snapshot=remote_job.job_snapshot,
        execution_plan_snapshot=plan.execution_plan_snapshot, parent_job_snapshot=remote_job.parent_job_snapshot,
        remote_job_origin=remote_job.get_remote_origin(), job_code_origin=remote_job.get_python_origin(),
        asset_selection=None, asset_check_selection=None, asset_graph=repository.asset_graph,
    )
    if _daemon_dequeues(instance):
        instance.submit_run(run.run_id, workspace)
    else:
        say("  (no dagster-daemon is dequeuing runs: launching directly, outside the run queue's limits)")
        instance.launch_run(run.run_id, workspace)
    return run.run_id


def wait_for_runs(instance: DagsterInstance, run_ids: Sequence[str]) -> dict[str, DagsterRun]:
    """Block until every run has finished; returns the finished runs by id."""
    pending, done = list(run_ids), {}
    while pending:
        for run_id in list(pending):
            run = instance.get_run_by_id(run_id)
            if run is not None and run.status.value in FINISHED:
                done[run_id] = run
                pending.remove(run_id)
        if pending:
            time.sleep(POLL_SECONDS)
    return done


# --- what happened in a run ------------------------------------------------------------------------------------


def _records(instance: DagsterInstance, run_id: str, *types: Any) -> list[Any]:
    return [r.event_log_entry for r in instance.get_records_for_run(run_id, of_type=set(types)).records]


def failed_checks(instance: DagsterInstance, run_id: str, *, limit: int = 400) -> list[str]:
    """Failed asset checks of the run with their severity and text metadata, each cut to `limit` characters."""
    from dagster import DagsterEventType

    lines = []
    for entry in _records(instance, run_id, DagsterEventType.ASSET_CHECK_EVALUATION):
        evaluation = entry.dagster_event.event_specific_data
        if evaluation.passed:
            continue
        details = [evaluation.description] if evaluation.description else []
        for name, value in evaluation.metadata.items():
            raw = getattr(value, "value", value)
            if isinstance(raw, str | int | float):
                details.append(f"{name}: {raw}")
        text = "; ".join(details)
        text = text if len(text) <= limit else text[:limit] + " ..."
        lines.append(
            f"check {evaluation.check_name} on {evaluation.asset_key.to_user_string()} "
            f"failed ({evaluation.severity.value}){': ' + text if text else ''}"
        )
    return lines


def describe_failure(instance: DagsterInstance, run_id: str) -> list[str]:
    """One line per failed step (step key, error and causes), the failed checks, or the run's own failure."""
    from dagster import DagsterEventType

    lines = []
    for entry in _records(instance, run_id, DagsterEventType.STEP_FAILURE):
        error = entry.dagster_event.step_failure_data.error
        message = error.message.strip() if error is not None else "unknown error"
        cause = error.cause if error is not None else None
        while cause is not None:
            message += f"\n    caused by: {cause.message.strip()}"
            cause = cause.cause
        lines.append(f"step {entry.dagster_event.step_key} failed: {message}")
    lines.extend(failed_checks(instance, run_id))
    if not lines:
        for entry in _records(instance, run_id, DagsterEventType.RUN_FAILURE, DagsterEventType.ENGINE_EVENT):
            if entry.dagster_event.event_type == DagsterEventType.RUN_FAILURE or "error" in entry.message.lower():
                lines.append(entry.message.strip())
    return lines or ["the run failed before any step ran (see the run's logs in the Dagster UI)"]


def summarise_run(instance: DagsterInstance, run_id: str) -> list[str]:
    """Short per-asset lines from the run's materialisations, then its failed (non-blocking) checks."""
    from dagster import DagsterEventType

    lines = []
    for entry in _records(instance, run_id, DagsterEventType.ASSET_MATERIALIZATION):
        materialization = entry.dagster_event.event_specific_data.materialization
        shown = []
        for name, value in materialization.metadata.items():
            raw = getattr(value, "value", value)
            if isinstance(raw, bool | int | float) or (isinstance(raw, str) and len(raw) <= 120):
                shown.append(f"{name}={raw}")
            if len(shown) == 4:
                break
        lines.append(f"  {materialization.asset_key.to_user_string()}: {', '.join(shown)}")
    lines.extend(f"  {line}" for line in failed_checks(instance, run_id))
    return lines


# --- materialise months ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MonthRun:
    instrument: Instrument
    month: str
    run_id: str
    success: bool
    lines: tuple[str, ...]  # summary when it succeeded, the failure's description otherwise


def run_month_waves(
    instance: DagsterInstance,
    instruments: Sequence[Instrument],
    months: Sequence[str],
    *,
    tags: dict[str, str] | None = None,
    log_level: str = "INFO",
    workspace_file: Path | None = None,
    say: Say = _quiet,
    report: Callable[[MonthRun], None] = lambda _run: None,
) -> list[MonthRun]:
    """Each month in order; within a month, one run per instrument side by side. Stops after a month in which
    any run failed (a month needs the one before it). Registers the instruments first.

    An exchange with a venue-wide step (Hyperliquid, `defs/venue.py`) gets its venue run of the month first; its
    instruments' runs are submitted when it succeeded (the other exchanges' runs go ahead meanwhile). When it
    fails, each of its instruments' months is reported failed with the venue run's failure."""
    from aperiodic_pipelines.defs.venue import has_venue_step

    for instrument in instruments:
        if register_instrument(instance, instrument):
            say(f"registered instrument {instrument.exchange} {instrument.native}")
    venue_exchanges = sorted({i.exchange for i in instruments if has_venue_step(i.exchange)})
    results: list[MonthRun] = []
    with code_location(instance, workspace_file) as process_context:

        def submit(instrument: Instrument, month: str) -> str:
            say(f"submitting {instrument.exchange} {instrument.native} {month} ...")
            return submit_partition_run(process_context, instrument, month, tags=tags, log_level=log_level, say=say)

        for month in months:
            venue_runs = {}
            for exchange in venue_exchanges:
                say(f"submitting {exchange} venue month {month} (every hourly object, parsed once for all coins) ...")
                venue_runs[exchange] = submit_venue_run(
                    process_context, exchange, month, tags=tags, log_level=log_level, say=say
                )
            submitted = {i: submit(i, month) for i in instruments if i.exchange not in venue_runs}
            month_results: dict[Instrument, MonthRun] = {}
            for exchange, venue_run_id in venue_runs.items():
                venue_run = wait_for_runs(instance, [venue_run_id])[venue_run_id]
                if venue_run.status.value == "SUCCESS":
                    say(f"venue run {venue_run_id} for {exchange} {month} succeeded")
                    say("\n".join(summarise_run(instance, venue_run_id)))
                    submitted.update({i: submit(i, month) for i in instruments if i.exchange == exchange})
                    continue
                failure = tuple(f"venue step: {line}" for line in describe_failure(instance, venue_run_id))
                for instrument in instruments:
                    if instrument.exchange == exchange:
                        month_results[instrument] = MonthRun(instrument, month, venue_run_id, False, failure)
            finished = wait_for_runs(instance, list(submitted.values()))
            for instrument, run_id in submitted.items():
                ok = finished[run_id].status.value == "SUCCESS"
                lines = summarise_run(instance, run_id) if ok else describe_failure(instance, run_id)
                month_results[instrument] = MonthRun(instrument, month, run_id, ok, tuple(lines))
            for instrument in instruments:  # reported in the caller's order
                results.append(month_results[instrument])
                report(results[-1])
            if not all(r.success for r in results):
                break
    return results


# --- backfills (GraphQL against a running webserver; the daemon executes them) ---------------------------------

_REPOSITORIES_QUERY = """
query Repositories {
  repositoriesOrError {
    __typename
    ... on RepositoryConnection { nodes { name location { name } } }
    ... on Error { message }
  }
}
"""

_ADD_PARTITION_MUTATION = """
mutation AddInstrument($repositorySelector: RepositorySelector!, $partitionsDefName: String!, $partitionKey: String!) {
  addDynamicPartition(
    repositorySelector: $repositorySelector, partitionsDefName: $partitionsDefName, partitionKey: $partitionKey
  ) {
    __typename
    ... on Error { message }
  }
}
"""

_JOB_ASSETS_QUERY = """
query JobAssets($pipeline: PipelineSelector!) {
  assetNodes(pipeline: $pipeline) { assetKey { path } }
}
"""

_LAUNCH_BACKFILL_MUTATION = """
mutation LaunchBackfill($backfillParams: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $backfillParams) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on Error { message }
  }
}
"""


def graphql(url: str, query: str, variables: dict[str, Any] | None = None, *, timeout: float = 60.0) -> dict:
    """POST one GraphQL request to the webserver's `/graphql`; raise `RunSetupError` on transport or GraphQL errors."""
    import requests

    endpoint = url.rstrip("/") + "/graphql"
    try:
        response = requests.post(endpoint, json={"query": query, "variables": variables or {}}, timeout=timeout)
    except requests.RequestException as exc:
        raise RunSetupError(f"cannot reach the Dagster webserver at {endpoint}: {exc}") from None
    if response.status_code != 200:
        raise RunSetupError(f"{endpoint} answered HTTP {response.status_code}: {response.text[:300]}")
    body = response.json()
    if body.get("errors"):
        raise RunSetupError(f"{endpoint}: {'; '.join(e.get('message', '?') for e in body['errors'])}")
    return body["data"]


def find_repository(url: str, location: str) -> dict[str, str]:
    """The repository selector of code location `location` on the webserver."""
    data = graphql(url, _REPOSITORIES_QUERY)["repositoriesOrError"]
    if data["__typename"] != "RepositoryConnection":
        raise RunSetupError(f"webserver could not list repositories: {data.get('message')}")
    for node in data["nodes"]:
        if node["location"]["name"] == location:
            return {"repositoryLocationName": location, "repositoryName": node["name"]}
    found = ", ".join(sorted(n["location"]["name"] for n in data["nodes"])) or "none"
    raise RunSetupError(f"code location {location!r} is not loaded in the webserver at {url} (loaded: {found})")


def submit_backfill(
    url: str,
    exchange: str,
    symbol: str,
    months: Sequence[str],
    *,
    location: str = DEFAULT_CODE_LOCATION,
) -> str:
    """Register the instrument on the server's instance and launch one backfill of the flow job over `months`.

    Returns the backfill id. The daemon then runs one run per partition (no backfill policy).
    """
    from aperiodic_pipelines.defs.partitions import flow_partition_key

    instrument = resolve_instrument(exchange, symbol)
    repository = find_repository(url, location)
    added = graphql(
        url,
        _ADD_PARTITION_MUTATION,
        {"repositorySelector": repository, "partitionsDefName": instrument.instruments_name,
         "partitionKey": instrument.native},
    )["addDynamicPartition"]
    if added["__typename"] not in ("AddDynamicPartitionSuccess", "DuplicateDynamicPartitionError"):
        raise RunSetupError(
            f"could not register instrument {exchange} {instrument.native}: {added.get('message', added['__typename'])}"
        )
    from aperiodic_pipelines.defs.venue import has_venue_step

    if has_venue_step(exchange):
        return _submit_venue_backfill(url, repository, instrument, months)
    # A backfill of the partitioned job runs exactly these months. An asset backfill would also run
    # second_stats..published_flow_bars of the month after the range (it reads raw trades of the range's last
    # month through the m−1 mapping). The exchange tag feeds the per-exchange run limit in dagster.yaml.
    params = {
        "selector": {
            "partitionSetName": f"{flow_job_name(exchange)}_partition_set", "repositorySelector": repository
        },
        "partitionNames": [str(flow_partition_key(exchange, instrument.native, m)) for m in months],
        "title": f"{exchange} {instrument.native} {months[0]}..{months[-1]}",
        "tags": [{"key": LAUNCHED_BY_TAG, "value": "cli"}, {"key": EXCHANGE_TAG, "value": exchange}],
        "fromFailure": False,
    }
    launched = graphql(url, _LAUNCH_BACKFILL_MUTATION, {"backfillParams": params})["launchPartitionBackfill"]
    if launched["__typename"] != "LaunchBackfillSuccess":
        raise RunSetupError(f"backfill not launched ({launched['__typename']}): {launched.get('message', '')}")
    return launched["backfillId"]


def _submit_venue_backfill(url: str, repository: dict[str, str], instrument: Instrument, months: Sequence[str]) -> str:
    """An asset backfill of the venue months and the instrument's months of every asset of the exchange's flow
    job: the daemon runs each venue month before the instrument's runs of that month (its dependency), and the
    instrument's months in order (second_stats reads the month before). Exactly these partitions run."""
    from aperiodic_pipelines.defs.partitions import exchange_of, flow_partition_key, month_partition_key
    from aperiodic_pipelines.defs.venue import venue_hours_key

    exchange = exchange_of(instrument.exchange)
    pipeline = {**repository, "pipelineName": flow_job_name(instrument.exchange)}
    nodes = graphql(url, _JOB_ASSETS_QUERY, {"pipeline": pipeline})["assetNodes"]
    if not nodes:
        raise RunSetupError(f"the webserver at {url} shows no assets in job {pipeline['pipelineName']}")
    first, last = months[0], months[-1]
    flow_range = {"start": str(flow_partition_key(exchange.name, instrument.native, first)),
                  "end": str(flow_partition_key(exchange.name, instrument.native, last))}
    partitions_by_assets = [
        {"assetKey": {"path": venue_hours_key(exchange).path},
         "partitions": {"ranges": [{"start": month_partition_key(first), "end": month_partition_key(last)}]}},
        *({"assetKey": {"path": node["assetKey"]["path"]}, "partitions": {"ranges": [flow_range]}} for node in nodes),
    ]
    params = {
        "partitionsByAssets": partitions_by_assets,
        "title": f"{exchange.name} {instrument.native} {first}..{last} (venue months first)",
        "tags": [{"key": LAUNCHED_BY_TAG, "value": "cli"}, {"key": EXCHANGE_TAG, "value": exchange.name}],
    }
    launched = graphql(url, _LAUNCH_BACKFILL_MUTATION, {"backfillParams": params})["launchPartitionBackfill"]
    if launched["__typename"] != "LaunchBackfillSuccess":
        raise RunSetupError(f"backfill not launched ({launched['__typename']}): {launched.get('message', '')}")
    return launched["backfillId"]
