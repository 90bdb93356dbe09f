"""The domain: the ideas every layer shares, each defined once.

Exchanges and their symbology, months and days, intervals and timestamp variants, instruments, the published
layout's keys, the 36-field contract, errors and settings. Nothing here does I/O or knows Dagster, and nothing
here imports any other part of the package: sources, flow, storage, the API and the Dagster definitions all stand
on it (`tests/test_import_graph.py` holds that rule).
"""

from aperiodic_pipelines.domain.errors import (
    AperiodicError,
    ChecksumMismatchError,
    ContractValueError,
    CorruptArchiveError,
    InvalidBarsError,
    InvalidDayError,
    InvalidMonthError,
    InvalidTradesError,
    NotPublishedError,
    StoreError,
    SymbolError,
)
from aperiodic_pipelines.domain.exchanges import EXCHANGES, Exchange, exchange_of, exchange_of_slug
from aperiodic_pipelines.domain.intervals import (
    INTERVAL_SECONDS,
    INTERVALS,
    TIMESTAMPS,
    check_interval,
    check_timestamp,
)
from aperiodic_pipelines.domain.months import (
    check_day,
    check_month,
    days_of_month,
    month_range,
    next_month,
    previous_month,
    shift_month,
)

__all__ = [
    "EXCHANGES",
    "INTERVALS",
    "INTERVAL_SECONDS",
    "TIMESTAMPS",
    "AperiodicError",
    "ChecksumMismatchError",
    "ContractValueError",
    "CorruptArchiveError",
    "Exchange",
    "InvalidBarsError",
    "InvalidDayError",
    "InvalidMonthError",
    "InvalidTradesError",
    "NotPublishedError",
    "StoreError",
    "SymbolError",
    "check_day",
    "check_interval",
    "check_month",
    "check_timestamp",
    "days_of_month",
    "exchange_of",
    "exchange_of_slug",
    "month_range",
    "next_month",
    "previous_month",
    "shift_month",
]
