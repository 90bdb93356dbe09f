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
from aperiodic_pipelines.flow import FLOW_COLUMNS, INTERVAL_SECONDS, INTERVALS, bars_in_month, month_bounds_us
from aperiodic_pipelines.flow.schema import MonthBarsValidator, TimeFacts, time_facts

FAILED_RULE = "failed_rule"  # metadata key the alert sensor quotes


@dataclass(frozen=True)
class CheckOutcome:
    passed: bool
    failed_rule: str = ""  # one line: which interval, which rule, a sample
    detail: Mapping[str, str | int] | None = None


class MonthBarChecks:
    """The blocking checks of one variant's month, fed its tables slice by slice (`add`), finest interval first:
    a busy month's 1s table (~0.8 GB) is checked and written a row group at a time, never whole. Intervals
    checked in another thread go to their own `MonthBarChecks`, joined by `results`.

    Each check keeps its first failure; the month-wide rules (row counts, the trade count) are settled by
    `results`. A check that crashes is a failed check, reported with its cause.
    """

    def __init__(self, month: str) -> None:
        self.month = month
        self._validator = MonthBarsValidator(month=month)
        self._rows: dict[str, int] = {}
        self._next_time: dict[str, int] = {}  # µs of the interval's next bar
        self._trades: dict[str, int] = {}
        self._failed: dict[str, str] = {}

    def add(self, interval: str, part: pl.DataFrame) -> None:
        """Check the next slice of `interval`'s table."""
        validated = "schema_and_invariants" not in self._failed
        self._run("schema_and_invariants", lambda: self._validator.add(interval, part))
        # The validator's facts of this slice's times (one pass over them), unless it did not get that far.
        times = self._validator.times if validated else None
        self._run("dense_grid", lambda: self._grid(interval, part, times))
        self._run("nonempty_month", lambda: self._count_trades(interval, part))
        self._rows[interval] = self._rows.get(interval, 0) + part.height

    def results(self, asset_key: AssetKey, *others: MonthBarChecks) -> list[AssetCheckResult]:
        """One result per check of `BAR_CHECKS`, once every slice was added; failed ones carry `failed_rule`.

        `others` hold the month's other intervals, checked apart (the coarser tables, in a thread beside the
        1s table): a check passes when it passed everywhere, and reports the failure of the first in argument
        order, so the verdict does not depend on which thread finished first.
        """
        parts = (self, *others)
        for part in parts:
            part._run("schema_and_invariants", part._validator.finish)
            part._run("dense_grid", part._grid_covers_month)
        rows = {interval: part._rows[interval] for interval in INTERVALS for part in parts if interval in part._rows}
        coarsest = next((part for part in reversed(parts) if part._rows), None)
        trades = coarsest._trades.get(list(coarsest._rows)[-1], 0) if coarsest else 0
        failed: dict[str, str] = {}
        for part in parts:
            failed = {**part._failed, **failed}
        if not trades and "nonempty_month" not in failed:
            failed["nonempty_month"] = f"no trades in {self.month}: the source month is empty or truncated"
        details: dict[str, Mapping[str, str | int]] = {
            "schema_and_invariants": {"intervals": ",".join(rows)},
            "dense_grid": rows,
            "nonempty_month": {"trades": trades},
        }
        outcomes = {name: CheckOutcome(name not in failed, failed.get(name, ""),
                                       None if name in failed else details[name]) for name in BAR_CHECKS}
        return [_check_result(asset_key, name, outcome) for name, outcome in outcomes.items()]

    def _run(self, name: str, check: Callable[[], str | None]) -> None:
        if name in self._failed:
            return
        try:
            problem = check()
        except InvalidBarsError as exc:
            problem = str(exc)
        except Exception as exc:  # a crashing check is a failed check, reported with its cause
            problem = f"check crashed: {type(exc).__name__}: {exc}"
        if problem:
            self._failed[name] = problem

    def _grid(self, interval: str, part: pl.DataFrame, times: TimeFacts | None) -> str | None:
        """One row per bar, from the month's first instant (or the previous slice's next bar), evenly spaced."""
        if tuple(part.columns) != FLOW_COLUMNS:
            return f"{interval}: columns differ from spec §2 order (got {part.columns[:3]}…)"
        step = INTERVAL_SECONDS[interval] * 1_000_000
        expected_first = self._next_time.get(interval, month_bounds_us(self.month)[0])
        times = times or time_facts(part, interval)
        if times.nulls:
            return f"{interval}: {times.nulls} null bar times"
        if times.first != expected_first:
            where = "the bar after the previous slice's last" if interval in self._next_time else "the month's start"
            return f"{interval}: first bar at {part['time'][0]}, expected {where}"
        if not times.evenly_spaced:
            time_us = pl.col("time").dt.epoch("us")
            gaps = part.filter(time_us.diff().fill_null(step) != step)
            return f"{interval}: bars not {interval} apart at {gaps['time'].head(3).to_list()}"
        self._next_time[interval] = times.last + step
        return None

    def _grid_covers_month(self) -> str | None:
        for interval, rows in self._rows.items():
            expected = bars_in_month(self.month, interval)
            if rows != expected:
                return f"{interval}: {rows} rows, expected {expected} for {self.month}"
        return None

    def _count_trades(self, interval: str, part: pl.DataFrame) -> None:
        trades = part.select(pl.col("taker_buy_count").sum() + pl.col("taker_sell_count").sum()).item() or 0
        self._trades[interval] = self._trades.get(interval, 0) + int(trades)


BAR_CHECKS: dict[str, str] = {
    "schema_and_invariants": "pandera schema (dtypes, nulls, ranges) and spec §2 invariants for all 8 intervals",
    "dense_grid": "one row per bar of the month at every interval, evenly spaced",
    "nonempty_month": "at least one trade in the month",
}


def bar_check_specs(asset_key: AssetKey, partitions_def: PartitionsDefinition) -> list[AssetCheckSpec]:
    """The blocking per-partition checks of one staged flow-bars asset."""
    return [
        AssetCheckSpec(name, asset=asset_key, description=description, blocking=True, partitions_def=partitions_def)
        for name, description in BAR_CHECKS.items()
    ]


def run_bar_checks(asset_key: AssetKey, bars: Mapping[str, pl.DataFrame], month: str) -> list[AssetCheckResult]:
    """Evaluate every check on the month's whole tables; failed results carry `failed_rule` for the alert."""
    checks = MonthBarChecks(month)
    for interval, frame in bars.items():
        checks.add(interval, frame)
    return checks.results(asset_key)


def _check_result(asset_key: AssetKey, name: str, outcome: CheckOutcome) -> AssetCheckResult:
    metadata: dict[str, str | int] = dict(outcome.detail or {})
    if not outcome.passed:
        metadata[FAILED_RULE] = outcome.failed_rule[:2000]
    return AssetCheckResult(asset_key=asset_key, check_name=name, passed=outcome.passed,
                            severity=AssetCheckSeverity.ERROR, metadata=metadata)


def not_applicable_results(asset_key: AssetKey, reason: str) -> list[AssetCheckResult]:
    """Passing results with a note, for a variant the source cannot produce (nothing is staged)."""
    return [
        AssetCheckResult(asset_key=asset_key, check_name=name, passed=True, metadata={"not_applicable": reason})
        for name in BAR_CHECKS
    ]
