"""Daily archives of the open month, dated relative to now: what each exchange has published so far this month.

For `make demo` and the tests of daily files: a seeded, small tape of the current UTC month, cut at the start of
today, written in each exchange's real daily format, only the objects the exchange would already have out:

- Binance: the daily zip + `.CHECKSUM` of each day 1..today−1;
- OKX: the UTC+8 files whose day has ended (file D covers [D−1 16:00, D 16:00) UTC), so before 16:00 UTC the
  last complete UTC day is today−2;
- Tardis: the files of each arrival day 1..today−1 (and the day before the month), so a day is complete once the
  next day's file is out: today−2;
- Hyperliquid: every hourly object whose hour has ended, from the hour before the month on.

On the 1st of a month nothing of the month is out yet: the writers write nothing and return an empty list.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl

from aperiodic_pipelines.domain.months import current_month, days_of_month, month_start_us
from aperiodic_pipelines.mirror import archives
from aperiodic_pipelines.sources import okx
from aperiodic_pipelines.sources.hyperliquid.eras import HOUR, hour_key
from aperiodic_pipelines.synthetic import generate_tape

US = 1_000_000
DEFAULT_TRADES = 3_000  # for the whole month: ~100 a day, enough for a few bars per interval


def _now(now: datetime | None) -> datetime:
    return (now or datetime.now(UTC)).astimezone(UTC)


def published_days(now: datetime | None = None) -> list[str]:
    """Days 1..today−1 of the current UTC month (empty on the 1st)."""
    today = _now(now).date().isoformat()
    return [day for day in days_of_month(current_month(_now(now))) if day < today]


def open_month_tape(
    now: datetime | None = None, *, n_trades: int = DEFAULT_TRADES, seed: int = 5, with_arrival: bool = False,
    cutoff_us: int | None = None,
) -> pl.DataFrame:
    """The seeded tape of the current month up to the start of today (or `cutoff_us`, whichever is earlier)."""
    moment = _now(now)
    today_us = int(datetime.combine(moment.date(), datetime.min.time(), UTC).timestamp()) * US
    cut = today_us if cutoff_us is None else min(today_us, cutoff_us)
    tape = generate_tape(month=current_month(moment), n_trades=n_trades, seed=seed, with_arrival=with_arrival)
    return tape.filter(pl.col("ts_exchange") < cut)


def write_binance_open_month(
    root: Path, native_symbol: str, *, now: datetime | None = None, n_trades: int = DEFAULT_TRADES, seed: int = 5,
    dataset: str = "aggTrades",
) -> list[Path]:
    """Binance daily archives (+ `.CHECKSUM`) of days 1..today−1 under `root`; returns the zip paths."""
    days = published_days(now)
    if not days:
        return []
    tape = open_month_tape(now, n_trades=n_trades, seed=seed)
    return archives.write_binance_month(
        root, native_symbol, current_month(_now(now)), tape, dataset=dataset, daily=True, days=set(days)
    )


def write_okx_open_month(
    root: Path, instid: str, *, now: datetime | None = None, n_trades: int = DEFAULT_TRADES, seed: int = 5
) -> list[Path]:
    """OKX daily archives of the current month whose UTC+8 day has ended; returns the zip paths."""
    moment = _now(now)
    month = current_month(moment)
    ended = {
        d for d in okx.file_dates(month)
        if datetime.combine(d, datetime.min.time(), UTC) + timedelta(hours=16) <= moment
    }
    if not ended:
        return []
    tape = open_month_tape(moment, n_trades=n_trades, seed=seed)
    return archives.write_okx_month(root, instid, month, tape, dates=ended)


def write_tardis_open_month(
    root: Path, exchange: str, native_symbol: str, *, now: datetime | None = None, n_trades: int = DEFAULT_TRADES,
    seed: int = 5, layout: str = "api",
) -> list[Path]:
    """Tardis files (by arrival day) of the days before today this month, and the day before the month."""
    moment = _now(now)
    days = published_days(moment)
    if not days:
        return []
    before = (date.fromisoformat(days[0]) - timedelta(days=1)).isoformat()
    tape = open_month_tape(moment, n_trades=n_trades, seed=seed, with_arrival=True)
    return archives.write_tardis_days(
        root, exchange, native_symbol, current_month(moment), tape, layout=layout,  # type: ignore[arg-type]
        days={before, *days},
    )


def write_hyperliquid_open_month(
    client: Any, bucket: str, coin: str, *, now: datetime | None = None, n_trades: int = DEFAULT_TRADES,
    seed: int = 5, prefix: str = "",
) -> list[str]:
    """Hyperliquid hourly objects of every hour that has ended, from the hour before the month on (an hour without
    a trade of `coin` is an empty object, as upstream every hour exists); returns the keys written, in hour order."""
    from aperiodic_pipelines.mirror.s3 import (
        _existing_keys,
        _key_order,
        append_lines,
        published_datasets,
        write_hyperliquid_month,
    )

    moment = _now(now)
    month = current_month(moment)
    first = datetime.fromtimestamp(month_start_us(month) / US, tz=UTC) - HOUR
    ended = moment.replace(minute=0, second=0, microsecond=0)  # hours before this one are out
    if ended <= first + HOUR:
        return []
    # Records are filed up to ~0.25 s after their time: stop a second before the last hour that is out ends.
    tape = open_month_tape(moment, n_trades=n_trades, seed=seed, cutoff_us=int(ended.timestamp()) * US - US)
    keys = set(write_hyperliquid_month(client, bucket, coin, month, tape, prefix=prefix, cover_month=False))
    hours: list[datetime] = []
    hour = first
    while hour < ended:
        hours.append(hour)
        hour += HOUR
    wanted = {hour_key(dataset, hour, prefix=prefix) for hour in hours for dataset in published_datasets(hour)}
    existing = _existing_keys(client, bucket, {key.rsplit("/", 1)[0] + "/" for key in wanted})
    for key in sorted(wanted - existing - keys):
        append_lines(client, bucket, key, [], exists=False)
    return sorted(keys | wanted, key=_key_order)  # in hour order
