"""Runs the UI knows, submitted through the code location and waited for with a deadline.

A run is created from the code location's job snapshot, so it carries the repository origin: it appears under its
job, on the Overview timeline and its partition, and Re-execute offers it without a "different version" warning. It
is then submitted to the instance: queued within the run limits when a `dagster-daemon` dequeues, else launched
directly by the instance's run launcher. The code location is `workspace.yaml` from the current directory or the
source tree; without one (an installed package run from anywhere), the installed module
`aperiodic_pipelines.defs.definitions`, as `workspace.yaml` names it.

This is the only module of the package that uses Dagster's private API (`dagster._core`, `dagster._daemon`):
open-source Dagster has no public call that creates a run from a code location outside the webserver.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aperiodic_pipelines.defs.policies import EXCHANGE_TAG
from aperiodic_pipelines.domain.exchanges import exchange_of
from aperiodic_pipelines.operator.instance import (
    DEFAULT_CODE_LOCATION,
    DEFINITIONS_MODULE,
    RunSetupError,
    Say,
    project_file,
    quiet,
)
from aperiodic_pipelines.operator.outcomes import describe_failure, shorten, summarise_run
from aperiodic_pipelines.operator.registry import Instrument, register_instrument

if TYPE_CHECKING:
    from dagster import DagsterInstance, DagsterRun
    from dagster._core.workspace.context import WorkspaceProcessContext

FINISHED = {"SUCCESS", "FAILURE", "CANCELED"}
POLL_SECONDS = 0.5
HEALTH_CHECK_SECONDS = 5.0  # how often a STARTED run's worker is asked after
QUEUED_ALONE_SECONDS = 30.0  # a queued run with no daemon dequeuing for this long is reported, not waited on
DEFAULT_WAIT_SECONDS = 6 * 3600.0  # a month of the largest instrument takes minutes; hours means something is stuck


# --- the code location --------------------------------------------------------------------------------------------


@contextmanager
def code_location(instance: DagsterInstance, workspace_file: Path | None = None) -> Iterator[WorkspaceProcessContext]:
    """The workspace, loaded as the webserver loads it: a code server process running the definitions with this
    process's environment. `workspace.yaml` (given, or from the current directory or the source tree), else the
    installed definitions module under the location name `workspace.yaml` uses."""
    from dagster import __version__
    from dagster._core.workspace.context import WorkspaceProcessContext
    from dagster._core.workspace.load_target import ModuleTarget, WorkspaceFileTarget

    workspace_file = workspace_file or project_file("workspace.yaml")
    if workspace_file is not None:
        target: Any = WorkspaceFileTarget(paths=[str(workspace_file)])
    else:
        target = ModuleTarget(module_name=DEFINITIONS_MODULE, attribute="defs", working_directory=os.getcwd(),
                              location_name=DEFAULT_CODE_LOCATION)
    already_running = set(code_servers_of(os.getpid()))
    servers: set[int] = set()
    try:
        with WorkspaceProcessContext(instance, target, version=__version__) as context:
            servers.update(code_servers_of(os.getpid()))
            try:
                yield context
            finally:
                servers.update(code_servers_of(os.getpid()))
    finally:
        reap_code_servers(servers - already_running)


# --- the code server's end ----------------------------------------------------------------------------------------

# Closing the workspace only asks its code server to shut down once its runs have ended, and returns at once. The
# server's cleanup thread then opens the instance from its reference: when the instance directory is gone by then
# (a temporary DAGSTER_HOME, as in tests) that thread dies, the server never exits, and it ignores SIGTERM. So
# the code location waits for its server, then kills it.
SERVER_EXIT_SECONDS = 15.0
# Run workers of runs launched directly (no daemon) are the server's multiprocessing children (spawn_main, and
# multiprocessing's resource tracker they share); a run the wait gave up on goes on in them after the server is
# killed (it reports its own end), so they are spared. Each exits when its run ends.
RUN_WORKER_MARK = "from multiprocessing."


def _proc_children() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parent = int(stat[stat.rindex(")") + 2:].split()[1])  # proc(5): ppid is field 4
            children.setdefault(parent, []).append(int(entry))
    return children


def _command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] not in "ZXx"  # a zombie has exited; its parent reaps it


def code_servers_of(pid: int) -> list[int]:
    """The `dagster api grpc` code servers that are children of `pid` (empty where there is no /proc)."""
    if not Path("/proc").is_dir():
        return []
    return [child for child in _proc_children().get(pid, []) if " api grpc " in _command_line(child) and _alive(child)]


def reap_code_servers(servers: set[int], deadline_seconds: float = SERVER_EXIT_SECONDS) -> list[int]:
    """Wait for the code servers to exit, then kill (SIGKILL) those still alive and their descendants, except
    run workers; the pids killed."""
    deadline = time.monotonic() + deadline_seconds
    while any(map(_alive, servers)) and time.monotonic() < deadline:
        time.sleep(0.2)
    killed = []
    children = _proc_children()
    for server in filter(_alive, servers):
        tree, todo = [server], list(children.get(server, []))
        while todo:
            pid = todo.pop()
            if RUN_WORKER_MARK not in _command_line(pid):
                tree.append(pid)
                todo.extend(children.get(pid, []))
        for pid in tree:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
    return killed


def daemon_dequeues(instance: DagsterInstance) -> bool:
    """Whether submitting queues the run for a live `dagster-daemon` (else it would wait for ever)."""
    from dagster import QueuedRunCoordinator
    from dagster._daemon.controller import get_daemon_statuses

    if not isinstance(instance.run_coordinator, QueuedRunCoordinator):
        return True  # the default coordinator launches at once
    statuses = get_daemon_statuses(instance, ["QUEUED_RUN_COORDINATOR"], ignore_errors=True)
    return statuses["QUEUED_RUN_COORDINATOR"].healthy is True


@dataclass
class Submitter:
    """Creates runs of the code location's jobs and submits them; says once when it launches directly."""

    process_context: WorkspaceProcessContext
    location: str = DEFAULT_CODE_LOCATION
    tags: dict[str, str] = field(default_factory=dict)
    log_level: str = "INFO"
    say: Say = quiet
    launched_directly: set[str] = field(default_factory=set)  # run ids launched outside the queue
    _direct_said: bool = False

    def partition_run(self, instrument: Instrument, month: str) -> str:
        """One partition run of the exchange's flow job."""
        from aperiodic_pipelines.defs.partitions import flow_partition_key, month_partition_key

        partition_tags = {
            "dagster/partition": str(flow_partition_key(instrument.exchange, instrument.native, month)),
            "dagster/partition/instrument": instrument.native,
            "dagster/partition/month": month_partition_key(month),
        }
        return self._submit(exchange_of(instrument.exchange).flow_job_name, instrument.exchange, partition_tags)

    def daily_run(self, instrument: Instrument) -> str:
        """One run of the exchange's daily job for the instrument: the open month's complete days not yet
        published (defs/daily.py)."""
        from aperiodic_pipelines.defs.daily import daily_job_name

        job = daily_job_name(exchange_of(instrument.exchange).slug)
        return self._submit(job, instrument.exchange, {"dagster/partition": instrument.native})

    def venue_run(self, exchange: str, month: str) -> str:
        """One month's run of the exchange's venue job (`{slug}/venue_hours`, defs/venue.py)."""
        from aperiodic_pipelines.defs.partitions import month_partition_key
        from aperiodic_pipelines.defs.venue import venue_job_name

        return self._submit(venue_job_name(exchange), exchange, {"dagster/partition": month_partition_key(month)})

    def _submit(self, job_name: str, exchange: str, partition_tags: dict[str, str]) -> str:
        from dagster._core.definitions.selector import JobSubsetSelector

        location = self.location
        workspace = self.process_context.create_request_context()
        if workspace.has_code_location_error(location):
            error = workspace.get_code_location_error(location)
            raise RunSetupError(f"code location {location!r} failed to load: {shorten(str(error))}")
        if location not in workspace.code_location_names:
            raise RunSetupError(f"no code location {location!r} in the workspace (found {workspace.code_location_names})")
        code = workspace.get_code_location(location)
        (repository,) = code.get_repositories().values()
        remote_job = code.get_job(JobSubsetSelector(location_name=location, repository_name=repository.name,
                                                    job_name=job_name, op_selection=None))
        run_config: dict[str, Any] = {"loggers": {"console": {"config": {"log_level": self.log_level}}}}
        plan = code.get_execution_plan(remote_job, run_config, step_keys_to_execute=None, known_state=None,
                                       instance=workspace.instance)
        run_tags = {**remote_job.tags, **partition_tags, EXCHANGE_TAG: exchange, **self.tags}
        instance = workspace.instance
        run = instance.create_run(
            job_name=job_name, run_id=None, run_config=run_config, resolved_op_selection=None,
            step_keys_to_execute=None, op_selection=None, status=None, root_run_id=None, parent_run_id=None,
            tags=run_tags, job_snapshot=remote_job.job_snapshot,
            execution_plan_snapshot=plan.execution_plan_snapshot, parent_job_snapshot=remote_job.parent_job_snapshot,
            remote_job_origin=remote_job.get_remote_origin(), job_code_origin=remote_job.get_python_origin(),
            asset_selection=None, asset_check_selection=None, asset_graph=repository.asset_graph,
        )
        if daemon_dequeues(instance):
            instance.submit_run(run.run_id, workspace)
        else:
            if not self._direct_said:
                self.say("(no dagster-daemon is dequeuing runs: launching directly, outside the run queue's limits)")
                self._direct_said = True
            instance.launch_run(run.run_id, workspace)
            self.launched_directly.add(run.run_id)
        return run.run_id


# --- waiting --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunEnd:
    """A run as the wait left it: finished, or still going with the reason the wait gave up on it."""

    run: DagsterRun
    gave_up: str | None = None

    @property
    def success(self) -> bool:
        return self.gave_up is None and self.run.status.value == "SUCCESS"


def _worker_problem(instance: DagsterInstance, run: DagsterRun, local_pid_check: bool) -> str | None:
    """Why a STARTED run's worker is dead, or None while it looks alive (or cannot be asked)."""
    from dagster._core.launcher import WorkerStatus

    launcher = instance.run_launcher
    if launcher.supports_check_run_worker_health:
        health = launcher.check_run_worker_health(run)
        if health.status in (WorkerStatus.FAILED, WorkerStatus.NOT_FOUND):
            return f"its worker is gone ({health.status.value}{': ' + health.msg if health.msg else ''})"
        return None
    if local_pid_check:  # launched by this process's code server under the default launcher: the pid is local
        from aperiodic_pipelines.operator.launchers import recorded_run_worker, worker_process_alive

        worker = recorded_run_worker(instance, run.run_id)
        if worker is not None and not worker_process_alive(worker):
            return f"its worker process (pid {worker.pid}) died without ending the run"
    return None


def wait_for_runs(
    instance: DagsterInstance,
    run_ids: Sequence[str],
    *,
    deadline_seconds: float = DEFAULT_WAIT_SECONDS,
    launched_directly: set[str] | frozenset[str] = frozenset(),
) -> dict[str, RunEnd]:
    """Wait until every run has finished, its worker is found dead, it sits queued with no daemon to dequeue it,
    or the deadline passes; each run as it was left, by id. Giving up on a run does not change it."""
    start = time.monotonic()
    pending, done = list(run_ids), {}
    next_health = start + HEALTH_CHECK_SECONDS
    while pending:
        now = time.monotonic()
        check_health = now >= next_health
        for run_id in list(pending):
            run = instance.get_run_by_id(run_id)
            if run is None:
                raise RunSetupError(f"run {run_id} is not in the instance at {instance.root_directory}")
            problem = None
            if run.status.value in FINISHED:
                pass
            elif now - start > deadline_seconds:
                problem = (f"still {run.status.value} after {deadline_seconds:.0f} s, the wait's deadline; it goes on "
                           "in the instance (see the UI)")
            elif check_health and run.status.value == "STARTED":
                worker = _worker_problem(instance, run, run_id in launched_directly)
                if worker is None:
                    continue
                problem = f"{worker}; run monitoring fails it and run retries re-run it"
            elif check_health and run.status.value == "QUEUED" and now - start > QUEUED_ALONE_SECONDS:
                if daemon_dequeues(instance):
                    continue
                problem = "queued, but no dagster-daemon is dequeuing runs (start one: dg dev, or dagster-daemon run)"
            else:
                continue
            done[run_id] = RunEnd(run, problem)
            pending.remove(run_id)
        if check_health:
            next_health = now + HEALTH_CHECK_SECONDS
        if pending:
            time.sleep(POLL_SECONDS)
    return done


def outcome_lines(instance: DagsterInstance, end: RunEnd) -> list[str]:
    if end.success:
        return summarise_run(instance, end.run.run_id)
    if end.gave_up is not None:
        return [f"run {end.run.run_id}: {end.gave_up}"]
    return describe_failure(instance, end.run.run_id)


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
    say: Say = quiet,
    report: Callable[[MonthRun], None] = lambda _run: None,
    first_months: dict[Instrument, str] | None = None,
    deadline_seconds: float = DEFAULT_WAIT_SECONDS,
) -> list[MonthRun]:
    """Each month in order; within a month, one run per instrument side by side. Stops after a month in which
    any run failed (a month needs the one before it). Registers the instruments first (with their first month
    when `first_months` has it), saying so for each new one.

    An exchange with a venue-wide step (Hyperliquid, `defs/venue.py`) gets its venue run of the month first; its
    instruments' runs are submitted when it succeeded (the other exchanges' runs go ahead meanwhile). When it
    fails, each of its instruments' months is reported failed with the venue run's failure."""
    from aperiodic_pipelines.defs.venue import has_venue_step

    for instrument in instruments:
        if register_instrument(instance, instrument, (first_months or {}).get(instrument)):
            say(f"registered instrument {instrument.exchange} {instrument.native} ({instrument.atlas})")
    venue_exchanges = sorted({i.exchange for i in instruments if has_venue_step(i.exchange)})
    deadline = time.monotonic() + deadline_seconds
    results: list[MonthRun] = []
    with code_location(instance, workspace_file) as process_context:
        submitter = Submitter(process_context, tags=dict(tags or {}), log_level=log_level, say=say)

        def submit(instrument: Instrument, month: str) -> str:
            say(f"submitting {instrument.exchange} {instrument.native} {month} ...")
            return submitter.partition_run(instrument, month)

        def wait(run_ids: list[str]) -> dict[str, RunEnd]:
            return wait_for_runs(instance, run_ids, deadline_seconds=max(0.0, deadline - time.monotonic()),
                                 launched_directly=submitter.launched_directly)

        for month in months:
            venue_runs = {}
            for exchange in venue_exchanges:
                say(f"submitting {exchange} venue month {month} (every hourly object, parsed once for all coins) ...")
                venue_runs[exchange] = submitter.venue_run(exchange, month)
            submitted = {i: submit(i, month) for i in instruments if i.exchange not in venue_runs}
            month_results: dict[Instrument, MonthRun] = {}
            for exchange, venue_run_id in venue_runs.items():
                venue_end = wait([venue_run_id])[venue_run_id]
                if venue_end.success:
                    say(f"venue run {venue_run_id} for {exchange} {month} succeeded")
                    say("\n".join(summarise_run(instance, venue_run_id)))
                    submitted.update({i: submit(i, month) for i in instruments if i.exchange == exchange})
                    continue
                failure = tuple(f"venue step: {line}" for line in outcome_lines(instance, venue_end))
                for instrument in instruments:
                    if instrument.exchange == exchange:
                        month_results[instrument] = MonthRun(instrument, month, venue_run_id, False, failure)
            finished = wait(list(submitted.values()))
            for instrument, run_id in submitted.items():
                end = finished[run_id]
                month_results[instrument] = MonthRun(instrument, month, run_id, end.success,
                                                     tuple(outcome_lines(instance, end)))
            for instrument in instruments:  # reported in the caller's order
                results.append(month_results[instrument])
                report(results[-1])
            if not all(r.success for r in results):
                break
    return results


# --- the open month, day by day ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class OpenMonthRun:
    instrument: Instrument
    month: str
    run_id: str
    success: bool
    lines: tuple[str, ...]  # the failure's description when it failed
    published_now: tuple[str, ...] = ()  # days this run published
    complete_through: str | None = None
    waiting_for: str | None = None  # first complete day upstream has not (fully) published
    waiting_reason: str = ""


def _daily_metadata(instance: DagsterInstance, run_id: str) -> dict[str, Any]:
    from dagster import DagsterEventType

    records = instance.get_records_for_run(run_id, of_type={DagsterEventType.ASSET_MATERIALIZATION}).records
    if not records:
        return {}
    materialization = records[-1].event_log_entry.dagster_event.event_specific_data.materialization
    return {name: getattr(value, "value", value) for name, value in materialization.metadata.items()}


def run_open_month(
    instance: DagsterInstance,
    instruments: Sequence[Instrument],
    month: str,
    *,
    tags: dict[str, str] | None = None,
    log_level: str = "INFO",
    workspace_file: Path | None = None,
    say: Say = quiet,
    first_months: dict[Instrument, str] | None = None,
    deadline_seconds: float = DEFAULT_WAIT_SECONDS,
) -> list[OpenMonthRun]:
    """One daily run per instrument (side by side), submitted through the code location as the daily schedule
    submits them: each publishes the open month's complete days not yet published."""
    for instrument in instruments:
        if register_instrument(instance, instrument, (first_months or {}).get(instrument)):
            say(f"registered instrument {instrument.exchange} {instrument.native} ({instrument.atlas})")
    with code_location(instance, workspace_file) as process_context:
        submitter = Submitter(process_context, tags=dict(tags or {}), log_level=log_level, say=say)
        submitted = {}
        for instrument in instruments:
            say(f"submitting {instrument.exchange} {instrument.native} {month} (open month: its complete days) ...")
            submitted[instrument] = submitter.daily_run(instrument)
        finished = wait_for_runs(instance, list(submitted.values()), deadline_seconds=deadline_seconds,
                                 launched_directly=submitter.launched_directly)
    results = []
    for instrument, run_id in submitted.items():
        end = finished[run_id]
        if not end.success:
            results.append(OpenMonthRun(instrument, month, run_id, False, tuple(outcome_lines(instance, end))))
            continue
        meta = _daily_metadata(instance, run_id)
        published = str(meta.get("published_now", ""))
        through = meta.get("complete_through")
        results.append(OpenMonthRun(
            instrument, month, run_id, True, (),
            tuple(d for d in published.split(", ") if d and d != "nothing new"),
            None if through in (None, "none") else str(through),
            str(meta["waiting_for"]) if meta.get("waiting_for") else None,
            ("skipped upstream" if meta.get("skipped_upstream") else "not published upstream yet")
            + (f", missing {shorten(str(meta['upstream_missing']), 160)}" if meta.get("upstream_missing") else ""),
        ))
    return results
