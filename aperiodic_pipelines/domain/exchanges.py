"""The exchanges: one registry of what the platform reads.

Each exchange has a name (`binance-futures`, the path segment of the published layout), a slug (`binance_futures`:
asset key prefix, job, pool and partitions names), the first month its public archive holds, and whether its own
archive records arrival times (the `true` variant). With `APERIODIC_SOURCE=tardis` every exchange is read from
Tardis-format files, which always carry arrival times: `Exchange.variants(source)` says which variants exist.
"""

from __future__ import annotations

from dataclasses import dataclass

from aperiodic_pipelines.domain.errors import SymbolError
from aperiodic_pipelines.domain.intervals import TIMESTAMPS


@dataclass(frozen=True)
class Exchange:
    name: str  # binance-futures
    first_month: str  # YYYY-MM: the first month its public archive holds
    archive_has_arrival_times: bool  # the exchange's own archive records when each trade reached the collector
    native_examples: str  # what its native ids look like, for messages
    archive: str  # where its public archive lives, for messages

    @property
    def slug(self) -> str:
        """`binance-futures` → `binance_futures`."""
        return self.name.replace("-", "_")

    @property
    def instruments_name(self) -> str:
        """Name of the exchange's dynamic instrument partitions."""
        return f"{self.slug}_instruments"

    @property
    def flow_job_name(self) -> str:
        return f"{self.slug}_flow_bars_job"

    def has_arrival_times(self, source: str = "archive") -> bool:
        return source == "tardis" or self.archive_has_arrival_times

    def variants(self, source: str = "archive") -> tuple[str, ...]:
        """The timestamp variants published for this exchange when read from `source` (`archive` or `tardis`)."""
        return TIMESTAMPS if self.has_arrival_times(source) else TIMESTAMPS[:1]


# First archive months: Binance USD-M futures on data.binance.vision start with 2019-09 (BTCUSDT's listing).
# OKX: the first USDT-margined swaps whose contract values the OKX source knows (2019-12); some instruments'
# archives start later. Hyperliquid: the node archive (node_trades) starts 2025-03-22 10:00 UTC.
_REGISTRY: tuple[Exchange, ...] = (
    Exchange(
        "binance-futures",
        "2019-09",
        archive_has_arrival_times=False,
        native_examples="BTCUSDT, ETHUSDC, BTCUSDT_240329",
        archive="data.binance.vision data/futures/um",
    ),
    Exchange(
        "okx-perps",
        "2019-12",
        archive_has_arrival_times=False,
        native_examples="BTC-USDT-SWAP, ETH-USDC-SWAP, BTC-USD-SWAP",
        archive="OKX traderecords (daily trade files)",
    ),
    Exchange(
        "hyperliquid-perps",
        "2025-03",
        archive_has_arrival_times=True,
        native_examples="BTC, ETH, kPEPE, xyz:AAPL",
        archive="s3://hl-mainnet-node-data (node fills, from 2025-03-22)",
    ),
)
EXCHANGES_BY_NAME: dict[str, Exchange] = {e.name: e for e in _REGISTRY}
EXCHANGES: tuple[str, ...] = tuple(EXCHANGES_BY_NAME)


def exchange_of(name: object) -> Exchange:
    """The registered exchange called `name`; a `SymbolError` listing the supported ones otherwise."""
    try:
        return EXCHANGES_BY_NAME[name]  # type: ignore[index]
    except (KeyError, TypeError):
        raise SymbolError(f"unknown exchange {name!r}; supported: {', '.join(EXCHANGES)}") from None


def exchange_of_slug(slug: str) -> Exchange | None:
    """`binance_futures` → its Exchange (None when the slug is not an exchange's)."""
    return next((e for e in _REGISTRY if e.slug == slug), None)
