"""`aperiodic-pipelines worker`'s pool processes: dagster-celery's run tasks under their own names, one instance
kept per pool process across its runs (a forked process opens its own), and the instance's classes imported when
a pool process starts rather than in its first run. The runs themselves go through these tasks in
`test_celery_deploy.py` (two real workers, several runs each)."""

from __future__ import annotations

import inspect
import os
import select
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("dagster_celery")

from celery import Celery  # noqa: E402
from dagster_celery.config import TASK_EXECUTE_JOB_NAME, TASK_RESUME_JOB_NAME  # noqa: E402
from dagster_celery.tasks import create_execute_job_task, create_resume_job_task  # noqa: E402

from aperiodic_pipelines.domain.settings import ConfigError  # noqa: E402
from aperiodic_pipelines.operator import worker  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
UNUSED_BROKER = "redis://127.0.0.1:9/0"  # registering tasks and reading the instance connect to nothing
CHILD_DEADLINE_S = 60


def _home(tmp_path: Path, instance_file: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(instance_file, home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("APERIODIC_CELERY_BROKER_URL", UNUSED_BROKER)
    return home


def test_the_run_tasks_keep_dagster_celerys_names_and_options(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _home(tmp_path, REPO / "deploy" / "celery" / "dagster.yaml", monkeypatch)
    # dagster-celery's tasks first: Celery adds a shared task (theirs are) to every app finalized later, and a
    # worker's own tasks still take precedence on its app, as they do in `aperiodic-pipelines worker`.
    theirs = Celery("dagster-celery's own tasks", broker=UNUSED_BROKER, set_as_current=False)
    create_execute_job_task(theirs)
    create_resume_job_task(theirs)
    app = worker.worker_app()
    for name in (TASK_EXECUTE_JOB_NAME, TASK_RESUME_JOB_NAME):
        task = app.tasks[name]
        assert task.run.__module__ == worker.__name__, name  # ours, not dagster-celery's instance-per-run task
        # The launcher sends keyword arguments by dagster-celery's parameter names, and its health check reads the
        # STARTED record: the same parameters and options as dagster-celery's task.
        assert list(inspect.signature(task.run).parameters) == list(inspect.signature(theirs.tasks[name].run).parameters)
        assert (task.track_started, task.name) == (theirs.tasks[name].track_started, theirs.tasks[name].name) == (
            True, name)


def test_a_pool_process_keeps_its_instance_and_a_forked_one_opens_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _home(tmp_path, REPO / "dagster.yaml", monkeypatch)
    monkeypatch.setattr(worker, "_instance", None)
    first = worker._pool_instance()
    try:
        assert worker._pool_instance() is first
        read, write = os.pipe()
        child = os.fork()
        if child == 0:  # the child answers through the pipe and leaves without running pytest's teardown
            try:
                os.write(write, b"own" if worker._pool_instance() is not first else b"shared")
            finally:
                os._exit(0)
        os.close(write)
        # A forked child of a threaded process could hang (a lock held at the fork): it gets a deadline.
        ready, _, _ = select.select([read], [], [], CHILD_DEADLINE_S)
        if not ready:
            os.kill(child, signal.SIGKILL)
        answer = os.read(read, 16) if ready else b"no answer within the deadline"
        os.waitpid(child, 0)
        os.close(read)
        assert answer == b"own"
        assert worker._pool_instance() is first  # the parent's is unchanged
    finally:
        first.dispose()


def test_a_pool_process_imports_the_instance_storage_before_its_first_run(tmp_path: Path) -> None:
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "deploy" / "celery" / "dagster.yaml", home / "dagster.yaml")
    probe = (
        "import sys\n"
        "from aperiodic_pipelines.operator import worker\n"
        "modules = worker.preloaded_modules(worker.instance_ref())\n"
        "print(modules)\n"
        "before = {m for m in ('sqlalchemy', 'alembic', 'dagster_postgres') if m in sys.modules}\n"
        "worker._prepare_pool_process(modules)\n"
        "after = {m for m in ('sqlalchemy', 'alembic', 'dagster_postgres') if m in sys.modules}\n"
        "print(sorted(before), sorted(after), worker._instance is None)\n"
    )
    env = {**os.environ, "DAGSTER_HOME": str(home), "APERIODIC_CELERY_BROKER_URL": UNUSED_BROKER,
           "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    modules, imported = done.stdout.strip().splitlines()[-2:]
    assert "aperiodic_pipelines.defs.definitions" in modules
    assert "aperiodic_pipelines.operator.pg_storage" in modules
    assert "aperiodic_pipelines.operator.launchers" in modules
    # The preload brings the storage's libraries (in the first run before) and opens no instance.
    assert imported == "[] ['alembic', 'dagster_postgres', 'sqlalchemy'] True", imported


@pytest.mark.parametrize("concurrency, preset, expected", [
    ("cores", None, 1),  # a run per core: one thread each
    ("twice the cores", None, 1),
    (1, None, "cores"),  # one run has the cores
    ("twice the cores", "3", 3),  # the operator's setting is kept
])
def test_a_pool_process_sizes_polars_to_its_share_of_the_cores(
    tmp_path: Path, concurrency: int | str, preset: str | None, expected: int | str
) -> None:
    cores = len(os.sched_getaffinity(0))
    concurrency = {"cores": cores, "twice the cores": 2 * cores}.get(concurrency, concurrency)
    expected = cores if expected == "cores" else expected
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "deploy" / "celery" / "dagster.yaml", home / "dagster.yaml")
    # The worker's main process up to Celery's start, then a pool process: forked, its start-up hook run. polars
    # reads the variable when it is imported, so the main process must not have imported it.
    probe = (
        "import os, sys\n"
        "from aperiodic_pipelines.operator import worker\n"
        "ref = worker.instance_ref()\n"
        "worker.share_cores_between_runs(int(sys.argv[1]))\n"
        "worker.worker_app(ref)\n"
        "modules = worker.preloaded_modules(ref)\n"
        "assert 'polars' not in sys.modules, 'the main process imported polars before its pool processes'\n"
        "child = os.fork()\n"
        "if child == 0:\n"
        "    worker._prepare_pool_process(modules)\n"
        "    import polars\n"
        "    print(polars.thread_pool_size(), flush=True)\n"
        "    os._exit(0)\n"
        "os.waitpid(child, 0)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "POLARS_MAX_THREADS"}
    env.update({"DAGSTER_HOME": str(home), "APERIODIC_CELERY_BROKER_URL": UNUSED_BROKER, "PYTHONPATH": str(REPO),
                **({"POLARS_MAX_THREADS": preset} if preset else {})})
    done = subprocess.run([sys.executable, "-c", probe, str(concurrency)], env=env, capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == [str(expected)]


@pytest.mark.parametrize("preset", ["abc", "0", "-2", "", " 3"])
def test_a_worker_refuses_a_polars_thread_count_that_is_not_a_count(
    preset: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POLARS_MAX_THREADS", preset)
    with pytest.raises(ConfigError, match="POLARS_MAX_THREADS must be a positive whole number"):
        worker.share_cores_between_runs(2)
