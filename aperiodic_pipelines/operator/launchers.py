"""Run launchers whose run workers are health-checked, so Dagster's run monitoring fails a run whose worker died.

Dagster's run monitoring (`run_monitoring:` in dagster.yaml, the daemon's MonitoringDaemon) asks the run
launcher, every `poll_interval_seconds`, whether the worker of each STARTED run is alive, and fails the run when
it is not; `run_retries` then retries it. Dagster's `DefaultRunLauncher` cannot answer (its
`supports_check_run_worker_health` is False), so a run whose worker and code server were killed (kill -9 of the
service's process tree, an OOM kill of the code server, a container restart) stays STARTED for ever and holds a
run slot: after `max_concurrent_runs` of them nothing else starts.

- `HealthCheckedDefaultRunLauncher` is the default launcher plus that answer. Its run workers are processes on
  the code server's machine; every run worker records its pid in the run's event log ("Started process for run
  (pid: N)", Dagster's own engine event). The worker is alive while that pid is a live, non-zombie process that
  started before the event (so a recycled pid is not mistaken for it). Runs whose code server is on another
  machine (a `grpc_server` location on another host) are not checked: their pids mean nothing here; see the
  class for code servers on a local port.
- Both fail a run whose worker they find dead themselves, status first (`fail_run_status_first`), so that
  Dagster's run retries never miss it.
- `HealthCheckedCeleryRunLauncher` (deploy/celery; needs the `celery` extra) is dagster-celery's
  `CeleryRunLauncher`, whose own check reads the Celery task's state from the result backend. After kill -9 of a
  whole Celery worker nobody updates that state: it says STARTED for ever. This launcher asks the worker named in
  the task's STARTED record with Celery's `ping` and reports the worker dead when it does not answer.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dagster import DagsterEvent, DagsterEventType, DefaultRunLauncher
from dagster._core.launcher import CheckRunHealthResult, WorkerStatus
from dagster._core.storage.tags import GRPC_INFO_TAG

if TYPE_CHECKING:
    from dagster import DagsterInstance, DagsterRun
    from dagster._core.launcher import RunLauncher
    from dagster._serdes import ConfigurableClassData

# Dagster's engine events naming a run worker's pid (dagster/_grpc/impl.py, dagster/_cli/api.py).
WORKER_STARTED_PREFIXES = ("Started process for run (pid:", "Started process for resuming job (pid:")
# A recycled pid belongs to a process started after the worker's event; allow this much clock disagreement
# between the event's wall-clock timestamp and the process age derived from the kernel's boot-relative clock.
START_TIME_SLACK_S = 5.0
_LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1", "0.0.0.0"}
MAX_REMEMBERED_WORKERS = 100_000


@dataclass(frozen=True)
class RunWorker:
    """A run worker as its engine event recorded it."""

    pid: int
    started_at: float  # the event's wall-clock timestamp (seconds since the epoch)


def recorded_run_worker(instance: DagsterInstance, run_id: str) -> RunWorker | None:
    """The latest run worker the run's event log names, or None before the worker has reported."""
    latest: RunWorker | None = None
    for entry in instance.all_logs(run_id, of_type=DagsterEventType.ENGINE_EVENT):
        event = entry.dagster_event
        if event is None or not (event.message or "").startswith(WORKER_STARTED_PREFIXES):
            continue
        pid_value = event.engine_event_data.metadata.get("pid")
        pid_text = getattr(pid_value, "value", pid_value)
        if pid_text is None or not str(pid_text).isdigit():
            continue
        latest = RunWorker(pid=int(str(pid_text)), started_at=entry.timestamp)
    return latest


def _clock_ticks_per_second() -> int:
    return os.sysconf("SC_CLK_TCK")


def process_state(pid: int, proc: Path = Path("/proc")) -> tuple[str, float] | None:
    """(state letter, wall-clock start time) of a live pid from /proc, or None if there is no such process.

    The start time is derived from the process's age on the kernel's boot-relative clock (`starttime` against
    `/proc/uptime`), so it does not depend on when the wall clock was last adjusted.
    """
    try:
        stat = (proc / str(pid) / "stat").read_text()
        uptime = float((proc / "uptime").read_text().split()[0])
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) is in parentheses and may contain spaces or parentheses: split after the last ')'.
    fields = stat[stat.rindex(")") + 2:].split()
    state, start_ticks = fields[0], int(fields[19])  # fields 3 and 22 of proc(5)
    age_s = max(0.0, uptime - start_ticks / _clock_ticks_per_second())
    return state, time.time() - age_s


def worker_process_alive(worker: RunWorker, proc: Path = Path("/proc")) -> bool:
    """True while the worker's pid is a running (not zombie, not dead) process that existed at its event."""
    if not proc.is_dir():  # not Linux: no start times; a signal-0 probe at least tells a free pid
        try:
            os.kill(worker.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    state = process_state(worker.pid, proc)
    if state is None:
        return False
    letter, started_at = state
    if letter in ("Z", "X", "x"):  # killed, not yet reaped by its parent
        return False
    return started_at <= worker.started_at + START_TIME_SLACK_S


def _code_server_location(run: DagsterRun) -> str:
    """Where the run's code server (hence its run worker) runs, from Dagster's gRPC tag: "socket" (a Unix socket:
    a code server started by this machine's daemon or webserver), "local" (a TCP port on this host, perhaps in
    another container with its own pid namespace) or "remote"."""
    info_text = run.tags.get(GRPC_INFO_TAG)
    if not info_text:
        return "remote"
    try:
        info = json.loads(info_text)
    except ValueError:
        return "remote"
    if info.get("socket"):
        return "socket"
    host = str(info.get("host") or "").lower()
    local_names = {socket.gethostname().lower(), socket.getfqdn().lower()}
    return "local" if host in _LOCAL_HOSTS or host.startswith("127.") or host in local_names else "remote"


def fail_run_status_first(launcher: RunLauncher, run: DagsterRun, reason: str) -> CheckRunHealthResult:
    """Fail `run` whose worker is dead: its status first, then its RUN_FAILURE event; the FAILED verdict.

    Dagster stores a RUN_FAILURE event before it sets the run's status (`handle_new_event`), and its retry daemon
    (EventLogConsumerDaemon, every 5 s) drops for good a failure whose run it reads in between as still STARTED.
    Run monitoring polls in step with that daemon (10 s and 5 s from the same start), so a dead worker's failure
    reported by the monitoring daemon hit that window in 1 of 7 runs here and was never retried. Written
    status first, the monitoring daemon sees the change and leaves the run alone ("disregarding for now").
    A launcher that can resume runs (Celery) with resume attempts configured and left gets the verdict only:
    the daemon resumes the run instead of failing it.
    """
    instance = launcher._instance
    if launcher.supports_resume_run and (
        instance.count_resume_run_attempts(run.run_id) < instance.run_monitoring_max_resume_run_attempts
    ):
        return CheckRunHealthResult(WorkerStatus.FAILED, reason)
    message = f"{reason}. Marking run {run.run_id} as failed."
    failure = DagsterEvent(event_type_value=DagsterEventType.RUN_FAILURE.value, job_name=run.job_name, message=message)
    instance.run_storage.handle_run_event(run.run_id, failure)
    instance.report_run_failed(run, message)
    return CheckRunHealthResult(WorkerStatus.FAILED, reason)


class HealthCheckedDefaultRunLauncher(DefaultRunLauncher):
    """Dagster's default run launcher (a run worker process per run, spawned by the code server), plus the worker
    health check run monitoring needs: a run whose worker process is gone is reported FAILED.

    A worker is judged only where its pid means something here: under a code server on a Unix socket (started by
    this machine's daemon), or, for a code server on a local TCP port (which may sit in another container with
    its own pid namespace), once this launcher has seen the worker's pid alive. Failing a run whose worker is in
    fact running would start a second writer of its partition, so anything less certain counts as RUNNING.
    """

    def __init__(self, inst_data: ConfigurableClassData | None = None) -> None:
        super().__init__(inst_data=inst_data)
        self._seen_alive: set[tuple[str, int]] = set()  # (run id, pid) observed running by an earlier check

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: DagsterRun) -> CheckRunHealthResult:
        location = _code_server_location(run)
        if location == "remote":
            return CheckRunHealthResult(WorkerStatus.RUNNING, "run worker not on this machine: not checked")
        worker = recorded_run_worker(self._instance, run.run_id)
        if worker is None:
            return CheckRunHealthResult(WorkerStatus.RUNNING, "run worker has not recorded its pid yet")
        if worker_process_alive(worker):
            if len(self._seen_alive) > MAX_REMEMBERED_WORKERS:
                self._seen_alive.clear()  # bounded; a forgotten worker is only judged again once seen
            self._seen_alive.add((run.run_id, worker.pid))
            return CheckRunHealthResult(WorkerStatus.RUNNING, run_worker_id=str(worker.pid))
        if location == "local" and (run.run_id, worker.pid) not in self._seen_alive:
            return CheckRunHealthResult(
                WorkerStatus.RUNNING, f"run worker process {worker.pid} not visible here: not judged"
            )
        self._seen_alive.discard((run.run_id, worker.pid))
        return fail_run_status_first(
            self, run,
            f"run worker process {worker.pid} is gone (killed or crashed without reporting the run's end); "
            f"it started at {worker.started_at:.3f}",
        )

    def get_run_worker_debug_info(self, run: DagsterRun, include_container_logs: bool | None = True) -> str | None:
        worker = recorded_run_worker(self._instance, run.run_id)
        return None if worker is None else f"run worker pid {worker.pid}, started at {worker.started_at:.3f}"


def __getattr__(name: str) -> Any:
    # The Celery launcher lives in its own module so that the default deployment never imports Celery.
    if name == "HealthCheckedCeleryRunLauncher":
        try:
            from aperiodic_pipelines.operator.celery_launcher import HealthCheckedCeleryRunLauncher
        except ImportError as error:
            raise ImportError(
                "HealthCheckedCeleryRunLauncher needs dagster-celery: pip install 'aperiodic-pipelines[celery]' "
                f"({error})"
            ) from error
        return HealthCheckedCeleryRunLauncher
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
