"""Validation of every request parameter, before anything touches the store.

Each check raises a 400 `ApiError` with a stable `code`; store keys are later built only from the values
returned here (an exchange from a fixed list, a native id produced by the symbology, a listed interval).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date

from aperiodic_pipelines.api.errors import ApiError, bad_request
from aperiodic_pipelines.api.settings import API_PREFIX
from aperiodic_pipelines.domain.errors import SymbolError
from aperiodic_pipelines.domain.exchanges import EXCHANGES, exchange_of
from aperiodic_pipelines.domain.intervals import INTERVALS, TIMESTAMPS
from aperiodic_pipelines.domain.layout import flow_key
from aperiodic_pipelines.domain.symbols import parse_symbol, to_atlas, to_native

METRICS: tuple[str, ...] = ("flow",)
MAX_PARAM_LENGTH = 128
_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def shown(value: str) -> str:
    """A parameter value as quoted in an error, cut so a huge value cannot bloat the answer."""
    return repr(value if len(value) <= 64 else value[:64] + "…")


def check_metric(metric: str) -> str:
    if metric not in METRICS:
        raise ApiError(
            404, "unknown_metric", f"unknown metric {shown(metric)}", [f"this deployment serves: {', '.join(METRICS)}"]
        )
    return metric


def check_exchange(exchange: str) -> str:
    if exchange not in EXCHANGES:
        raise bad_request("unknown_exchange", f"unknown exchange {shown(exchange)}", f"supported: {', '.join(EXCHANGES)}")
    return exchange


def check_symbol(exchange: str, symbol: str) -> tuple[str, str]:
    """An Atlas symbol (canonical form) → (atlas, native). A native id is refused with the Atlas form to use.

    The hint is in `error` itself: the client raises that text and drops `details`.
    """
    if len(symbol) > MAX_PARAM_LENGTH:
        raise bad_request("unknown_symbol", "symbol is too long", f"at most {MAX_PARAM_LENGTH} characters")
    try:
        parsed = parse_symbol(symbol)
    except SymbolError as exc:
        atlas = None
        with contextlib.suppress(SymbolError):
            atlas = to_atlas(exchange, symbol)
        if atlas is not None:
            raise bad_request(
                "unknown_symbol",
                f"{shown(symbol)} is a native {exchange} id; the Atlas symbol is {atlas}",
                f"symbols are Atlas symbols (github.com/aperiodic-io/atlas); {symbols_hint(exchange)}",
            ) from None
        raise bad_request(
            "unknown_symbol", f"symbol {shown(symbol)} is not an Atlas symbol; {symbols_hint(exchange)}", str(exc)
        ) from None
    if str(parsed) != symbol:
        raise bad_request("unknown_symbol", f"symbol {shown(symbol)} is not in canonical form: use {parsed}")
    try:
        native = to_native(exchange, parsed)
        flow_key("exchange", exchange, "1m", native, "2000-01")  # the id must make a valid path segment
    except (SymbolError, ValueError) as exc:
        raise bad_request(
            "unknown_symbol", f"{exchange} has no instrument {shown(symbol)}; {symbols_hint(exchange)}", str(exc)
        ) from None
    return symbol, native


def symbols_hint(exchange: str) -> str:
    """Where to look: the list endpoint, spelled out so a client's error message carries it."""
    return f"the published ones are listed at {API_PREFIX}/metadata/symbols?exchange={exchange}"


def check_interval(interval: str) -> str:
    if interval not in INTERVALS:
        raise bad_request("invalid_interval", f"unknown interval {shown(interval)}", f"supported: {', '.join(INTERVALS)}")
    return interval


def check_timestamp(timestamp: str) -> str:
    if timestamp not in TIMESTAMPS:
        raise bad_request(
            "invalid_timestamp", f"unknown timestamp {shown(timestamp)}", f"supported: {', '.join(TIMESTAMPS)}"
        )
    return timestamp


def check_date(name: str, value: str) -> date:
    if not _ISO_DATE.match(value):
        raise bad_request("invalid_date", f"{name} {shown(value)} is not an ISO date", "expected YYYY-MM-DD")
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise bad_request("invalid_date", f"{name} {shown(value)} is not a calendar date") from None


@dataclass(frozen=True)
class ListingQuery:
    metric: str
    timestamp: str
    interval: str
    exchange: str
    symbol: str
    native_symbol: str
    start: date
    end: date


# Not 404: the `aperiodic` client (4.3.1) raises a bare "Not Found" for every 404 and drops the body, while for a
# 400 it raises the body's `error`. These two answers exist to tell the user what to ask for instead.
NOT_PUBLISHED_STATUS = 400


def check_instrument_published(exchange: str, symbol: str, *, anything_published: bool) -> None:
    """An instrument with nothing in the store is refused with where to look, not answered with an empty list."""
    if not anything_published:
        raise ApiError(
            NOT_PUBLISHED_STATUS,
            "unknown_instrument",
            f"{exchange} {symbol} has nothing published on this deployment; {symbols_hint(exchange)}",
        )


def check_variant(exchange: str, timestamp: str, *, source: str, published: Iterable[str]) -> None:
    """A timestamp variant the exchange does not have (read from `source`) and the store does not hold is refused.

    `published` (the variants of the instrument's published files) is read only when the exchange lacks the
    variant: bars published earlier from another source are still served.
    """
    variants = exchange_of(exchange).variants(source)
    if timestamp in variants:
        return
    held = set(published)
    if timestamp in held:
        return
    origin = "public archive records" if source == "archive" else f"{source} files record"
    raise ApiError(
        NOT_PUBLISHED_STATUS,
        "unknown_variant",
        f"{exchange} has no timestamp={timestamp} bars: its {origin} no arrival times; "
        f"use timestamp={' or timestamp='.join(sorted(set(variants) | held))}",
    )


def check_listing(
    *,
    metric: str,
    timestamp: str,
    interval: str,
    exchange: str,
    symbol: str,
    start_date: str,
    end_date: str,
    max_range_days: int,
) -> ListingQuery:
    check_metric(metric)
    check_timestamp(timestamp)
    check_interval(interval)
    check_exchange(exchange)
    atlas, native = check_symbol(exchange, symbol)
    start, end = check_date("start_date", start_date), check_date("end_date", end_date)
    if start > end:
        raise bad_request("inverted_range", f"start_date {start} is after end_date {end}")
    days = (end - start).days + 1
    if days > max_range_days:
        raise bad_request(
            "range_too_long",
            f"the range covers {days} days; this deployment answers at most {max_range_days} per request",
            "split the range into several requests",
        )
    return ListingQuery(metric, timestamp, interval, exchange, atlas, native, start, end)
