"""Upstream days that were never published: fail by default, or record them when the operator allows it."""

from __future__ import annotations

from collections.abc import Sequence

from aperiodic_pipelines.domain.errors import NotPublishedError
from aperiodic_pipelines.sources.config import SourceConfig

ALLOW_SETTING = "APERIODIC_ALLOW_MISSING_DAYS"


def check_missing_days(
    what: str,
    missing_days: list[str],
    *,
    published: int,
    config: SourceConfig,
    detail: str,
    missing_objects: Sequence[str] = (),
) -> None:
    """Raise `NotPublishedError` naming the missing days (and files) unless there are none or
    `config.allow_missing_days`. A month with nothing published at all always fails: there is nothing to build."""
    if not missing_days:
        return
    days = ", ".join(sorted(missing_days))
    if missing_objects:
        days += f" (not published: {', '.join(missing_objects)})"
    if published == 0:
        raise NotPublishedError(f"{what} is not published (yet): {detail} every day ({days})")
    if not config.allow_missing_days:
        raise NotPublishedError(
            f"{what} is incomplete upstream: {detail} {len(missing_days)} day(s): {days}. "
            f"Set {ALLOW_SETTING}=1 to build the month without them (recorded as missing_days)."
        )
