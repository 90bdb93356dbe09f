"""Months and days: one parser, one rule.

A month is the text `YYYY-MM` (years 1900–2099, months 01–12), a day `YYYY-MM-DD` that is a calendar date in
such a month. Nothing else is accepted: no surrounding whitespace, no trailing newline, no year 0000. Every layer
checks months and days here, so a month that passes one layer passes them all.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta

from aperiodic_pipelines.domain.errors import InvalidDayError, InvalidMonthError

_MONTH = re.compile(r"(19|20)\d\d-(0[1-9]|1[0-2])")
_DAY = re.compile(r"((19|20)\d\d-(0[1-9]|1[0-2]))-(\d\d)")

US_PER_SECOND = 1_000_000


def check_month(month: object) -> str:
    """Return `month` if it reads `YYYY-MM`; else raise `InvalidMonthError` naming it."""
    if not isinstance(month, str) or not _MONTH.fullmatch(month):
        raise InvalidMonthError(f"month must look like 'YYYY-MM' (e.g. 2024-01), got {month!r}")
    return month


def parse_month(month: object) -> tuple[int, int]:
    """`"2024-01"` → `(2024, 1)`."""
    text = check_month(month)
    return int(text[:4]), int(text[5:])


def check_day(day: object) -> str:
    """Return `day` if it reads `YYYY-MM-DD` and is a calendar date; else raise `InvalidDayError` naming it."""
    match = _DAY.fullmatch(day) if isinstance(day, str) else None
    if match is None:
        raise InvalidDayError(f"day must look like 'YYYY-MM-DD' (e.g. 2024-01-31), got {day!r}")
    try:
        date.fromisoformat(day)
    except ValueError:
        raise InvalidDayError(f"day {day!r} is not a calendar date") from None
    return day


def month_of_day(day: str) -> str:
    """`2024-01-31` → `2024-01`."""
    return check_day(day)[:7]


def shift_month(month: str, by: int) -> str:
    """The month `by` months after `month` (before, when negative)."""
    year, mon = parse_month(month)
    index = year * 12 + (mon - 1) + by
    return check_month(f"{index // 12:04d}-{index % 12 + 1:02d}")


def previous_month(month: str) -> str:
    return shift_month(month, -1)


def next_month(month: str) -> str:
    return shift_month(month, 1)


def month_range(first: str, last: str | None = None) -> list[str]:
    """Every month from `first` to `last` inclusive (`last` defaults to `first`); empty never: an inverted
    range is an `InvalidMonthError` naming both ends."""
    last = first if last is None else last
    check_month(first), check_month(last)
    if last < first:
        raise InvalidMonthError(f"month range {first}..{last} ends before it starts")
    months = [first]
    while months[-1] < last:
        months.append(next_month(months[-1]))
    return months


def first_day(month: str) -> date:
    year, mon = parse_month(month)
    return date(year, mon, 1)


def days_of_month(month: str) -> list[str]:
    """`2024-02` → `['2024-02-01', …, '2024-02-29']`."""
    start, end = first_day(month), first_day(next_month(month))
    return [(start + timedelta(days=i)).isoformat() for i in range((end - start).days)]


def month_start_us(month: str) -> int:
    """The month's first microsecond since the epoch (UTC)."""
    year, mon = parse_month(month)
    return int(datetime(year, mon, 1, tzinfo=UTC).timestamp()) * US_PER_SECOND


def month_bounds_us(month: str) -> tuple[int, int]:
    """[first µs of the month, first µs of the next month)."""
    return month_start_us(month), month_start_us(next_month(month))


def day_bounds_us(day: str) -> tuple[int, int]:
    """[first µs of the day, first µs of the next day), UTC."""
    start = datetime.fromisoformat(check_day(day)).replace(tzinfo=UTC)
    first = int(start.timestamp()) * US_PER_SECOND
    return first, first + 86_400 * US_PER_SECOND


def utc_today(now: datetime | None = None) -> date:
    return (now or datetime.now(UTC)).astimezone(UTC).date()


def current_month(now: datetime | None = None) -> str:
    """The open month (UTC)."""
    return utc_today(now).strftime("%Y-%m")


def last_closed_month(now: datetime | None = None) -> str:
    """The newest month that has ended (UTC)."""
    return previous_month(current_month(now))
