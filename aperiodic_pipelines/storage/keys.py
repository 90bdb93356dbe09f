"""Object keys of the store's layout (spec §4). One place builds them so every writer and reader agrees."""

from __future__ import annotations

import re

INTERVAL_NAMES: tuple[str, ...] = ("1s", "1m", "5m", "15m", "30m", "1h", "4h", "1d")
TIMESTAMP_VARIANTS: tuple[str, ...] = ("exchange", "true")

_MONTH = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")
# Exchange ids and native symbols become path segments: no separators, no dot-only names, no whitespace.
_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]*$")


def check_month(month: str) -> str:
    """Return `month` if it is `YYYY-MM`, else raise ValueError naming it."""
    if not isinstance(month, str) or not _MONTH.match(month):
        raise ValueError(f"month must be YYYY-MM, got {month!r}")
    return month


def _segment(kind: str, value: str) -> str:
    if not isinstance(value, str) or not _SEGMENT.match(value):
        raise ValueError(f"{kind} {value!r} cannot be a path segment (letters, digits, '.', '_', ':', '-')")
    return value


def _timestamp(value: str) -> str:
    if value not in TIMESTAMP_VARIANTS:
        raise ValueError(f"timestamp variant must be one of {TIMESTAMP_VARIANTS}, got {value!r}")
    return value


def flow_key(timestamp: str, exchange: str, interval: str, native_symbol: str, month: str) -> str:
    """`flow/{timestamp}/{exchange}/{interval}/{native_symbol}/{YYYY-MM}.parquet` (spec §4)."""
    if interval not in INTERVAL_NAMES:
        raise ValueError(f"interval must be one of {INTERVAL_NAMES}, got {interval!r}")
    return (
        f"flow/{_timestamp(timestamp)}/{_segment('exchange', exchange)}/{interval}/"
        f"{_segment('native symbol', native_symbol)}/{check_month(month)}.parquet"
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
        f"intermediate/seconds/{_timestamp(timestamp)}/{_segment('exchange', exchange)}/"
        f"{_segment('native symbol', native_symbol)}/{check_month(month)}.parquet"
    )
