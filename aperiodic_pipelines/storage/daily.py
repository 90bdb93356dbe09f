"""Daily files of the open month (issue 15, spec §4): a day is published whole, like a month.

A day's publication is every interval and variant of the day plus, per variant, the carry for the next day
(`flow.FlowCarry`), committed together by one conditional write of the month's index entry
(`storage.publication`: the same partition lease, immutable version keys, stable keys after the commit,
retirement after URL expiry). Files go to `versions/flow/…/{YYYY-MM-DD}.parquet` (the index names these) and then
to the stable `flow/{timestamp}/{exchange}/{interval}/{native}/{YYYY-MM-DD}.parquet`; a carry to
`intermediate/carry/{exchange}/{native}/{YYYY-MM}/{timestamp}/{sha256}/{for_day}.parquet` (never under `flow/`).

Rules the index keeps (docs/storage.md, "Daily files of the open month"):

- **In order.** Day d is published only after day d−1 of the month (day 1 needs nothing): the bars of d are
  computed from the carry published with d−1, so a listed day never follows a gap.
- **Republishing** a day (upstream changed) replaces its files and carries whole. If a carry it hands on differs
  from the one published before, every later day of the month was computed from a superseded carry: those days
  are dropped in the same commit (their objects retired), and the daily step publishes them again in order. For
  a month's last day, the next month's published days are dropped just before (that month's own commit).
- **Month close.** When the monthly file of a (variant, interval) is published the month's days of it are no
  longer in the entry (never both in a listing), their stable keys are deleted, and their versions and the
  variant's carries are retired once every URL that could name them has expired.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from aperiodic_pipelines.domain.errors import StoreError
from aperiodic_pipelines.domain.intervals import INTERVALS, check_timestamp
from aperiodic_pipelines.domain.layout import daily_flow_key
from aperiodic_pipelines.domain.months import check_day, check_month, month_of_day, previous_month
from aperiodic_pipelines.storage.base import ObjectStore
from aperiodic_pipelines.storage.index import (
    PublishedMonth,
    complete_through,
    list_published_months,
    read_published_month,
)
from aperiodic_pipelines.storage.publication import (
    LEASE_SECONDS,
    MonthPublication,
    PublicationConflictError,
    StepHook,
    month_publication,
)

if TYPE_CHECKING:
    import polars as pl


class Carry(Protocol):
    """What storage needs of the flow engine's carry (`flow.FlowCarry`): its variant, the day it feeds and its
    table. Storage keeps it as that table and hands the table back (`read_carry_frame`)."""

    timestamp: str
    day: str

    def to_frame(self) -> pl.DataFrame: ...

__all__ = [
    "DayOrderError",
    "DayPublished",
    "MonthClosedError",
    "last_complete_day",
    "publish_day",
    "published_days",
    "read_carry_frame",
    "retire_expired",
]


class MonthClosedError(StoreError):
    """The month's monthly file is published: its days are not published beside it."""


class DayOrderError(StoreError):
    """A day published before the day it follows: its bars would start from a carry the index does not hold."""


@dataclass(frozen=True)
class DayPublished:
    """What `publish_day` committed: the month's entry, the index's URI, later days it dropped, versions retired."""

    day: str
    month: PublishedMonth
    index_uri: str
    invalidated: tuple[str, ...] = ()  # later days dropped: computed from a carry this publication replaced
    retired: tuple[str, ...] = ()


def _next_day(day: str) -> str:
    return (date.fromisoformat(day) + timedelta(days=1)).isoformat()


def _previous_day(day: str) -> str:
    return (date.fromisoformat(day) - timedelta(days=1)).isoformat()


def _carry_metadata(exchange: str, native_symbol: str, timestamp: str, for_day: str) -> dict[str, str]:
    return {
        "aperiodic.kind": "flow_carry", "aperiodic.exchange": exchange, "aperiodic.native_symbol": native_symbol,
        "aperiodic.timestamp": timestamp, "aperiodic.day": for_day,
    }


def _check_day_inputs(
    day: str, bars: Mapping[tuple[str, str], pl.DataFrame], carries: Mapping[str, Carry]
) -> list[str]:
    """The variants of the publication; raises ValueError naming what is missing or inconsistent."""
    if not carries:
        raise ValueError(f"publish_day({day}): no carries given (one per timestamp variant)")
    variants = sorted(check_timestamp(t) for t in carries)
    expected = {(t, i) for t in variants for i in INTERVALS}
    if set(bars) != expected:
        missing = sorted(expected - set(bars))
        extra = sorted(set(bars) - expected)
        raise ValueError(
            f"publish_day({day}): the bars must be every interval of each carried variant {variants}"
            + (f"; missing {missing}" if missing else "") + (f"; unexpected {extra}" if extra else "")
        )
    following = _next_day(day)
    for timestamp, carry in carries.items():
        if (carry.timestamp, carry.day) != (timestamp, following):
            raise ValueError(
                f"publish_day({day}): the {timestamp} carry is the {carry.timestamp} carry for {carry.day}; "
                f"expected the {timestamp} carry for {following} (the day after)"
            )
    return variants


def publish_day(
    store: ObjectStore,
    *,
    exchange: str,
    symbol: str,
    native_symbol: str,
    day: str,
    bars: Mapping[tuple[str, str], pl.DataFrame],
    carries: Mapping[str, Carry],
    sources: Mapping[str, Iterable[Mapping[str, object]]] | None = None,
    retain_seconds: float | None = None,
    lease_seconds: float | None = None,
    on_step: StepHook | None = None,
) -> DayPublished:
    """Publish one day of the open month whole: `bars` `{(timestamp, interval): frame}` (every interval of each
    variant in `carries`) and `carries` `{timestamp: the carry for the next day}`, in one commit of the month's
    index entry. `sources` `{timestamp: [{location, sha256, size}, …]}` go in each file's footer.

    Raises `MonthClosedError` when the month's monthly file of a variant is published, `DayOrderError` when the
    day before (same month) is not published, `PublicationConflictError` when another writer holds the month.
    Nothing of a failed call is visible through the index.
    """
    from aperiodic_pipelines.storage.lineage import publish_sources_lineage
    from aperiodic_pipelines.storage.parquet import bars_metadata, write_parquet_deterministic

    check_day(day)
    month = month_of_day(day)
    variants = _check_day_inputs(day, bars, carries)
    following = _next_day(day)
    by_variant = {t: [dict(s) for s in (sources or {}).get(t, ())] for t in variants}
    for listed in by_variant.values():
        publish_sources_lineage(store, listed)
    with (
        tempfile.TemporaryDirectory(prefix="aperiodic-day-") as tmp,
        month_publication(
            store, exchange, native_symbol, month, retain_seconds=retain_seconds, on_step=on_step,
            lease_seconds=LEASE_SECONDS if lease_seconds is None else lease_seconds,
        ) as publication,
    ):
        _check_open_and_in_order(publication, day, variants)
        changed = _carry_changed(publication, day, variants, carries, Path(tmp))
        previous = publication.previous
        invalidated = [d for d in (previous.days if previous else ()) if d > day] if changed else []
        publication.replaced_days.update({day, *invalidated})
        for (timestamp, interval), frame in sorted(bars.items()):
            daily_flow_key(timestamp, exchange, interval, native_symbol, day)  # checks every part before a write
            local = Path(tmp) / f"{timestamp}-{interval}.parquet"
            write_parquet_deterministic(frame, local, metadata=bars_metadata(
                exchange=exchange, symbol=symbol, native_symbol=native_symbol, interval=interval,
                timestamp=timestamp, month=month, row_count=frame.height, sources=by_variant[timestamp], day=day,
            ))
            publication.add_file(timestamp, interval, local, frame.height, day=day)
        for timestamp in variants:
            publication.add_carry(timestamp, following, _write_carry(carries[timestamp], exchange, native_symbol,
                                                                      Path(tmp)))
        if changed and month_of_day(following) != month:
            # The next month's days started from the carry being replaced: drop them first (its own commit, under
            # its lease, taken inside this one: leases are always taken in month order). Killed in between, the
            # next month only lacks days, and the rerun of this day, whose carry still differs, drops them again.
            invalidated += _invalidate_month_days(
                store, exchange, native_symbol, month_of_day(following), retain_seconds,
                LEASE_SECONDS if lease_seconds is None else lease_seconds,
            )
        committed = publication.commit(symbol)
    # The previous month's closed days wait for their URLs to expire; the open month's first publications after
    # that delete them (nobody else publishes a closed month).
    _retire_quietly(store, exchange, native_symbol, previous_month(month), retain_seconds)
    return DayPublished(day, committed.month, committed.index_uri, tuple(invalidated), committed.retired)


def _write_carry(carry: Carry, exchange: str, native_symbol: str, tmp: Path) -> Path:
    from aperiodic_pipelines.storage.parquet import write_parquet_deterministic

    local = tmp / f"carry-{carry.timestamp}-{carry.day}.parquet"
    if not local.exists():
        write_parquet_deterministic(
            carry.to_frame(), local, metadata=_carry_metadata(exchange, native_symbol, carry.timestamp, carry.day)
        )
    return local


def _check_open_and_in_order(publication: MonthPublication, day: str, variants: list[str]) -> None:
    previous = publication.previous
    partition = publication.lease.partition
    if previous is None:
        published: set[tuple[str, str]] = set()
    else:
        closed = sorted({f.timestamp for f in previous.monthly_files()} & set(variants))
        if closed:
            raise MonthClosedError(
                f"{partition}: the monthly file of the {', '.join(closed)} bars is published, so its days are not "
                f"published beside it (refused {day})"
            )
        published = {(f.timestamp, f.day) for f in previous.files if f.day is not None}
    if day.endswith("-01"):
        return
    before = _previous_day(day)
    missing = [t for t in variants if (t, before) not in published]
    if missing:
        raise DayOrderError(
            f"{partition}: {day} cannot be published before {before} ({', '.join(missing)} bars): each day starts "
            "from the carry published with the day before"
        )


def _carry_changed(
    publication: MonthPublication, day: str, variants: list[str], carries: Mapping[str, Carry], tmp: Path
) -> bool:
    """Whether a carry `day` hands on differs from the one published with it before (a first publication of a
    day replaces no carry). Compared by the bytes of the deterministic parquet, as stored."""
    from aperiodic_pipelines.hashing import sha256_file

    previous = publication.previous
    following = _next_day(day)
    old = {c.timestamp: c.sha256 for c in (previous.carries if previous else ()) if c.for_day == following}
    return any(
        timestamp in old
        and old[timestamp] != sha256_file(_write_carry(carries[timestamp], publication.exchange,
                                                       publication.native_symbol, tmp))[1]
        for timestamp in variants
    )


def _invalidate_month_days(
    store: ObjectStore, exchange: str, native_symbol: str, month: str, retain: float | None, lease: float
) -> tuple[str, ...]:
    """Drop every published day of `month` (their carry chain starts from a carry that was replaced)."""
    if not published_days(store, exchange, native_symbol, month):
        return ()
    with month_publication(store, exchange, native_symbol, month, retain_seconds=retain,
                           lease_seconds=lease) as publication:
        current = publication.previous
        if current is None or not current.days:
            return ()
        dropped = tuple(current.days)
        publication.files.update({(f.timestamp, f.interval, f.day): f for f in current.monthly_files()})
        publication.replaced_days.update(dropped)
        publication.commit(current.symbol)
        return dropped


def _retire_quietly(store: ObjectStore, exchange: str, native_symbol: str, month: str, retain: float | None) -> None:
    with contextlib.suppress(PublicationConflictError):  # someone holds that month: they retire it
        retire_expired(store, exchange, native_symbol, month, retain_seconds=retain)


def retire_expired(
    store: ObjectStore,
    exchange: str,
    native_symbol: str,
    month: str,
    *,
    retain_seconds: float | None = None,
    lease_seconds: float | None = None,
) -> tuple[str, ...]:
    """Delete the month's retiring objects whose URLs have all expired (and unnamed uploads older than the
    retention), recommitting the entry without them; returns the keys deleted. A no-op (no lease taken) when
    nothing is due. `publish_day` calls it for the previous month; call it for any closed month."""
    import time

    entry = read_published_month(store, exchange, native_symbol, month)
    if entry is None or not any(r.retire_after <= time.time() for r in entry.retiring):
        return ()
    with month_publication(
        store, exchange, native_symbol, month, retain_seconds=retain_seconds,
        lease_seconds=LEASE_SECONDS if lease_seconds is None else lease_seconds,
    ) as publication:
        current = publication.previous
        if current is None:
            return ()
        # Recommitted as it is: every file and carry is already committed under an immutable key.
        publication.files.update({(f.timestamp, f.interval, f.day): f for f in current.files})
        publication.carries.update({(c.for_day, c.timestamp): c for c in current.carries})
        return publication.commit(current.symbol).retired


def published_days(store: ObjectStore, exchange: str, native_symbol: str, month: str) -> list[str]:
    """The days of `month` published as daily files (`YYYY-MM-DD`, in order): empty for a closed month."""
    entry = read_published_month(store, exchange, native_symbol, check_month(month))
    return entry.days if entry is not None else []


def read_carry_frame(
    store: ObjectStore, exchange: str, native_symbol: str, day: str, timestamp: str
) -> pl.DataFrame | None:
    """The table of the carry `day`'s bars of `timestamp` start from (published with the day before; the flow
    engine reads it with `FlowCarry.from_frame`), checked against the index's sha256; None when that day is not
    published (day 1 of a month: `flow.month_start_carry`)."""
    import polars as pl

    check_day(day)
    check_timestamp(timestamp)
    entry = read_published_month(store, exchange, native_symbol, month_of_day(_previous_day(day)))
    found = [c for c in (entry.carries if entry else ()) if (c.for_day, c.timestamp) == (day, timestamp)]
    if not found:
        return None
    data = store.read_bytes(found[0].key)
    if hashlib.sha256(data).hexdigest() != found[0].sha256:
        raise StoreError(f"{store.uri(found[0].key)} does not hold the carry the index names (sha256 differs)")
    return pl.read_parquet(io.BytesIO(data))


def last_complete_day(
    store: ObjectStore, exchange: str, native_symbol: str, timestamp: str, interval: str
) -> str | None:
    """The last day whose (timestamp, interval) bars are published, monthly or daily (`YYYY-MM-DD`), or None."""
    return complete_through(list_published_months(store, exchange, native_symbol), timestamp, interval)
