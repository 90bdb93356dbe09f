"""Partitions: per exchange, one instrument × one calendar month (UTC) per partition.

The exchanges themselves (name, slug, first archive month, which variants exist) are the domain's
(`domain.exchanges`); this module adds only what Dagster needs of them. Each exchange has its own asset graph and
its own two dimensions:
- `instrument`: dynamic partitions named `{slug}_instruments` (e.g. `binance_futures_instruments`), keyed by the
  exchange's native id (`BTCUSDT`, `BTC-USDT-SWAP`, `BTC`): short, exactly what the exchange and the store use;
- `month`: monthly keys `YYYY-MM-01` from the exchange's first archive month to the last complete month.

A partition key reads `BTCUSDT|2024-01-01` (Dagster joins the dimensions in alphabetical order of their names).
Dagster recommends at most ~100,000 partitions per asset: 500 instruments × 8 years (96 months) is 48,000.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from typing import Any

from dagster import (
    DynamicPartitionsDefinition,
    MonthlyPartitionsDefinition,
    MultiPartitionKey,
    MultiPartitionsDefinition,
)

from aperiodic_pipelines.domain.errors import InvalidMonthError, SymbolError
from aperiodic_pipelines.domain.exchanges import EXCHANGES, Exchange, exchange_of, exchange_of_slug
from aperiodic_pipelines.domain.exchanges import EXCHANGES_BY_NAME as DOMAIN_EXCHANGES
from aperiodic_pipelines.domain.months import check_month

__all__ = [
    "EXCHANGES",
    "EXCHANGES_BY_NAME",
    "MAX_PARTITIONS_PER_ASSET",
    "PartitionedExchange",
    "exchange_of",
    "exchange_of_slug",
    "flow_partition_key",
    "instrument_key",
    "month_of",
    "month_partition_key",
    "partitioned_exchange",
    "split_partition_key",
]

MAX_PARTITIONS_PER_ASSET = 100_000  # Dagster's recommendation

# Dagster reserves these characters in partition keys (multi-partition separator and range syntax).
_FORBIDDEN_IN_KEYS = re.compile(r"[|,\[\]\s]")


@dataclass(frozen=True)
class PartitionedExchange:
    """A domain `Exchange` as one asset graph sees it: read from one source kind (`archive` or `tardis`, which
    decides the variants), with its Dagster partitions. Build it with `partitioned_exchange` (cached, so every
    asset, check and job of a graph shares one partitions definition)."""

    exchange: Exchange
    source: str  # SourceSettings.source

    @property
    def name(self) -> str:
        return self.exchange.name

    @property
    def slug(self) -> str:
        return self.exchange.slug

    @property
    def first_month(self) -> str:
        return self.exchange.first_month

    @property
    def instruments_name(self) -> str:
        return self.exchange.instruments_name

    @property
    def variants(self) -> tuple[str, ...]:
        """The timestamp variants this graph builds (`exchange`, and `true` where arrival times exist)."""
        return self.exchange.variants(self.source)

    @property
    def has_arrival_times(self) -> bool:
        return self.exchange.has_arrival_times(self.source)

    @property
    def instrument_partitions(self) -> DynamicPartitionsDefinition:
        return instrument_partitions(self.exchange)

    @property
    def month_partitions(self) -> MonthlyPartitionsDefinition:
        return month_partitions(self.exchange)

    @property
    def partitions(self) -> MultiPartitionsDefinition:
        return flow_partitions(self.exchange)


@cache
def partitioned_exchange(exchange: Exchange | str, source: str = "archive") -> PartitionedExchange:
    """The graph's view of `exchange` (a domain Exchange or its name) read from `source`."""
    return PartitionedExchange(exchange_of(exchange) if isinstance(exchange, str) else exchange, source)


@cache
def instrument_partitions(exchange: Exchange) -> DynamicPartitionsDefinition:
    return DynamicPartitionsDefinition(name=exchange.instruments_name)


@cache
def month_partitions(exchange: Exchange) -> MonthlyPartitionsDefinition:
    return MonthlyPartitionsDefinition(start_date=f"{exchange.first_month}-01", end_offset=0)


@cache
def flow_partitions(exchange: Exchange) -> MultiPartitionsDefinition:
    """instrument × month: the partitions of every asset of the exchange's flow graph."""
    return MultiPartitionsDefinition(
        {"instrument": instrument_partitions(exchange), "month": month_partitions(exchange)}
    )


# Each exchange as read from its own archive, by name, for callers outside a code location that need its
# partitions (which are the same for every source): the CLI's instrument listing, tests. `exchange_of`,
# `exchange_of_slug` and `EXCHANGES` are the domain's, re-exported for callers not yet importing the domain.
EXCHANGES_BY_NAME: dict[str, PartitionedExchange] = {
    name: partitioned_exchange(exchange) for name, exchange in DOMAIN_EXCHANGES.items()
}


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
    """Monthly partition key `2024-01-01` (or a month `2024-01`) → `2024-01`, checked by the domain's one rule."""
    if not isinstance(month_key, str):
        raise InvalidMonthError(f"month partition key must be 'YYYY-MM-01', got {month_key!r}")
    return check_month(month_key[:-3] if month_key.endswith("-01") and len(month_key) == 10 else month_key)


def month_partition_key(month: str) -> str:
    """`2024-01` → the monthly partition key `2024-01-01`."""
    return f"{month_of(month)}-01"


def flow_partition_key(exchange: str, native_symbol: str, month: str) -> MultiPartitionKey:
    """The instrument × month key of one partition of `exchange`'s graph, e.g. `BTCUSDT|2024-01-01`."""
    return MultiPartitionKey(
        {"instrument": instrument_key(exchange, native_symbol), "month": month_partition_key(month)}
    )


# An instrument's first month, kept with its registration in the instance's key-value store (run storage cursor
# values: the same database as the dynamic partitions). Written by `operator.registry`; read by the daily asset.
FIRST_MONTH_KEY = "aperiodic/first_month/{exchange}/{native}"


def first_month_key(exchange: str, native_symbol: str) -> str:
    return FIRST_MONTH_KEY.format(exchange=exchange, native=native_symbol)


def recorded_first_month(instance: Any, exchange: str, native_symbol: str) -> str | None:
    """The first month registered for the instrument (`instruments add`), or None."""
    key = first_month_key(exchange, native_symbol)
    return instance.run_storage.get_cursor_values({key}).get(key) or None


def instrument_first_month(instance: Any, exchange: PartitionedExchange, native_symbol: str) -> str:
    """The instrument's first month as registered (`instruments add`), else the exchange's archive start."""
    recorded = recorded_first_month(instance, exchange.name, native_symbol)
    return max(recorded or exchange.first_month, exchange.first_month)


def split_partition_key(partition_key: str | MultiPartitionKey) -> tuple[str, str]:
    """A multi-partition key → (native symbol, `YYYY-MM`)."""
    if isinstance(partition_key, MultiPartitionKey):
        keys = partition_key.keys_by_dimension
    else:
        # Dagster joins dimension values with `|` in alphabetical order of the names: instrument, month.
        instrument, _, month = str(partition_key).rpartition("|")
        keys = {"instrument": instrument, "month": month}
    return keys["instrument"], month_of(keys["month"])
