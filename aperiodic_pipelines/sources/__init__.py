"""Source registry: one `fetch_month` per exchange, turning its public archive into canonical trades.

A source module is imported when its exchange is first asked for, so a module that is missing or broken only
affects its own exchange (and `import aperiodic_pipelines.sources` stays cheap).

    from aperiodic_pipelines.sources import fetch_month
    result = fetch_month("binance-futures", "perpetual-BTC-USDT:USDT", "2024-01", dest=Path("data/raw"),
                         config=settings.sources, http=settings.http)
    day = fetch_day("binance-futures", "perpetual-BTC-USDT:USDT", "2024-02-03", dest=Path("data/raw/day.parquet"),
                    config=settings.sources, http=settings.http)  # DayNotPublishedError when not out yet
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aperiodic_pipelines.domain.errors import SymbolError
from aperiodic_pipelines.domain.exchanges import EXCHANGES
from aperiodic_pipelines.domain.months import check_day, check_month
from aperiodic_pipelines.domain.settings import HttpSettings, SourceSettings

# exchange → module under aperiodic_pipelines.sources that exposes fetch_month(symbol, month, *, dest, config, ...)
SOURCE_MODULES: dict[str, str] = {
    "binance-futures": "binance",
    "okx-perps": "okx",
    "hyperliquid-perps": "hyperliquid",
}

FetchMonth = Callable[..., Any]


def source_fetch_month(exchange: str) -> FetchMonth:
    """The `fetch_month` of `exchange`'s source module (imported now)."""
    check_exchange(exchange)
    return importlib.import_module(f"{__name__}.{SOURCE_MODULES[exchange]}").fetch_month


def fetch_month(
    exchange: str,
    symbol: str,
    month: str,
    *,
    dest: Path,
    config: SourceSettings | None = None,
    http: HttpSettings | None = None,
    **kwargs: Any,
) -> Any:
    """Canonical trades of `symbol` (Atlas symbol or native id) on `exchange` for `month`, written under `dest`.

    Checks the exchange, the month and the symbol before any download. `config` and `http` are the sources' and
    downloads' settings (`Settings.from_env().sources` / `.http`); a caller that passes none gets them from the
    environment through `domain.settings`, their one owner. Extra keyword arguments go to the source (e.g.
    `s3_client=` for Hyperliquid). Returns the source's `SourceResult`. With `config.source == "tardis"` the
    month is read from Tardis-format CSV under `config.tardis_url` instead of the exchange's public archive.
    """
    check_exchange(exchange)
    check_month(month)
    return _call_source("fetch_month", exchange, symbol, month, dest=dest, config=config, http=http, **kwargs)


def fetch_day(
    exchange: str,
    symbol: str,
    day: str,
    *,
    dest: Path,
    config: SourceSettings | None = None,
    http: HttpSettings | None = None,
    **kwargs: Any,
) -> Any:
    """Canonical trades of ONE UTC day (exchange time) of `symbol` on `exchange`, written to `dest` (a parquet file).

    The rows are exactly the rows the monthly raw file of that month holds for that day (same dtypes, order,
    duplicate and conflict rules); the `SourceResult` has `day` set and lists the objects read. Checks the
    exchange, the day and the symbol before any I/O, like `fetch_month`, and takes the same `config`, `http` and
    extra keywords. What each exchange reads: Binance the daily zip + `.CHECKSUM`; OKX the UTC+8 files dated `day`
    and the day after; Hyperliquid the day's hours plus the hour on each side; Tardis the files of the day before
    (inside the month), the day and the day after (late arrivals).

    A day not out yet raises `DayNotPublishedError` (`sources.daily`, re-exported here) (a `NotPublishedError`) at once, naming the
    missing objects, without the 404 patience of a published month; its `later_published` is True when the
    upstream already published a later object, i.e. it skipped this one and the day may never be complete.
    """
    check_exchange(exchange)
    check_day(day)
    return _call_source("fetch_day", exchange, symbol, day, dest=dest, config=config, http=http, **kwargs)


def check_exchange(exchange: str) -> None:
    """`SymbolError` unless a source module serves `exchange`."""
    if exchange not in SOURCE_MODULES:
        raise SymbolError(f"unsupported exchange {exchange!r}: supported are {', '.join(EXCHANGES)}")


def _call_source(
    function: str,
    exchange: str,
    symbol: str,
    period: str,
    *,
    dest: Path,
    config: SourceSettings | None,
    http: HttpSettings | None,
    **kwargs: Any,
) -> Any:
    """`function` ("fetch_month" or "fetch_day") of the exchange's source module, or of `tardis` when the settings
    say so, with the symbol checked (before any I/O; sources get the Atlas symbol) and the settings filled in."""
    from aperiodic_pipelines.domain.symbols import resolve_symbol

    symbol, _native = resolve_symbol(exchange, symbol)
    config = config or SourceSettings.from_env()
    http = http or HttpSettings.from_env()
    if config.source == "tardis":
        # Tardis-format files: the exchange's trades with arrival times, wherever the user keeps them.
        kwargs.pop("s3_client", None)
        kwargs["exchange"] = exchange
        module_name = "tardis"
    else:
        module_name = SOURCE_MODULES[exchange]
    module = importlib.import_module(f"{__name__}.{module_name}")
    return getattr(module, function)(symbol, period, dest=Path(dest), config=config, http=http, **kwargs)


def __getattr__(name: str) -> Any:
    """`sources.DayNotPublishedError`, re-exported lazily: importing the registry imports no module below it."""
    if name == "DayNotPublishedError":
        from aperiodic_pipelines.sources.daily import DayNotPublishedError

        return DayNotPublishedError
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["EXCHANGES", "SOURCE_MODULES", "DayNotPublishedError", "fetch_day", "fetch_month", "source_fetch_month"]
