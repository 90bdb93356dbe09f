"""The Celery launcher's worker health check against a real Redis (no worker needed): a STARTED task whose worker
stays silent in every check for SILENT_FOR_S is a dead worker (one silent check is not); finished tasks keep Celery's verdict; an unreachable broker is not a
verdict at all."""

from __future__ import annotations

import importlib
import time
from pathlib import Path

import pytest

pytest.importorskip("dagster_celery")

from dagster import DagsterInstance  # noqa: E402
from dagster._core.launcher import WorkerStatus  # noqa: E402
from dagster._core.test_utils import create_run_for_test  # noqa: E402
from dagster_celery.launcher import CeleryRunLauncher  # noqa: E402
from dagster_celery.tags import DAGSTER_CELERY_TASK_ID_TAG  # noqa: E402

from aperiodic_pipelines.domain.settings import ConfigError  # noqa: E402
from aperiodic_pipelines.operator.celery_launcher import SILENT_FOR_S  # noqa: E402
from aperiodic_pipelines.operator.launchers import HealthCheckedCeleryRunLauncher  # noqa: E402
from tests.redis_fixtures import running_redis  # noqa: E402


def test_a_started_task_whose_worker_is_silent_is_a_dead_worker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with running_redis() as server, DagsterInstance.ephemeral(tempdir=str(tmp_path)) as instance:
        monkeypatch.setenv("APERIODIC_CELERY_BROKER_URL", server.url(0))
        monkeypatch.setenv("APERIODIC_CELERY_BACKEND_URL", server.url(1))
        now = [1000.0]
        launcher = HealthCheckedCeleryRunLauncher(default_queue="dagster", clock=lambda: now[0])
        launcher.register_instance(instance)
        assert server.password not in repr(launcher.celery.conf.humanize(with_defaults=False, censored=True))
        backend = launcher.celery.backend

        def run_with_task(task_id: str, state: str, info: object):
            backend.store_result(task_id, info, state)
            return create_run_for_test(instance, job_name="j", tags={DAGSTER_CELERY_TASK_ID_TAG: task_id})

        started = run_with_task("t-started", "STARTED", {"pid": 4242, "hostname": "ghost@nowhere"})
        # What dagster-celery's own check says of it: the task state only, so RUNNING for ever.
        stock = CeleryRunLauncher(default_queue="dagster", broker=server.url(0), backend=server.url(1))
        stock.register_instance(instance)
        assert stock.check_run_worker_health(started).status == WorkerStatus.RUNNING
        # One silent check is a suspicion (pings over Redis are lossy, a busy machine answers late) ...
        began = time.monotonic()
        verdict = launcher.check_run_worker_health(started)
        assert verdict.status == WorkerStatus.RUNNING and verdict.transient, verdict
        assert "ghost@nowhere did not answer a ping" in verdict.msg
        assert time.monotonic() - began < 15, "two pings of 2 s, not an open-ended wait"
        now[0] += SILENT_FOR_S - 1
        assert launcher.check_run_worker_health(started).status == WorkerStatus.RUNNING
        # ... silence in every check for SILENT_FOR_S is a dead worker.
        now[0] += 1
        verdict = launcher.check_run_worker_health(started)
        assert verdict.status == WorkerStatus.FAILED, verdict
        assert "ghost@nowhere does not answer a ping" in verdict.msg

        assert launcher.check_run_worker_health(run_with_task("t-done", "SUCCESS", 0)).status == WorkerStatus.SUCCESS
        lost = run_with_task("t-lost", "FAILURE", RuntimeError("Worker exited prematurely: signal 9 (SIGKILL)"))
        assert launcher.check_run_worker_health(lost).status == WorkerStatus.FAILED

    # Redis is gone: not evidence that any worker died.
    verdict = launcher.check_run_worker_health(started)
    assert verdict.status == WorkerStatus.RUNNING and verdict.transient, verdict


def test_without_a_broker_the_launcher_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("APERIODIC_CELERY_BROKER_URL", raising=False)
    with pytest.raises(ConfigError, match="APERIODIC_CELERY_BROKER_URL"):
        HealthCheckedCeleryRunLauncher(default_queue="dagster")


def test_the_celery_instance_differs_from_the_postgres_one_only_where_it_must() -> None:
    import yaml

    repo = Path(__file__).resolve().parents[1]
    celery = yaml.safe_load((repo / "deploy" / "celery" / "dagster.yaml").read_text())
    postgres = yaml.safe_load((repo / "dagster.postgres.yaml").read_text())
    for section in ("storage", "run_coordinator", "run_retries", "retention", "telemetry"):
        assert celery[section] == postgres[section], section
    assert celery["concurrency"]["pools"] == postgres["concurrency"]["pools"]
    assert celery["concurrency"]["runs"]["tag_concurrency_limits"] == postgres["concurrency"]["runs"]["tag_concurrency_limits"]
    assert celery["run_launcher"] == {
        "module": "aperiodic_pipelines.operator.launchers", "class": "HealthCheckedCeleryRunLauncher",
        "config": {"default_queue": "dagster"},
    }
    # Steps' stdout/stderr are not captured into files on a worker's disk (four processes a run to mirror them,
    # and no other machine's UI could show them): they go to the worker's own output.
    assert celery["compute_logs"] == {"module": "dagster._core.storage.noop_compute_log_manager",
                                      "class": "NoOpComputeLogManager"}
    assert "compute_logs" not in postgres  # one machine: Dagster's default, which its UI shows
    assert getattr(importlib.import_module(celery["compute_logs"]["module"]), celery["compute_logs"]["class"])
    # Never resumed in place (dagster-celery's resume task cannot be called by its launcher): retried instead.
    assert celery["run_monitoring"]["max_resume_run_attempts"] == 0
    assert celery["run_monitoring"]["poll_interval_seconds"] == postgres["run_monitoring"]["poll_interval_seconds"]


@pytest.mark.parametrize("resume_attempts", [0, 1])
def test_a_dead_worker_fails_its_run_unless_monitoring_may_resume_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, resume_attempts: int
) -> None:
    """Found dead, the run is failed by the launcher, status first; with `max_resume_run_attempts` left the
    verdict alone goes to the monitoring daemon, which resumes the run instead (CeleryRunLauncher can)."""
    from dagster import DagsterRunStatus
    from dagster._core.test_utils import instance_for_test

    with running_redis() as server:
        monkeypatch.setenv("APERIODIC_CELERY_BROKER_URL", server.url(0))
        monkeypatch.setenv("APERIODIC_CELERY_BACKEND_URL", server.url(1))
        overrides = {
            "run_launcher": {"module": "aperiodic_pipelines.operator.launchers",
                             "class": "HealthCheckedCeleryRunLauncher", "config": {"default_queue": "dagster"}},
            "run_monitoring": {"enabled": True, "max_resume_run_attempts": resume_attempts},
        }
        with instance_for_test(overrides=overrides, temp_dir=str(tmp_path)) as instance:
            launcher = instance.run_launcher
            assert isinstance(launcher, HealthCheckedCeleryRunLauncher)
            launcher.celery.backend.store_result("t-lost", RuntimeError("Worker exited prematurely: signal 9"),
                                                 "FAILURE")
            lost = create_run_for_test(instance, job_name="j", status=DagsterRunStatus.STARTED,
                                       tags={DAGSTER_CELERY_TASK_ID_TAG: "t-lost"})
            assert launcher.check_run_worker_health(lost).status == WorkerStatus.FAILED
            expected = DagsterRunStatus.FAILURE if resume_attempts == 0 else DagsterRunStatus.STARTED
            assert instance.get_run_by_id(lost.run_id).status == expected
