"""Blocking data-quality checks on staged flow bars, one check per concern.

The checks run inside the `flow_bars_*` step on the frames it has just computed (the month's bars are large;
reading them back in three separate check steps would triple the IO). They are declared as blocking
`AssetCheckSpec`s, so a failure fails the step and `published_flow_bars` does not run: bad data stays in
`staging/` and the previously published month stays in place.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import polars as pl
from dagster import AssetCheckResult, AssetCheckSeverity, AssetCheckSpec, AssetKey, PartitionsDefinition

from aperiodic_pipelines.domain.errors import InvalidBarsError
from aperiodic_pipelines.flow import FLOW_COLUMNS, INTERVAL_SECONDS, bars_in_month, month_bounds_us

FAILED_RULE = "failed_rule"  # metadata key the alert sensor quotes


@dataclass(frozen=True)
class CheckOutcome:
    passed: bool
    failed_rule: str = ""  # one line: which interval, which rule, a sample
    detail: Mapping[str, str | int] | None = None


def check_schema_and_invariants(bars: Mapping[str, pl.DataFrame], month: str) -> CheckOutcome:
    """pandera schema + spec §2 invariants of every interval, via the flow engine's `validate_month_bars`.

    pandera sees the bars with trades of all intervals in one pass; empty bars are proven to be the constant
    empty row by one vectorised pass per interval (see `aperiodic_pipelines.flow.schema`).
    """
    from aperiodic_pipelines.flow import validate_month_bars  # the engine owns the rules

    try:
        validate_month_bars(bars, month=month)
    except InvalidBarsError as exc:
        return CheckOutcome(False, str(exc))
    return CheckOutcome(True, detail={"intervals": ",".join(bars)})


def check_dense_grid(bars: Mapping[str, pl.DataFrame], month: str) -> CheckOutcome:
    """One row per bar of the month, from the month's first instant, evenly spaced, columns in spec order."""
    month_start_us, _ = month_bounds_us(month)
    rows: dict[str, int] = {}
    for interval, frame in bars.items():
        expected = bars_in_month(month, interval)
        if tuple(frame.columns) != FLOW_COLUMNS:
            return CheckOutcome(False, f"{interval}: columns differ from spec §2 order (got {frame.columns[:3]}…)")
        if frame.height != expected:
            return CheckOutcome(False, f"{interval}: {frame.height} rows, expected {expected} for {month}")
        step = INTERVAL_SECONDS[interval] * 1_000_000
        times = pl.col("time").dt.epoch("us")
        nulls, first, evenly_spaced = frame.select(
            times.null_count().alias("nulls"), times.first().alias("first"),
            (times.diff().fill_null(step) == step).all().alias("evenly_spaced"),
        ).row(0)
        if nulls:
            return CheckOutcome(False, f"{interval}: {nulls} null bar times")
        if first != month_start_us:
            return CheckOutcome(False, f"{interval}: first bar at {frame['time'][0]}, expected the month's start")
        if not evenly_spaced:
            gaps = frame.filter(times.diff().fill_null(step) != step)
            return CheckOutcome(False, f"{interval}: bars not {interval} apart at {gaps['time'].head(3).to_list()}")
        rows[interval] = frame.height
    return CheckOutcome(True, detail=rows)


def check_nonempty_month(bars: Mapping[str, pl.DataFrame], month: str) -> CheckOutcome:
    """The month holds at least one trade: an empty month means a missing or truncated archive."""
    coarsest = bars[list(bars)[-1]]
    trades = int(coarsest.select(pl.col("taker_buy_count").sum() + pl.col("taker_sell_count").sum()).item() or 0)
    if trades == 0:
        return CheckOutcome(False, f"no trades in {month}: the source month is empty or truncated")
    return CheckOutcome(True, detail={"trades": trades})


BAR_CHECKS: dict[str, tuple[Callable[[Mapping[str, pl.DataFrame], str], CheckOutcome], str]] = {
    "schema_and_invariants": (
        check_schema_and_invariants,
        "pandera schema (dtypes, nulls, ranges) and spec §2 invariants for all 8 intervals",
    ),
    "dense_grid": (check_dense_grid, "one row per bar of the month at every interval, evenly spaced"),
    "nonempty_month": (check_nonempty_month, "at least one trade in the month"),
}


def bar_check_specs(asset_key: AssetKey, partitions_def: PartitionsDefinition) -> list[AssetCheckSpec]:
    """The blocking per-partition checks of one staged flow-bars asset."""
    return [
        AssetCheckSpec(name, asset=asset_key, description=description, blocking=True, partitions_def=partitions_def)
        for name, (_, description) in BAR_CHECKS.items()
    ]


def run_bar_checks(asset_key: AssetKey, bars: Mapping[str, pl.DataFrame], month: str) -> list[AssetCheckResult]:
    """Evaluate every check on the month's bars; failed results carry `failed_rule` for the alert."""
    results = []
    for name, (check, _) in BAR_CHECKS.items():
        try:
            outcome = check(bars, month)
        except Exception as exc:  # a crashing check is a failed check, reported with its cause
            outcome = CheckOutcome(False, f"check crashed: {type(exc).__name__}: {exc}")
        metadata: dict[str, str | int] = dict(outcome.detail or {})
        if not outcome.passed:
            metadata[FAILED_RULE] = outcome.failed_rule[:2000]
        results.append(
            AssetCheckResult(
                asset_key=asset_key,
                check_name=name,
                passed=outcome.passed,
                severity=AssetCheckSeverity.ERROR,
                metadata=metadata,
            )
        )
    return results


def not_applicable_results(asset_key: AssetKey, reason: str) -> list[AssetCheckResult]:
    """Passing results with a note, for a variant the source cannot produce (nothing is staged)."""
    return [
        AssetCheckResult(asset_key=asset_key, check_name=name, passed=True, metadata={"not_applicable": reason})
        for name in BAR_CHECKS
    ]
