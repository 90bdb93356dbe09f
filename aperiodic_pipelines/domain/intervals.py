"""Bar intervals and timestamp variants (spec §2)."""

from __future__ import annotations

from aperiodic_pipelines.domain.errors import AperiodicError

INTERVAL_SECONDS: dict[str, int] = {
    "1s": 1,
    "1m": 60,
    "5m": 300,
    "15m": 900,
    "30m": 1_800,
    "1h": 3_600,
    "4h": 14_400,
    "1d": 86_400,
}
INTERVALS: tuple[str, ...] = tuple(INTERVAL_SECONDS)

# `exchange`: bars by the exchange's trade time; `true`: by the time each trade reached the collector
# (sources that record arrival times).
TIMESTAMPS: tuple[str, ...] = ("exchange", "true")


class InvalidIntervalError(AperiodicError, ValueError):
    """An interval or timestamp variant the contract does not define."""


def check_interval(interval: object) -> str:
    if interval not in INTERVAL_SECONDS:
        raise InvalidIntervalError(f"unknown interval {interval!r}; supported: {', '.join(INTERVALS)}")
    return interval  # type: ignore[return-value]


def check_timestamp(timestamp: object) -> str:
    if timestamp not in TIMESTAMPS:
        raise InvalidIntervalError(f"unknown timestamp variant {timestamp!r}; supported: {', '.join(TIMESTAMPS)}")
    return timestamp  # type: ignore[return-value]
