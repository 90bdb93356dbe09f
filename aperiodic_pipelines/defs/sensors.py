"""Alerts: failed data-quality checks, failed runs and overdue months, as Slack-compatible `{"text": ...}` posts.

Open-source Dagster has no alert policies, so sensors do it:
- `check_failure_alert_on_{success,failure}`: the run's failed `ASSET_CHECK_EVALUATION`s of either severity
  (ERROR or WARN), one message per run (a failed blocking check fails the run; a non-blocking one, such as
  `complete_month`, fails in a successful run);
- `run_failure_alert`: runs that failed for any other reason (network, bad archive, bug). Runs whose failure
  is explained by failed ERROR checks are left to the check alert, so one incident gives one message;
- `overdue_days` (freshness.py): the open month's overdue days per instrument; the daily runs' failed
  `days_on_time` checks are left to it;
- `overdue_months`: hourly, every registered instrument whose last due month is not in the published index
  (see `freshness.py`), once per instrument-month.
The webhook is `settings.alerts.webhook_url` (`APERIODIC_ALERT_WEBHOOK_URL`, a secret: never logged); when unset
the message is only logged. A failed run's message carries its failing step's error: the innermost cause's first
line (not Dagster's "Exceeded max_retries of 3"), at most 300 characters, with URL credentials, query strings and
known secrets cut out. `definitions.py` builds the sensors from its settings (`build_alert_sensors`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

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
from aperiodic_pipelines.defs.summaries import summarise
from aperiodic_pipelines.domain.settings import AlertSettings


class ErrorInfo(Protocol):
    """What a step failure's error record (Dagster's `SerializableErrorInfo`) offers: read, never imported."""

    message: str
    cls_name: str | None
    cause: ErrorInfo | None

WEBHOOK_VARIABLE = "APERIODIC_ALERT_WEBHOOK_URL"  # named in messages; its value (a secret) never is
DEFAULT_DAGSTER_URL = AlertSettings().dagster_url
WEBHOOK_TIMEOUT_SECONDS = 10
MAX_RULE_CHARS = 300
# Checks whose failures another sensor posts: `days_on_time` (defs/daily.py) by `overdue_days`, once per
# instrument and due day, rather than after every morning's run.
REPORTED_ELSEWHERE = frozenset({"days_on_time"})  # keep chat messages short; the run page has the rest
# Runs from every code location of the instance (this platform is normally the only one; runs started with
# `execute_in_process` in scripts carry no code-location origin and are seen only with this setting).
MONITOR_ALL_RUNS = True

# A URL's credentials (`user:pass@`) and query string (tokens, signatures) are cut from error text in alerts.
_URL = re.compile(r"\b([a-z][a-z0-9+.-]*://)(?:[^/\s@]*@)?([^\s?#'\"]*)(?:[?#][^\s'\"]*)?", re.IGNORECASE)


@dataclass(frozen=True)
class FailedCheck:
    asset: str
    check: str
    partition: str | None
    rule: str
    severity: str = "ERROR"


def run_url(run_id: str, dagster_url: str = DEFAULT_DAGSTER_URL) -> str:
    return f"{dagster_url.rstrip('/')}/runs/{run_id}"


def redact(text: str, secrets: Sequence[str | None] = ()) -> str:
    """`text` without URL credentials and query strings, and without any of `secrets` (known secret values)."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return _URL.sub(r"\1\2", text)


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
                rule=summarise(rule, limit=MAX_RULE_CHARS),
                severity=evaluation.severity.value,
            )
        )
    return failed


def _partition_of(run: DagsterRun) -> str:
    return run.tags.get("dagster/partition") or "-"


def check_failure_message(
    run: DagsterRun, checks: Sequence[FailedCheck], dagster_url: str = DEFAULT_DAGSTER_URL
) -> str:
    lines = [f"Data-quality check failed ({len(checks)}) in run {run.run_id[:8]}: {run_url(run.run_id, dagster_url)}"]
    for check in checks:
        lines.append(
            f"• {check.asset} [{check.partition or _partition_of(run)}] {check.check} ({check.severity}): {check.rule}"
        )
    return "\n".join(lines)


def error_cause(error: ErrorInfo | None) -> str:
    """The first line of the innermost cause of a step's error: what went wrong, not how Dagster wrapped it
    ("Exceeded max_retries of 3", "Error occurred while executing op …"). The exception class is kept without its
    module (`NotPublishedError: …`)."""
    if error is None:
        return ""
    while error.cause is not None:
        error = error.cause
    lines = (error.message or "").strip().splitlines()
    first = summarise(lines[0], limit=10 * MAX_RULE_CHARS) if lines else ""  # lists summarised; bounded later
    # SerializableErrorInfo messages read `package.module.ClassName: text`.
    qualified, sep, rest = first.partition(": ")
    if sep and re.fullmatch(r"[\w.]+", qualified):
        first = f"{qualified.rsplit('.', 1)[-1]}: {rest}"
    return first or (error.cls_name or "")


def run_failure_message(
    run: DagsterRun, error: str, dagster_url: str = DEFAULT_DAGSTER_URL, secrets: Sequence[str | None] = ()
) -> str:
    lines = (error or "unknown error").strip().splitlines() or ["unknown error"]
    return (
        f"Run failed: {run.job_name} [{_partition_of(run)}]: {summarise(redact(lines[0], secrets), MAX_RULE_CHARS)}\n"
        f"{run_url(run.run_id, dagster_url)}"
    )


def send_alert(text: str, log: logging.Logger | DagsterLogManager, webhook_url: str | None = None) -> bool:
    """POST `{"text": text}` to the webhook; log only when none is configured. Returns whether it was posted."""
    if not webhook_url:
        log.warning(f"alert (no {WEBHOOK_VARIABLE} set): {text}")
        return False
    try:
        response = requests.post(webhook_url, json={"text": text}, timeout=WEBHOOK_TIMEOUT_SECONDS)
    except requests.RequestException as exc:
        # requests puts the URL (and so the token) in its messages: report the variable and the kind of error.
        raise RuntimeError(f"alert webhook ({WEBHOOK_VARIABLE}) unreachable: {type(exc).__name__}") from None
    if response.status_code >= 300:
        # The URL holds a token: name the variable, not its value.
        raise RuntimeError(f"alert webhook ({WEBHOOK_VARIABLE}) answered HTTP {response.status_code}")
    log.info(f"alert posted: {text.splitlines()[0]}")
    return True


def build_alert_sensors(
    alerts: AlertSettings, secrets: Sequence[str | None] = ()
) -> tuple[SensorDefinition, SensorDefinition, SensorDefinition]:
    """`check_failure_alert_on_success`, `check_failure_alert_on_failure` and `run_failure_alert`, posting to
    `alerts.webhook_url` with run links under `alerts.dagster_url`. `secrets` are cut from error text."""

    def alert_failed_checks(context: RunStatusSensorContext) -> SkipReason | None:
        checks = [c for c in failed_checks(context.instance, context.dagster_run.run_id)
                  if c.check not in REPORTED_ELSEWHERE]
        if not checks:
            return SkipReason(f"run {context.dagster_run.run_id}: no failed checks")
        send_alert(check_failure_message(context.dagster_run, checks, alerts.dagster_url), context.log,
                   alerts.webhook_url)
        return None

    def check_alert_sensor(status: DagsterRunStatus) -> SensorDefinition:
        @run_status_sensor(
            run_status=status,
            name=f"check_failure_alert_on_{status.value.lower()}",
            default_status=DefaultSensorStatus.RUNNING,
            monitor_all_code_locations=MONITOR_ALL_RUNS,
            description=f"Posts failed data-quality checks of {status.value.lower()} runs to {WEBHOOK_VARIABLE}.",
        )
        def check_alert(context: RunStatusSensorContext):
            return alert_failed_checks(context)

        return check_alert

    @run_failure_sensor(
        name="run_failure_alert",
        default_status=DefaultSensorStatus.RUNNING,
        monitor_all_code_locations=MONITOR_ALL_RUNS,
        description=f"Posts failed runs (other than failed checks) to {WEBHOOK_VARIABLE}, with the failing step's "
        "error.",
    )
    def run_failure_alert(context: RunFailureSensorContext):
        if any(c.severity == "ERROR" for c in failed_checks(context.instance, context.dagster_run.run_id)):
            return SkipReason("failure explained by failed checks; reported by check_failure_alert_on_failure")
        error = context.failure_event.message or ""
        step_failures = context.get_step_failure_events()
        if step_failures and (cause := error_cause(step_failures[0].step_failure_data.error)):
            error = f"step {step_failures[0].step_key}: {cause}"
        message = run_failure_message(context.dagster_run, error, alerts.dagster_url,
                                      (alerts.webhook_url, *secrets))
        send_alert(message, context.log, alerts.webhook_url)
        return None

    return (
        check_alert_sensor(DagsterRunStatus.SUCCESS),
        check_alert_sensor(DagsterRunStatus.FAILURE),
        run_failure_alert,
    )
