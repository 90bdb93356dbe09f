"""Short text for log lines and alerts: long lists summarised, one line, a bounded length.

Source errors name every object they looked for (31 daily archives of a month, each a file name); a log line or
an alert keeps the first items, the last and the count, and the run's error record keeps the whole text.
"""

from __future__ import annotations

import re

MAX_LOG_CHARS = 300
LIST_HEAD = 2  # items kept before the count of the elided ones

# A comma-separated run of at least five items, each without spaces, commas or brackets (dates, file names,
# object keys).
_LONG_LIST = re.compile(r"[^\s,()\[\]]+(?:, [^\s,()\[\]]+){4,}")


def _shorten_list(match: re.Match[str]) -> str:
    items = match.group(0).split(", ")
    return f"{', '.join(items[:LIST_HEAD])}, … ({len(items) - LIST_HEAD - 1} more), {items[-1]}"


def summarise(text: object, limit: int = MAX_LOG_CHARS) -> str:
    """`text` on one line, lists of five or more items cut to `a, b, … (n more), z`, at most `limit` characters."""
    one_line = " ".join(str(text).split())
    short = _LONG_LIST.sub(_shorten_list, one_line)
    return short if len(short) <= limit else short[: limit - 1] + "…"
