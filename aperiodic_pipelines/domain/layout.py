"""Object keys of the store's layout (spec §4). One place builds them so every writer and reader agrees."""

from __future__ import annotations

import re

from aperiodic_pipelines.domain.errors import SymbolError
from aperiodic_pipelines.domain.intervals import check_interval, check_timestamp
from aperiodic_pipelines.domain.months import check_day, check_month

# Exchange ids and native symbols become path segments: no separators, no dot-only names, no whitespace.
_SEGMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]*")


def _segment(kind: str, value: str) -> str:
    if not isinstance(value, str) or not _SEGMENT.fullmatch(value):
        raise SymbolError(f"{kind} {value!r} cannot be a path segment (letters, digits, '.', '_', ':', '-')")
    return value


def flow_key(timestamp: str, exchange: str, interval: str, native_symbol: str, month: str) -> str:
    """`flow/{timestamp}/{exchange}/{interval}/{native_symbol}/{YYYY-MM}.parquet` (spec §4)."""
    return f"{flow_prefix(timestamp, exchange, interval, native_symbol)}{check_month(month)}.parquet"


def daily_flow_key(timestamp: str, exchange: str, interval: str, native_symbol: str, day: str) -> str:
    """`flow/{timestamp}/{exchange}/{interval}/{native_symbol}/{YYYY-MM-DD}.parquet`: a day of the open month."""
    return f"{flow_prefix(timestamp, exchange, interval, native_symbol)}{check_day(day)}.parquet"


def flow_prefix(timestamp: str, exchange: str, interval: str, native_symbol: str) -> str:
    """The folder of one instrument's files at one interval and variant, ending in `/`."""
    return (
        f"flow/{check_timestamp(timestamp)}/{_segment('exchange', exchange)}/{check_interval(interval)}/"
        f"{_segment('native symbol', native_symbol)}/"
    )


def raw_key(exchange: str, native_symbol: str, month: str) -> str:
    """`raw/trades/{exchange}/{native_symbol}/{YYYY-MM}.parquet`: one month of canonical trades."""
    return (
        f"raw/trades/{_segment('exchange', exchange)}/{_segment('native symbol', native_symbol)}/"
        f"{check_month(month)}.parquet"
    )


def seconds_key(timestamp: str, exchange: str, native_symbol: str, month: str) -> str:
    """`intermediate/seconds/{timestamp}/{exchange}/{native_symbol}/{YYYY-MM}.parquet`: per-second stats."""
    return (
        f"intermediate/seconds/{check_timestamp(timestamp)}/{_segment('exchange', exchange)}/"
        f"{_segment('native symbol', native_symbol)}/{check_month(month)}.parquet"
    )
