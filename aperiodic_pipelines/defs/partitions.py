"""Partitions: per exchange, one instrument × one calendar month (UTC) per partition.

Each exchange has its own asset graph and its own two dimensions:
- `instrument`: dynamic partitions named `{slug}_instruments` (e.g. `binance_futures_instruments`), keyed by the
  exchange's native id (`BTCUSDT`, `BTC-USDT-SWAP`, `BTC`): short, exactly what the exchange and the store use;
- `month`: monthly keys `YYYY-MM-01` from the exchange's first archive month to the last complete month.

A partition key reads `BTCUSDT|2024-01-01` (Dagster joins the dimensions in alphabetical order of their names).
Dagster recommends at most ~100,000 partitions per asset: 500 instruments × 8 years (96 months) is 48,000.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property

from dagster import (
    DynamicPartitionsDefinition,
    MonthlyPartitionsDefinition,
    MultiPartitionKey,
    MultiPartitionsDefinition,
)

from aperiodic_pipelines.domain.errors import SymbolError

MAX_PARTITIONS_PER_ASSET = 100_000  # Dagster's recommendation

# Dagster reserves these characters in partition keys (multi-partition separator and range syntax).
_FORBIDDEN_IN_KEYS = re.compile(r"[|,\[\]\s]")
_MONTH = re.compile(r"^(\d{4})-(\d{2})(?:-01)?$")


@dataclass(frozen=True)
class Exchange:
    """One exchange's graph: its name, key prefix, first archive month and whether its source has arrival times."""

    name: str  # binance-futures
    first_month: str  # YYYY-MM: the first month its public archive holds
    has_arrival_times: bool  # the source records when each trade reached the collector (`true` variant)

    @property
    def slug(self) -> str:
        """`binance-futures` → `binance_futures`: asset key prefix, job, pool and partitions names."""
        return self.name.replace("-", "_")

    @property
    def instruments_name(self) -> str:
        """Name of the exchange's dynamic instrument partitions."""
        return f"{self.slug}_instruments"

    @cached_property
    def instrument_partitions(self) -> DynamicPartitionsDefinition:
        return DynamicPartitionsDefinition(name=self.instruments_name)

    @cached_property
    def month_partitions(self) -> MonthlyPartitionsDefinition:
        return MonthlyPartitionsDefinition(start_date=f"{self.first_month}-01", end_offset=0)

    @cached_property
    def partitions(self) -> MultiPartitionsDefinition:
        return MultiPartitionsDefinition({"instrument": self.instrument_partitions, "month": self.month_partitions})


def _tardis_source() -> bool:
    import os

    return os.environ.get("APERIODIC_SOURCE", "archive") == "tardis"


# First archive months: Binance USD-M futures data.binance.vision starts with 2019-09 (BTCUSDT's listing).
# OKX: the first USDT-margined swaps the OKX source knows contract values for (2019-12); OKX's traderecords
# archive may start later for some instruments, whose earlier months then fail "not published".
# Hyperliquid: the node archive (node_trades) starts 2025-03-22 10:00 UTC.
# Arrival times: Hyperliquid's node data (block time) always; every exchange when the source is Tardis.
EXCHANGES_BY_NAME: dict[str, Exchange] = {
    e.name: e
    for e in (
        Exchange("binance-futures", "2019-09", has_arrival_times=_tardis_source()),
        Exchange("okx-perps", "2019-12", has_arrival_times=_tardis_source()),
        Exchange("hyperliquid-perps", "2025-03", has_arrival_times=True),
    )
}
EXCHANGES: tuple[str, ...] = tuple(EXCHANGES_BY_NAME)


def exchange_of(name: str) -> Exchange:
    try:
        return EXCHANGES_BY_NAME[name]
    except KeyError:
        raise SymbolError(f"unknown exchange {name!r}; supported: {', '.join(EXCHANGES)}") from None


def exchange_of_slug(slug: str) -> Exchange | None:
    """`binance_futures` → its Exchange (None when the slug is not an exchange's)."""
    return next((e for e in EXCHANGES_BY_NAME.values() if e.slug == slug), None)


def instrument_key(exchange: str, native_symbol: str) -> str:
    """The instrument partition key: the exchange's native id, checked to be usable in a partition key."""
    exchange_of(exchange)
    if not native_symbol or _FORBIDDEN_IN_KEYS.search(native_symbol):
        raise SymbolError(
            f"symbol {native_symbol!r} cannot be part of a partition key (empty, or contains one of | , [ ] or"
            " whitespace); expected a native id such as BTCUSDT"
        )
    return native_symbol


def month_of(month_key: str) -> str:
    """Monthly partition key `2024-01-01` (or `2024-01`) → `2024-01`."""
    match = _MONTH.match(month_key)
    if not match or not 1 <= int(match.group(2)) <= 12:
        raise ValueError(f"month {month_key!r} is not YYYY-MM or YYYY-MM-01")
    return f"{match.group(1)}-{match.group(2)}"


def month_partition_key(month: str) -> str:
    """`2024-01` → the monthly partition key `2024-01-01`."""
    return f"{month_of(month)}-01"


def previous_month(month: str) -> str:
    """`2024-01` → `2023-12`."""
    year, mon = (int(part) for part in month_of(month).split("-"))
    return f"{year - 1}-12" if mon == 1 else f"{year}-{mon - 1:02d}"


def flow_partition_key(exchange: str, native_symbol: str, month: str) -> MultiPartitionKey:
    """The instrument × month key of one partition of `exchange`'s graph, e.g. `BTCUSDT|2024-01-01`."""
    return MultiPartitionKey(
        {"instrument": instrument_key(exchange, native_symbol), "month": month_partition_key(month)}
    )


def split_partition_key(partition_key: str | MultiPartitionKey) -> tuple[str, str]:
    """A multi-partition key → (native symbol, `YYYY-MM`)."""
    if isinstance(partition_key, MultiPartitionKey):
        keys = partition_key.keys_by_dimension
    else:
        # Dagster joins dimension values with `|` in alphabetical order of the names: instrument, month.
        instrument, _, month = str(partition_key).rpartition("|")
        keys = {"instrument": instrument, "month": month}
    return keys["instrument"], month_of(keys["month"])
