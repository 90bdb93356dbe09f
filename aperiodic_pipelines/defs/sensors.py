"""Alerts: failed data-quality checks, failed runs and overdue months, as Slack-compatible `{"text": ...}` posts.

Open-source Dagster has no alert policies, so sensors do it:
- `check_failure_alert_on_{success,failure}`: the run's failed `ASSET_CHECK_EVALUATION`s of either severity
  (ERROR or WARN), one message per run (a failed blocking check fails the run; a non-blocking one, such as
  `complete_month`, fails in a successful run);
- `run_failure_alert`: runs that failed for any other reason (network, bad archive, bug). Runs whose failure
  is explained by failed ERROR checks are left to the check alert, so one incident gives one message;
- `overdue_months`: hourly, every registered instrument whose last due month is not in the published index
  (see `freshness.py`), once per instrument-month.
The webhook is `APERIODIC_ALERT_WEBHOOK_URL` (a secret: never logged); when unset the message is only logged.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass

import requests
from dagster import (
    DagsterEventType,
    DagsterInstance,
    DagsterLogManager,
    DagsterRun,
    DagsterRunStatus,
    DefaultSensorStatus,
    RunFailureSensorContext,
    RunStatusSensorContext,
    SensorDefinition,
    SkipReason,
    run_failure_sensor,
    run_status_sensor,
)

from aperiodic_pipelines.defs.checks import FAILED_RULE

WEBHOOK_ENV = "APERIODIC_ALERT_WEBHOOK_URL"
DAGSTER_URL_ENV = "APERIODIC_DAGSTER_URL"
DEFAULT_DAGSTER_URL = "http://127.0.0.1:3000"
WEBHOOK_TIMEOUT_SECONDS = 10
MAX_RULE_CHARS = 300  # keep chat messages short; the run page has the rest
# Runs from every code location of the instance (this platform is normally the only one; runs started with
# `execute_in_process` in scripts carry no code-location origin and are seen only with this setting).
MONITOR_ALL_RUNS = True


@dataclass(frozen=True)
class FailedCheck:
    asset: str
    check: str
    partition: str | None
    rule: str
    severity: str = "ERROR"


def run_url(run_id: str) -> str:
    base = (os.environ.get(DAGSTER_URL_ENV) or DEFAULT_DAGSTER_URL).rstrip("/")
    return f"{base}/runs/{run_id}"


def failed_checks(instance: DagsterInstance, run_id: str) -> list[FailedCheck]:
    """The run's failed asset-check evaluations, in the order they were recorded."""
    records = instance.get_records_for_run(run_id, of_type={DagsterEventType.ASSET_CHECK_EVALUATION}).records
    failed = []
    for record in records:
        event = record.event_log_entry.dagster_event
        evaluation = event.event_specific_data if event else None
        if evaluation is None or evaluation.passed:
            continue
        rule_value = evaluation.metadata.get(FAILED_RULE)
        rule = str(getattr(rule_value, "value", rule_value) or evaluation.description or "check failed")
        failed.append(
            FailedCheck(
                asset=evaluation.asset_key.to_user_string(),
                check=evaluation.check_name,
                partition=evaluation.partition,
                rule=rule if len(rule) <= MAX_RULE_CHARS else rule[: MAX_RULE_CHARS - 1] + "…",
                severity=evaluation.severity.value,
            )
        )
    return failed


def _partition_of(run: DagsterRun) -> str:
    return run.tags.get("dagster/partition") or "-"


def check_failure_message(run: DagsterRun, checks: Sequence[FailedCheck]) -> str:
    lines = [f"Data-quality check failed ({len(checks)}) in run {run.run_id[:8]}: {run_url(run.run_id)}"]
    for check in checks:
        lines.append(
            f"• {check.asset} [{check.partition or _partition_of(run)}] {check.check} ({check.severity}): {check.rule}"
        )
    return "\n".join(lines)


def run_failure_message(run: DagsterRun, error: str) -> str:
    first_line = (error or "unknown error").strip().splitlines()[0][:MAX_RULE_CHARS]
    return (
        f"Run failed: {run.job_name} [{_partition_of(run)}]: {first_line}\n"
        f"{run_url(run.run_id)}"
    )


def send_alert(text: str, log: logging.Logger | DagsterLogManager) -> bool:
    """POST `{"text": text}` to the webhook; log only when none is configured. Returns whether it was posted."""
    url = os.environ.get(WEBHOOK_ENV)
    if not url:
        log.warning(f"alert (no {WEBHOOK_ENV} set): {text}")
        return False
    try:
        response = requests.post(url, json={"text": text}, timeout=WEBHOOK_TIMEOUT_SECONDS)
    except requests.RequestException as exc:
        # requests puts the URL (and so the token) in its messages: report the variable and the kind of error.
        raise RuntimeError(f"alert webhook ({WEBHOOK_ENV}) unreachable: {type(exc).__name__}") from None
    if response.status_code >= 300:
        # The URL holds a token: name the variable, not its value.
        raise RuntimeError(f"alert webhook ({WEBHOOK_ENV}) answered HTTP {response.status_code}")
    log.info(f"alert posted: {text.splitlines()[0]}")
    return True


def _alert_failed_checks(context: RunStatusSensorContext) -> SkipReason | None:
    checks = failed_checks(context.instance, context.dagster_run.run_id)
    if not checks:
        return SkipReason(f"run {context.dagster_run.run_id}: no failed checks")
    send_alert(check_failure_message(context.dagster_run, checks), context.log)
    return None


def _check_alert_sensor(status: DagsterRunStatus) -> SensorDefinition:
    @run_status_sensor(
        run_status=status,
        name=f"check_failure_alert_on_{status.value.lower()}",
        default_status=DefaultSensorStatus.RUNNING,
        monitor_all_code_locations=MONITOR_ALL_RUNS,
        description=f"Posts failed data-quality checks of {status.value.lower()} runs to {WEBHOOK_ENV}.",
    )
    def check_alert(context: RunStatusSensorContext):
        return _alert_failed_checks(context)

    return check_alert


check_failure_alert_on_success = _check_alert_sensor(DagsterRunStatus.SUCCESS)
check_failure_alert_on_failure = _check_alert_sensor(DagsterRunStatus.FAILURE)


@run_failure_sensor(
    name="run_failure_alert",
    default_status=DefaultSensorStatus.RUNNING,
    monitor_all_code_locations=MONITOR_ALL_RUNS,
    description=f"Posts failed runs (other than failed checks) to {WEBHOOK_ENV}.",
)
def run_failure_alert(context: RunFailureSensorContext):
    if any(c.severity == "ERROR" for c in failed_checks(context.instance, context.dagster_run.run_id)):
        return SkipReason("failure explained by failed checks; reported by check_failure_alert_on_failure")
    error = context.failure_event.message or ""
    step_failures = context.get_step_failure_events()
    if step_failures and step_failures[0].step_failure_data.error:
        failure = step_failures[0]
        error = f"step {failure.step_key}: {failure.step_failure_data.error.message}"
    send_alert(run_failure_message(context.dagster_run, error), context.log)
    return None


SENSORS = [check_failure_alert_on_success, check_failure_alert_on_failure, run_failure_alert]
