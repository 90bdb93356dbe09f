"""Source registry: one `fetch_month` per exchange, turning its public archive into canonical trades.

Source modules are imported on first use, so a module that is missing or broken only affects its own exchange.

    from aperiodic_pipelines.sources import fetch_month
    result = fetch_month("binance-futures", "perpetual-BTC-USDT:USDT", "2024-01", dest=Path("data/raw"))
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from aperiodic_pipelines.errors import AperiodicError, SymbolError

EXCHANGES: tuple[str, ...] = ("binance-futures", "okx-perps", "hyperliquid-perps")
# exchange → module under aperiodic_pipelines.sources that exposes fetch_month(symbol, month, *, dest, config, ...)
SOURCE_MODULES: dict[str, str] = {
    "binance-futures": "binance",
    "okx-perps": "okx",
    "hyperliquid-perps": "hyperliquid",
}

FetchMonth = Callable[..., Any]


class InvalidMonthError(AperiodicError, ValueError):
    """A month that is not written `YYYY-MM`."""


def validate_month(month: str) -> str:
    """Return `month` if it reads `YYYY-MM` (01..12); else raise `InvalidMonthError` naming it."""
    if not isinstance(month, str) or not re.fullmatch(r"(19|20)\d\d-(0[1-9]|1[0-2])", month):
        raise InvalidMonthError(f"month must look like 'YYYY-MM' (e.g. 2024-01), got {month!r}")
    return month


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
    from aperiodic_pipelines.sources.config import SourceConfig
    from aperiodic_pipelines.sources.symbols import resolve_symbol

    if exchange not in SOURCE_MODULES:
        raise SymbolError(f"unsupported exchange {exchange!r}: supported are {', '.join(EXCHANGES)}")
    validate_month(month)
    symbol, _native = resolve_symbol(exchange, symbol)  # a bad symbol fails here, before any I/O; sources get Atlas
    config = config or SourceConfig.from_env()
    if config.source == "tardis":
        # Tardis-format files: the exchange's trades with arrival times, wherever the user keeps them.
        from aperiodic_pipelines.sources import tardis

        kwargs.pop("s3_client", None)
        return tardis.fetch_month(symbol, month, dest=Path(dest), config=config, exchange=exchange, **kwargs)
    fetch = SOURCES[exchange]
    return fetch(symbol, month, dest=Path(dest), config=config, **kwargs)


__all__ = ["EXCHANGES", "SOURCES", "SOURCE_MODULES", "InvalidMonthError", "fetch_month", "validate_month"]
