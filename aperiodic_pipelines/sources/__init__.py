"""Source registry: one `fetch_month` per exchange, turning its public archive into canonical trades.

A source module is imported when its exchange is first asked for, so a module that is missing or broken only
affects its own exchange (and `import aperiodic_pipelines.sources` stays cheap).

    from aperiodic_pipelines.sources import fetch_month
    result = fetch_month("binance-futures", "perpetual-BTC-USDT:USDT", "2024-01", dest=Path("data/raw"),
                         config=settings.sources, http=settings.http)
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aperiodic_pipelines.domain.errors import SymbolError
from aperiodic_pipelines.domain.exchanges import EXCHANGES
from aperiodic_pipelines.domain.months import check_month
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
    if exchange not in SOURCE_MODULES:
        raise SymbolError(f"unsupported exchange {exchange!r}: supported are {', '.join(EXCHANGES)}")
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
    from aperiodic_pipelines.domain.symbols import resolve_symbol

    if exchange not in SOURCE_MODULES:
        raise SymbolError(f"unsupported exchange {exchange!r}: supported are {', '.join(EXCHANGES)}")
    check_month(month)
    symbol, _native = resolve_symbol(exchange, symbol)  # a bad symbol fails here, before any I/O; sources get Atlas
    config = config or SourceSettings.from_env()
    if config.source == "tardis":
        # Tardis-format files: the exchange's trades with arrival times, wherever the user keeps them.
        from aperiodic_pipelines.sources import tardis

        kwargs.pop("s3_client", None)
        return tardis.fetch_month(
            symbol, month, dest=Path(dest), config=config, http=http or HttpSettings.from_env(), exchange=exchange,
            **kwargs,
        )
    http = http or HttpSettings.from_env()
    return source_fetch_month(exchange)(symbol, month, dest=Path(dest), config=config, http=http, **kwargs)


__all__ = ["EXCHANGES", "SOURCE_MODULES", "fetch_month", "source_fetch_month"]
