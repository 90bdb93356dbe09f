"""One UTC day of canonical trades (`fetch_day`): what every source shares.

A day of the open month is asked for as soon as it may be out, so "not published yet" is the normal answer and
is given at once: each object is asked for once (a 404 is taken at its word, no 404 patience), and the answer is a
`DayNotPublishedError` naming the missing objects. Whether the day can still come is told by `later_published`:

- False: nothing after the missing object is out either: the day is simply not out yet; ask again later.
- True: the upstream has published a later object (the next day's file, a later hour) but not this one: it
  skipped the object, and the day may never be complete. The caller reports it (after its own deadline) rather
  than waiting for ever.

The probe behind `later_published` is one cheap request (a HEAD, a CHECKSUM sidecar, a listing), made only when
something is missing.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, timedelta

from aperiodic_pipelines.domain.errors import NotPublishedError


class DayNotPublishedError(NotPublishedError):
    """A day whose objects are not all published: `missing` names them; `later_published` says whether a later
    object is already out (True: the upstream skipped these, the day may never be complete)."""

    def __init__(self, what: str, day: str, missing: Sequence[str], *, later_published: bool) -> None:
        self.day = day
        self.missing = tuple(missing)
        self.later_published = later_published
        state = (
            "skipped upstream (a later object is published)" if later_published else "not published yet"
        )
        super().__init__(f"{what} {day} is {state}: missing {', '.join(self.missing)}")


def shift_day(day: str, by: int) -> str:
    """`2024-01-31`, 1 → `2024-02-01`."""
    return (date.fromisoformat(day) + timedelta(days=by)).isoformat()

