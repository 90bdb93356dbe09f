"""What happened in a run, in a few short lines: the failing step's own error, failed checks, the assets' metadata.

Read from the run's events in the instance (public Dagster API only). Lines are cut to `MAX_LINE` characters and
long lists summarised, so a failure reads in a terminal or an alert.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dagster import DagsterInstance

MAX_LINE = 400  # characters of one printed line


def shorten(text: str, limit: int = MAX_LINE) -> str:
    """One line of at most `limit` characters; a long comma-separated list keeps its first items and a count."""
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    items = text.split(", ")
    if len(items) > 4:
        kept: list[str] = []
        for item in items:
            if sum(len(k) + 2 for k in kept) + len(item) > limit - 30:
                break
            kept.append(item)
        if kept:
            return f"{', '.join(kept)}, … (+{len(items) - len(kept)} more)"
    return text[: limit - 1] + "…"


def _records(instance: DagsterInstance, run_id: str, *types: Any) -> list[Any]:
    return [r.event_log_entry for r in instance.get_records_for_run(run_id, of_type=set(types)).records]


def failed_checks(instance: DagsterInstance, run_id: str, *, limit: int = MAX_LINE) -> list[str]:
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
        text = shorten("; ".join(details), limit)
        lines.append(
            f"check {evaluation.check_name} on {evaluation.asset_key.to_user_string()} "
            f"failed ({evaluation.severity.value}){': ' + text if text else ''}"
        )
    return lines


def step_error(error: Any) -> str:
    """The error a failed step ends with: the step's own exception when a retry policy gave up on it (Dagster's
    message is then only "Exceeded max_retries of N"), with the cause chain after it."""
    if error is None:
        return "unknown error"
    messages = []
    while error is not None:
        messages.append(error.message.strip())
        error = error.cause
    if len(messages) > 1 and messages[0].startswith("Exceeded max_retries"):
        return shorten(f"{'; caused by: '.join(messages[1:])} (gave up: {messages[0].lower()})")
    return shorten("; caused by: ".join(messages))


def describe_failure(instance: DagsterInstance, run_id: str) -> list[str]:
    """One line per failed step (step key and the error it ended with), the failed checks, or the run's own
    failure."""
    from dagster import DagsterEventType

    lines = [
        f"step {entry.dagster_event.step_key} failed: {step_error(entry.dagster_event.step_failure_data.error)}"
        for entry in _records(instance, run_id, DagsterEventType.STEP_FAILURE)
    ]
    lines.extend(failed_checks(instance, run_id))
    if not lines:
        for entry in _records(instance, run_id, DagsterEventType.RUN_FAILURE, DagsterEventType.ENGINE_EVENT):
            if entry.dagster_event.event_type == DagsterEventType.RUN_FAILURE or "error" in entry.message.lower():
                lines.append(shorten(entry.message))
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


