"""dagster-celery's run launcher with a worker health check that notices a killed worker (deploy/celery).

Imported only through `aperiodic_pipelines.operator.launchers.HealthCheckedCeleryRunLauncher` (needs the
`celery` extra). Whole runs execute inside long-lived `aperiodic-pipelines worker` processes (Celery prefork
pool children), so a run pays no interpreter start.

dagster-celery's own check reads the task's state from the result backend; a worker killed with its pool (kill -9,
a lost machine) never updates it, so the task says STARTED for ever. Here a STARTED task's worker (named in the
task's STARTED record) must answer Celery's `ping`. Pings over Redis are lossy (celery/celery#2678) and a busy
machine answers late, so one silent check is only a suspicion: the worker is dead when it has stayed silent in
every check for at least `SILENT_FOR_S` (two consecutive monitoring polls). A broker that cannot be reached is not
a dead worker: that check reports RUNNING (transient) and monitoring asks again.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from dagster import Field, Noneable, StringSource
from dagster._core.launcher import CheckRunHealthResult, WorkerStatus
from dagster_celery.launcher import CeleryRunLauncher
from dagster_celery.tags import DAGSTER_CELERY_TASK_ID_TAG
from kombu.exceptions import OperationalError

from aperiodic_pipelines.domain.settings import Settings
from aperiodic_pipelines.operator.launchers import fail_run_status_first

if TYPE_CHECKING:
    from dagster import DagsterRun
    from dagster._serdes import ConfigurableClassData

PING_TIMEOUT_S = 2.0
PING_ATTEMPTS = 2
# Silence shorter than this is a suspicion, not a death: run monitoring polls every 10 s, so a dead worker is
# failed at the second silent check (detection <= 2 polls + pings).
SILENT_FOR_S = 8.0
# A worker fetches a task only when a pool process is free (Celery >= 5.6): a killed worker then takes no queued
# runs with it, and the runs a busy worker cannot start wait in the broker for the next free slot.
DEFAULT_CELERY_CONFIG: dict[str, Any] = {
    "worker_disable_prefetch": True,
    "worker_prefetch_multiplier": 1,
    # A task's STARTED record must outlive the longest run, or the check below cannot name its worker.
    "result_expires": 7 * 24 * 3600,
    "broker_connection_retry_on_startup": True,
}


def _unreachable_errors() -> tuple[type[BaseException], ...]:
    """Errors that mean the broker or backend could not be asked (not that the worker is gone)."""
    errors: tuple[type[BaseException], ...] = (OperationalError, OSError, TimeoutError)
    try:
        from redis.exceptions import RedisError
    except ImportError:
        return errors
    return (*errors, RedisError)


class HealthCheckedCeleryRunLauncher(CeleryRunLauncher):
    """`CeleryRunLauncher` with the broker and backend from `APERIODIC_CELERY_BROKER_URL` /
    `APERIODIC_CELERY_BACKEND_URL` (unless given in its config) and a ping-based worker health check."""

    def __init__(
        self,
        default_queue: str,
        broker: str | None = None,
        backend: str | None = None,
        include: list[str] | None = None,
        config_source: dict | None = None,
        inst_data: ConfigurableClassData | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        # Worker name -> when it was first found silent, since it last answered (one daemon, one launcher).
        self._silent_since: dict[str, float] = {}
        self._clock = clock
        if broker is None:
            # Through Settings, the one owner of APERIODIC_* variables; the URLs (passwords) never enter the
            # instance's config, so they are not in the instance ref passed on code servers' command lines.
            broker, default_backend = Settings.from_env().celery.require_broker()
            backend = backend or default_backend
        super().__init__(
            default_queue=default_queue,
            broker=broker,
            backend=backend,
            include=include,
            config_source={**DEFAULT_CELERY_CONFIG, **(config_source or {})},
            inst_data=inst_data,
        )

    @classmethod
    def config_type(cls) -> dict:
        config = dict(super().config_type())
        # dagster-celery defaults the backend to rpc://, which keeps no task state: the health check needs a
        # persistent backend, so an unset backend means APERIODIC_CELERY_BACKEND_URL (or the broker) instead.
        config["backend"] = Field(Noneable(StringSource), is_required=False, description="Celery result backend URL")
        return config

    @classmethod
    def from_config_value(cls, inst_data: ConfigurableClassData, config_value: Mapping[str, Any]) -> HealthCheckedCeleryRunLauncher:
        return cls(inst_data=inst_data, **config_value)

    def worker_answers(self, hostname: str) -> bool:
        """Whether the Celery worker `hostname` (its node name, e.g. aperiodic.123@host) answers a ping."""
        for _ in range(PING_ATTEMPTS):
            replies = self.celery.control.ping(destination=[hostname], timeout=PING_TIMEOUT_S)
            if any(hostname in reply for reply in replies or ()):
                return True
        return False

    def check_run_worker_health(self, run: DagsterRun) -> CheckRunHealthResult:
        task_id = run.tags.get(DAGSTER_CELERY_TASK_ID_TAG)
        if not task_id:
            return CheckRunHealthResult(WorkerStatus.UNKNOWN, "run has no Celery task id")
        try:
            result = self.celery.AsyncResult(task_id)
            state = result.state
            if state == "SUCCESS":
                return CheckRunHealthResult(WorkerStatus.SUCCESS)
            if state == "FAILURE":  # e.g. the pool process running it was killed (WorkerLostError)
                return fail_run_status_first(self, run, f"Celery task failed: {type(result.info).__name__}")
            if state != "STARTED":
                return CheckRunHealthResult(WorkerStatus.UNKNOWN, f"Celery task state {state}")
            info = result.info if isinstance(result.info, dict) else {}
            hostname = info.get("hostname")
            if not hostname:
                return CheckRunHealthResult(WorkerStatus.RUNNING, "Celery task started; worker not recorded")
            if self.worker_answers(hostname):
                self._silent_since.pop(hostname, None)
                return CheckRunHealthResult(WorkerStatus.RUNNING, run_worker_id=hostname)
        except _unreachable_errors() as error:  # the broker or backend unreachable: no evidence the worker died
            return CheckRunHealthResult(
                WorkerStatus.RUNNING, f"worker not checked: {type(error).__name__}", transient=True
            )
        now = self._clock()
        silent_for = now - self._silent_since.setdefault(hostname, now)
        if silent_for < SILENT_FOR_S:
            return CheckRunHealthResult(
                WorkerStatus.RUNNING, f"Celery worker {hostname} did not answer a ping; asked again at the next check",
                transient=True, run_worker_id=hostname,
            )
        return fail_run_status_first(
            self, run,
            f"Celery worker {hostname} does not answer a ping (silent in every check for {silent_for:.0f} s, "
            f"{PING_ATTEMPTS} tries of {PING_TIMEOUT_S:g} s each): it died with the run",
        )
