"""Which files a listing names (spec §5 as amended): a month's monthly file, or else its published days.

Two steps, kept apart so the index's shape can change without touching the rule:

- `published_files` is the one place that reads the index: it turns an instrument's manifests into the keys of
  one (timestamp, interval), monthly and daily (a daily file's entry names its `day`, `storage.daily`; older
  entries are told apart by the file name, `YYYY-MM.parquet` or `YYYY-MM-DD.parquet`, spec §4).
- `listing_entries` is the rule, a pure function: every published month overlapping the range, and for a month
  without a monthly file each published day inside the range; never both for one month (the client would
  concatenate every bar of that month twice).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date

from aperiodic_pipelines.domain.errors import InvalidDayError
from aperiodic_pipelines.domain.months import check_day
from aperiodic_pipelines.storage.index import PublishedMonth


@dataclass(frozen=True)
class ListedFile:
    year: int
    month: int
    day: int | None  # None: the monthly file
    key: str

    def entry(self, url: str) -> dict[str, object]:
        """The listing's JSON entry: `{"year", "month", "url"}`, plus `"day"` for a daily file."""
        if self.day is None:
            return {"year": self.year, "month": self.month, "url": url}
        return {"year": self.year, "month": self.month, "day": self.day, "url": url}


@dataclass(frozen=True)
class PublishedFiles:
    """The keys of one (timestamp, interval) of one instrument: `{YYYY-MM: key}` and `{YYYY-MM-DD: key}`."""

    months: dict[str, str]
    days: dict[str, str]


def _day_of(key: str) -> str | None:
    """`2024-01-05` from a daily file's key (`…/2024-01-05.parquet`); None for any other key."""
    stem = key.rsplit("/", 1)[-1].removesuffix(".parquet")
    try:
        return check_day(stem)
    except InvalidDayError:
        return None


def published_files(published: Iterable[PublishedMonth], timestamp: str, interval: str) -> PublishedFiles:
    """The index's entries of one (timestamp, interval), split into monthly and daily keys.

    A key the layout does not produce for its manifest's month (another month's name, anything else) is left
    out: no URL is ever handed out for it.
    """
    months: dict[str, str] = {}
    days: dict[str, str] = {}
    for manifest in published:
        month = manifest.month[:7]
        for f in manifest.files:
            if (f.timestamp, f.interval) != (timestamp, interval):
                continue
            if f.day is not None:  # a daily file (storage.daily): the index says which day
                if f.day[:7] == month and _day_of(f.key) == f.day:
                    days[f.day] = f.key
            elif f.key.endswith(f"/{month}.parquet"):
                months[month] = f.key
            elif (day := _day_of(f.key)) is not None and day[:7] == month:  # entries written before `day`
                days[day] = f.key
    return PublishedFiles(months, days)


def months_overlapping(start: date, end: date) -> list[str]:
    """`YYYY-MM` of every month overlapping [start, end], in order."""
    out = []
    year, month = start.year, start.month
    while (year, month) <= (end.year, end.month):
        out.append(f"{year:04d}-{month:02d}")
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return out


def listing_entries(
    months: Mapping[str, str],
    days: Mapping[str, str],
    start: date,
    end: date,
    *,
    allowed_months: frozenset[str] | None = None,
) -> list[ListedFile]:
    """The files a listing of [start, end] names, in (year, month, day) order, the monthly file before days.

    `months` maps published `YYYY-MM` to keys, `days` published `YYYY-MM-DD` to keys. A month with a monthly
    file is listed as that file alone (whole: the client trims it to the range); a month without one lists
    its published days inside [start, end]. `allowed_months`, when given, restricts the listing (the preview).
    """
    first, last = start.isoformat(), end.isoformat()
    days_by_month: dict[str, list[str]] = {}
    for day in days:
        if first <= day <= last:
            days_by_month.setdefault(day[:7], []).append(day)
    listed = []
    for month in months_overlapping(start, end):
        if allowed_months is not None and month not in allowed_months:
            continue
        year, number = int(month[:4]), int(month[5:])
        if month in months:
            listed.append(ListedFile(year, number, None, months[month]))
            continue
        for day in sorted(days_by_month.get(month, ())):
            listed.append(ListedFile(year, number, int(day[8:]), days[day]))
    return listed
