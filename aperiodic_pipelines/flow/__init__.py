"""Canonical trades → flow bars: pure polars, no I/O, no Dagster. The formulas live here, once."""

from aperiodic_pipelines.flow.bars import bars_from_second_stats, second_bar_slices
from aperiodic_pipelines.flow.daily import (
    CARRY_SCHEMA,
    DayFlowBars,
    FlowCarry,
    InvalidCarryError,
    SpanState,
    compute_day_flow_bars,
    month_start_carry,
    raw_days_needed,
)
from aperiodic_pipelines.flow.engine import compute_flow_bars
from aperiodic_pipelines.flow.grid import (
    ADDITIVE_FIELDS,
    FLOW_COLUMNS,
    FLOW_FIELDS,
    FLOW_SCHEMA,
    INTERVAL_SECONDS,
    INTERVALS,
    NULLABLE_FIELDS,
    bars_in_month,
    month_bounds_us,
    shift_month,
)
from aperiodic_pipelines.flow.schema import flow_bars_schema, validate_bars, validate_month_bars
from aperiodic_pipelines.flow.seconds import SECOND_STATS_SCHEMA, SecondStats, compute_second_stats

__all__ = [
    "CARRY_SCHEMA",
    "DayFlowBars",
    "FlowCarry",
    "InvalidCarryError",
    "SpanState",
    "compute_day_flow_bars",
    "month_start_carry",
    "raw_days_needed",
    "ADDITIVE_FIELDS",
    "FLOW_COLUMNS",
    "FLOW_FIELDS",
    "FLOW_SCHEMA",
    "INTERVALS",
    "INTERVAL_SECONDS",
    "NULLABLE_FIELDS",
    "SECOND_STATS_SCHEMA",
    "SecondStats",
    "bars_from_second_stats",
    "second_bar_slices",
    "bars_in_month",
    "compute_flow_bars",
    "compute_second_stats",
    "flow_bars_schema",
    "validate_bars",
    "validate_month_bars",
    "month_bounds_us",
    "shift_month",
]
