"""Which hourly objects of `hl-mainnet-node-data` hold which hours: the three datasets and when each was published.

Facts from listings of the real bucket (each hour is `{dataset}/hourly/{YYYYMMDD}/{H}.lz4`, H not zero-padded):

| dataset               | first object              | last object               |
|-----------------------|---------------------------|---------------------------|
| `node_trades`         | `20250322/10.lz4` (10:00) | `20250525/13.lz4`         |
| `node_fills`          | `20250525/14.lz4`         | `20250727/8.lz4`          |
| `node_fills_by_block` | `20250727/8.lz4`          | (ongoing)                 |

Hour 2025-07-27 08:00 is published by both fill datasets. On the day an era starts or ends, an object of the
neighbouring dataset that the bucket happens to hold is read as well (never required), so a trade filed on the
other side of a switch is not lost; the month's assembly keeps each trade once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from aperiodic_pipelines.domain.errors import AperiodicError, NotPublishedError
from aperiodic_pipelines.domain.months import parse_month

NODE_TRADES = "node_trades"
NODE_FILLS = "node_fills"
NODE_FILLS_BY_BLOCK = "node_fills_by_block"
DATASETS: tuple[str, ...] = (NODE_TRADES, NODE_FILLS, NODE_FILLS_BY_BLOCK)
HOUR = timedelta(hours=1)


@dataclass(frozen=True)
class Era:
    """The hours one dataset covers, both ends inclusive (`last_hour` None: still published)."""

    dataset: str
    first_hour: datetime
    last_hour: datetime | None

    def covers(self, hour: datetime) -> bool:
        return self.first_hour <= hour and (self.last_hour is None or hour <= self.last_hour)

    def near(self, hour: datetime) -> bool:
        """Within a day of either end: where objects of this dataset may exist beyond what `covers` promises."""
        day = timedelta(days=1)
        return self.first_hour - day <= hour and (self.last_hour is None or hour <= self.last_hour + day)


ERAS: tuple[Era, ...] = (
    Era(NODE_TRADES, datetime(2025, 3, 22, 10, tzinfo=UTC), datetime(2025, 5, 25, 13, tzinfo=UTC)),
    Era(NODE_FILLS, datetime(2025, 5, 25, 14, tzinfo=UTC), datetime(2025, 7, 27, 8, tzinfo=UTC)),
    Era(NODE_FILLS_BY_BLOCK, datetime(2025, 7, 27, 8, tzinfo=UTC), None),
)
ARCHIVE_START = ERAS[0].first_hour  # the first hour anything is published: 2025-03-22 10:00 UTC
# Preference when one trade is read from two datasets: the newer dataset's record wins (real tid, arrival time).
DATASET_RANK: dict[str, int] = {name: rank for rank, name in enumerate(DATASETS)}


@dataclass(frozen=True)
class HourObject:
    """One hourly object that may feed a month; a missing `required` object means the month cannot be built."""

    dataset: str
    hour: datetime
    key: str
    required: bool


def month_bounds(month: str) -> tuple[datetime, datetime]:
    """`"2025-08"` → (first instant of the month, first instant of the next), UTC."""
    year, mon = parse_month(month)
    return datetime(year, mon, 1, tzinfo=UTC), datetime(year + mon // 12, mon % 12 + 1, 1, tzinfo=UTC)


def parse_s3_url(url: str) -> tuple[str, str]:
    """`s3://bucket[/prefix]` → (bucket, prefix without slashes at either end)."""
    match = re.fullmatch(r"s3://([a-z0-9][a-z0-9.\-]{1,61}[a-z0-9])(?:/(.*))?", url or "")
    if match is None:
        raise AperiodicError(f"hyperliquid source URL must look like s3://bucket[/prefix], got {url!r}")
    return match[1], (match[2] or "").strip("/")


def hour_key(dataset: str, hour: datetime, *, prefix: str = "") -> str:
    """The object key of one hour: `{prefix/}{dataset}/hourly/{YYYYMMDD}/{H}.lz4`, hour not zero-padded."""
    head = f"{prefix}/" if prefix else ""
    return f"{head}{dataset}/hourly/{hour:%Y%m%d}/{hour.hour}.lz4"


def datasets_for_hour(hour: datetime) -> list[str]:
    """The datasets that publish `hour` (two for 2025-07-27 08:00, none before 2025-03-22 10:00)."""
    return [era.dataset for era in ERAS if era.covers(hour)]


def month_objects(start: datetime, end: datetime, *, prefix: str = "") -> list[HourObject]:
    """Every object that may hold trades of `[start, end)`: the hours from `start - 1h` to `end` inclusive (objects
    spill into neighbouring hours), required where the schedule says the dataset publishes the hour, optional
    where it only might (a day around an era switch)."""
    if end <= ARCHIVE_START:
        raise NotPublishedError(
            f"Hyperliquid node data starts {ARCHIVE_START:%Y-%m-%d %H}:00 UTC "
            f"(node_trades/hourly/{ARCHIVE_START:%Y%m%d}/{ARCHIVE_START.hour}.lz4); nothing is published for "
            f"{start:%Y-%m}"
        )
    objects: list[HourObject] = []
    hour = max(start - HOUR, ARCHIVE_START)
    while hour <= end:
        for era in ERAS:
            if era.covers(hour) or era.near(hour):
                objects.append(HourObject(era.dataset, hour, hour_key(era.dataset, hour, prefix=prefix), era.covers(hour)))
        hour += HOUR
    return objects
