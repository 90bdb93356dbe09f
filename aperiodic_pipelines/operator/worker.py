"""`aperiodic-pipelines worker`: one Celery worker that executes whole Dagster runs (deploy/celery).

The worker joins the deployment whose instance is `$DAGSTER_HOME/dagster.yaml` (deploy/celery/dagster.yaml: the
Celery run launcher, Postgres storage); any machine with the package, that instance file, the environment
(`APERIODIC_*`, `DAGSTER_PG_*`, the store's credentials) and network access to Redis, Postgres and the store can
start one. Its Celery app is the instance's run launcher's own app, with dagster-celery's run tasks registered,
so launcher and workers agree on broker, backend, queues and task names by construction.

Runs execute in the worker's pool processes (`--concurrency` of them), which live across runs: a run pays no
interpreter start; each pool process imports the definitions and the instance's classes once, when it starts, and
opens the instance (its storage's connection pools) at its first run and keeps it for the next ones. There is no
time limit on a run. SIGTERM (or Ctrl-C) stops taking runs and exits when the current ones have finished; a worker
killed outright (kill -9, a lost machine) is noticed by the launcher's health check (it stops answering Celery's
ping), and run monitoring fails its runs so run retries re-run them elsewhere.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import socket
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from aperiodic_pipelines.domain.settings import ConfigError

if TYPE_CHECKING:
    from dagster import DagsterInstance
    from dagster._core.instance.ref import InstanceRef

DEFAULT_QUEUE = "dagster"  # dagster-celery's default queue, and deploy/celery/dagster.yaml's default_queue
DEFAULT_MAX_RUNS_PER_PROCESS = 100
POOL_PROCESS_START_TIMEOUT_S = 120
PRELOADED_DEFINITIONS = "aperiodic_pipelines.defs.definitions"
_log = logging.getLogger(__name__)
# This pool process's instance and the pid that opened it (`_pool_instance`).
_instance: tuple[int, DagsterInstance] | None = None


def add_worker_command(subparsers: Any) -> None:
    """Register `worker` on the CLI's sub-command parsers."""
    worker = subparsers.add_parser(
        "worker",
        help="start a Celery worker that executes whole runs for the instance in $DAGSTER_HOME (deploy/celery)",
    )
    worker.add_argument("--concurrency", type=int, default=1,
                        help="runs executed at once, one pool process each (default 1)")
    worker.add_argument("--queue", default=DEFAULT_QUEUE,
                        help=f"Celery queue to take runs from (default {DEFAULT_QUEUE}; a run's dagster-celery/queue "
                             "tag picks another)")
    worker.add_argument("--name", default=None,
                        help="Celery node name, unique in the deployment (default aperiodic-<pid>@<hostname>)")
    worker.add_argument("--max-runs-per-process", type=int, default=DEFAULT_MAX_RUNS_PER_PROCESS,
                        help="replace a pool process after this many runs, bounding memory growth "
                             f"(default {DEFAULT_MAX_RUNS_PER_PROCESS}; 0: never)")
    worker.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    worker.set_defaults(handler=run_worker)


def instance_ref() -> InstanceRef:
    """The reference of the instance in $DAGSTER_HOME (its dagster.yaml read and validated; nothing connects)."""
    from dagster._core.instance.ref import InstanceRef

    home = os.environ.get("DAGSTER_HOME")
    if not home:
        raise ConfigError(
            "DAGSTER_HOME is not set: a worker needs the deployment's instance, deploy/celery/dagster.yaml copied to "
            "$DAGSTER_HOME/dagster.yaml"
        )
    return InstanceRef.from_dir(home)


def worker_app(ref: InstanceRef | None = None) -> Any:
    """The Celery run launcher's app of the instance `ref` (default: $DAGSTER_HOME's), with dagster-celery's run
    tasks registered.

    Only the launcher is built from the instance's config: the worker needs no database to start (each run opens
    the instance itself), so an unreachable Postgres is reported by the runs, not as a start-up traceback.
    """
    from dagster_celery.launcher import CeleryRunLauncher

    launcher = (ref or instance_ref()).run_launcher
    if not isinstance(launcher, CeleryRunLauncher):
        raise ConfigError(
            f"the instance in {os.environ.get('DAGSTER_HOME')} launches runs with {type(launcher).__name__}; "
            "`worker` needs the Celery run launcher (deploy/celery/dagster.yaml)"
        )
    app = launcher.celery
    _register_run_tasks(app)
    return app


def _register_run_tasks(app: Any) -> None:
    """dagster-celery's two run tasks (same names, parameters and options, so its launcher and health check see no
    difference), each executing its run with this pool process's instance (`_pool_instance`) instead of opening a
    new one per run."""
    from dagster._cli.api import _execute_run_command_body, _resume_run_command_body
    from dagster._grpc.types import ExecuteRunArgs, ResumeRunArgs
    from dagster._serdes import unpack_value
    from dagster_celery.config import TASK_EXECUTE_JOB_NAME, TASK_RESUME_JOB_NAME

    # Celery keeps the first task registered under a name, and adds tasks created as shared (dagster-celery's
    # are) to every app: the registry (reading it finalizes the app) must not hold theirs when ours are added.
    for name in (TASK_EXECUTE_JOB_NAME, TASK_RESUME_JOB_NAME):
        if name in app.tasks:
            app.tasks.unregister(name)

    @app.task(bind=True, name=TASK_EXECUTE_JOB_NAME, track_started=True, shared=False)
    def execute_job(_task: Any, execute_job_args_packed: Any) -> int:
        args = unpack_value(execute_job_args_packed, as_type=ExecuteRunArgs)
        return _execute_run_command_body(instance=_pool_instance(), run_id=args.run_id, write_stream_fn=_discard,
                                         set_exit_code_on_failure=args.set_exit_code_on_failure is not False)

    @app.task(bind=True, name=TASK_RESUME_JOB_NAME, track_started=True, shared=False)
    def resume_job(_task: Any, resume_job_args_packed: Any) -> int:
        args = unpack_value(resume_job_args_packed, as_type=ResumeRunArgs)
        return _resume_run_command_body(instance=_pool_instance(), run_id=args.run_id, write_stream_fn=_discard,
                                        set_exit_code_on_failure=args.set_exit_code_on_failure is not False)


def _discard(_event: Any) -> None:
    """A run's events are in the instance's event log; nothing reads the task's stream."""


def _pool_instance() -> DagsterInstance:
    """The instance of $DAGSTER_HOME for this pool process, opened at its first run and kept for the next ones.

    dagster-celery's task opens and closes the instance for every run: reading and validating dagster.yaml,
    building the storages and their connection pools, and new PostgreSQL connections for the run's first queries
    (~35 ms of the worker's CPU and ~25 ms of PostgreSQL's a run, measured on this project's deploy/celery
    instance). Dagster's daemon and webserver keep one instance for their lifetime the same way. An instance is
    never used across a fork: a pool process opens its own (the worker's main process never opens one), and a
    changed dagster.yaml reaches the runs when pool processes are replaced (`--max-runs-per-process`).
    """
    global _instance
    from dagster import DagsterInstance

    if _instance is None or _instance[0] != os.getpid():
        _instance = (os.getpid(), DagsterInstance.get())
    return _instance[1]


def _prepare_pool_process(modules: Sequence[str], **_kwargs: Any) -> None:
    """In each pool process as it starts: import `modules` (`preloaded_modules`: the definitions and the
    instance's classes, e.g. its storage's SQLAlchemy and alembic: ~1 s), so that no run pays for them.

    Imported after the fork, not before: a process forked after polars or numba started their threads can
    deadlock. Nothing connects here (a worker starts without its database). A failure is logged here and reported
    again, with its traceback, by every run that needs the module.
    """
    import importlib

    for module in modules:
        try:
            importlib.import_module(module)
        except Exception:
            _log.exception("could not preload %s", module)


def preloaded_modules(ref: InstanceRef) -> list[str]:
    """The definitions' module and those of the classes the instance configures (storage, launcher, coordinator…)."""
    from dagster._serdes import ConfigurableClassData

    configured = {value.module_name for value in ref._asdict().values() if isinstance(value, ConfigurableClassData)}
    return [PRELOADED_DEFINITIONS, *sorted(configured)]


def share_cores_between_runs(concurrency: int) -> None:
    """Size each run's polars thread pool to its share of the cores: the cores this worker may use over its
    `concurrency` runs, at least 1 (an operator's own POLARS_MAX_THREADS is kept).

    polars sizes its pool to the cores. With a run per core or more (the advice: ~1.5 per core) a run's extra
    threads only take turns with the other runs', and handing work to them costs CPU the runs need. polars reads
    the variable when it is imported: set in the worker's main process (which never imports polars), it reaches
    the pool processes, which import polars after the fork (`_prepare_pool_process`).
    """
    preset = os.environ.get("POLARS_MAX_THREADS")
    if preset is not None:
        if not (preset.isdigit() and int(preset) > 0):  # polars would warn and use every core
            raise ConfigError(f"POLARS_MAX_THREADS must be a positive whole number of threads, got {preset!r}")
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    os.environ["POLARS_MAX_THREADS"] = str(max(1, cores // concurrency))


def run_worker(args: argparse.Namespace) -> int:
    """Start the worker in the foreground until it is stopped; its exit code."""
    if args.concurrency < 1:
        raise ConfigError(f"--concurrency must be at least 1, got {args.concurrency}")
    if args.max_runs_per_process < 0:
        raise ConfigError(f"--max-runs-per-process must be 0 or more, got {args.max_runs_per_process}")
    try:
        from celery.signals import worker_process_init
    except ImportError as error:
        raise ConfigError("`worker` needs dagster-celery: pip install 'aperiodic-pipelines[celery]'") from error

    ref = instance_ref()  # read once here, not again in every pool process
    share_cores_between_runs(args.concurrency)
    app = worker_app(ref)
    # Celery gives a new pool process 4 s to finish its start-up hooks; importing the definitions on a busy
    # machine can take longer.
    app.conf.worker_proc_alive_timeout = POOL_PROCESS_START_TIMEOUT_S
    worker_process_init.connect(functools.partial(_prepare_pool_process, preloaded_modules(ref)), weak=False)
    name = args.name or f"aperiodic-{os.getpid()}@{socket.gethostname()}"
    argv = [
        "worker",
        "--queues", args.queue,
        "--concurrency", str(args.concurrency),
        "--hostname", name,
        "--pool", "prefork",
        "--loglevel", args.log_level,
        # Start-up without waiting for other nodes; health checks use remote control (ping), not gossip.
        "--without-mingle", "--without-gossip",
    ]
    if args.max_runs_per_process:
        argv += ["--max-tasks-per-child", str(args.max_runs_per_process)]
    exit_code = app.start(argv)
    return int(exit_code or 0)
