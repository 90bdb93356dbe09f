"""Source registry: one `fetch_month` per exchange, turning its public archive into canonical trades.

Source modules are imported on first use, so a module that is missing or broken only affects its own exchange.

    from aperiodic_pipelines.sources import fetch_month
    result = fetch_month("binance-futures", "perpetual-BTC-USDT:USDT", "2024-01", dest=Path("data/raw"))
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from aperiodic_pipelines.domain.errors import SymbolError
from aperiodic_pipelines.domain.exchanges import EXCHANGES
from aperiodic_pipelines.domain.months import check_month

# exchange → module under aperiodic_pipelines.sources that exposes fetch_month(symbol, month, *, dest, config, ...)
SOURCE_MODULES: dict[str, str] = {
    "binance-futures": "binance",
    "okx-perps": "okx",
    "hyperliquid-perps": "hyperliquid",
}

FetchMonth = Callable[..., Any]


class _LazySources(Mapping[str, FetchMonth]):
    """exchange → that source module's `fetch_month`, imported when first looked up."""

    def __getitem__(self, exchange: str) -> FetchMonth:
        if exchange not in SOURCE_MODULES:
            raise SymbolError(f"unsupported exchange {exchange!r}: supported are {', '.join(EXCHANGES)}")
        module = importlib.import_module(f"{__name__}.{SOURCE_MODULES[exchange]}")
        return module.fetch_month

    def __iter__(self) -> Iterator[str]:
        return iter(SOURCE_MODULES)

    def __len__(self) -> int:
        return len(SOURCE_MODULES)

    def __contains__(self, exchange: object) -> bool:
        return exchange in SOURCE_MODULES


SOURCES: Mapping[str, FetchMonth] = _LazySources()


def fetch_month(
    exchange: str,
    symbol: str,
    month: str,
    *,
    dest: Path,
    config: Any | None = None,
    **kwargs: Any,
) -> Any:
    """Canonical trades of `symbol` (Atlas symbol or native id) on `exchange` for `month`, written under `dest`.

    Checks the exchange, the month and the symbol before any download; `config` defaults to
    `SourceConfig.from_env()`. Extra keyword arguments go to the source (e.g. `s3_client=` for Hyperliquid).
    Returns the source's `SourceResult`. With `config.source == "tardis"` (`APERIODIC_SOURCE=tardis`) the month
    is read from Tardis-format CSV under `APERIODIC_TARDIS_URL` instead of the exchange's public archive.
    """
    from aperiodic_pipelines.domain.symbols import resolve_symbol
    from aperiodic_pipelines.sources.config import SourceConfig

    if exchange not in SOURCE_MODULES:
        raise SymbolError(f"unsupported exchange {exchange!r}: supported are {', '.join(EXCHANGES)}")
    check_month(month)
    symbol, _native = resolve_symbol(exchange, symbol)  # a bad symbol fails here, before any I/O; sources get Atlas
    config = config or SourceConfig.from_env()
    if config.source == "tardis":
        # Tardis-format files: the exchange's trades with arrival times, wherever the user keeps them.
        from aperiodic_pipelines.sources import tardis

        kwargs.pop("s3_client", None)
        return tardis.fetch_month(symbol, month, dest=Path(dest), config=config, exchange=exchange, **kwargs)
    fetch = SOURCES[exchange]
    return fetch(symbol, month, dest=Path(dest), config=config, **kwargs)


__all__ = ["EXCHANGES", "SOURCES", "SOURCE_MODULES", "fetch_month"]
