"""A month's daily objects: fetched a few at a time, and without waiting on a month that was never published.

A 404 may be a CDN that has not caught up yet (OKX answers 404 for a file that appears seconds later), so a
missing day is asked again with the downloader's 404 patience (`APERIODIC_HTTP_404_ATTEMPTS`, backoff). That
patience only makes sense for a month that is there: when not one required day answers, the month is simply not
published (an instrument's first month asks for the month before it) and waiting ~3 s for each of its 31 days
would only add a minute and a half to the step.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from aperiodic_pipelines.domain.errors import NotPublishedError
from aperiodic_pipelines.sources.download import Downloader

Day = TypeVar("Day")
Fetched = TypeVar("Fetched")

# Daily archives are a few MB to a few hundred MB: four at a time keeps a link busy without hammering the host.
DAY_WORKERS = 4


def fetch_days(
    days: Sequence[Day],
    fetch_one: Callable[[Downloader, Day], Fetched],
    downloader: Downloader,
    *,
    required: Callable[[Day], bool] = lambda _day: True,
) -> tuple[list[tuple[Day, Fetched]], list[Day]]:
    """Fetch every day's object; returns (what was fetched, in `days` order; the required days still missing).

    First pass: all days, `DAY_WORKERS` at a time, a 404 taken at its word. If no required day was published,
    stop there. Otherwise each missing required day is asked again with the downloader's 404 patience. Any
    other failure (checksum, corrupt archive, refused) propagates at once, the earliest day's first.
    """
    required_indices = [i for i, day in enumerate(days) if required(day)]
    fetched, missing = _fetch_pass(days, range(len(days)), fetch_one, downloader.impatient())
    missing_required = [i for i in missing if required(days[i])]
    if missing_required and len(missing_required) < len(required_indices):
        found_later, missing_required = _fetch_pass(days, missing_required, fetch_one, downloader)
        fetched.update(found_later)
    return [(days[i], fetched[i]) for i in sorted(fetched)], [days[i] for i in missing_required]


def _fetch_pass(
    days: Sequence[Day], indices: Sequence[int], fetch_one: Callable[[Downloader, Day], Fetched], client: Downloader
) -> tuple[dict[int, Fetched], list[int]]:
    """One pass over `days[i]` for i in `indices`: (fetched by index, indices not published)."""
    with ThreadPoolExecutor(max_workers=DAY_WORKERS) as pool:
        outcomes = list(pool.map(lambda i: _attempt(fetch_one, client, days[i]), indices))
    fetched = {i: value for i, (found, value) in zip(indices, outcomes, strict=True) if found}
    return fetched, [i for i in indices if i not in fetched]


def _attempt(
    fetch_one: Callable[[Downloader, Day], Fetched], client: Downloader, day: Day
) -> tuple[bool, Fetched | None]:
    try:
        return True, fetch_one(client, day)
    except NotPublishedError:
        return False, None
