"""Partitions: one instrument × one calendar month (UTC) per partition.

The instrument dimension is dynamic (operators register instruments at run time); its keys fold the exchange
and the Atlas symbol into one string, `{exchange}:{atlas_symbol}`, because a multi-partition definition
takes exactly two dimensions. Month keys are Dagster's monthly keys, `YYYY-MM-01`.
"""

from __future__ import annotations

import re

from dagster import (
    DynamicPartitionsDefinition,
    MonthlyPartitionsDefinition,
    MultiPartitionKey,
    MultiPartitionsDefinition,
)

from aperiodic_pipelines.errors import SymbolError

EXCHANGES: tuple[str, ...] = ("binance-futures", "okx-perps", "hyperliquid-perps")
INSTRUMENTS_PARTITIONS_NAME = "instruments"
FIRST_MONTH = "2019-09-01"  # Binance USD-M futures archives start in September 2019

# Dagster reserves these characters in partition keys (multi-partition separator and range syntax).
_FORBIDDEN_IN_KEYS = re.compile(r"[|,\[\]\s]")
_MONTH = re.compile(r"^(\d{4})-(\d{2})(?:-01)?$")

instrument_partitions = DynamicPartitionsDefinition(name=INSTRUMENTS_PARTITIONS_NAME)
month_partitions = MonthlyPartitionsDefinition(start_date=FIRST_MONTH, end_offset=0)
flow_partitions = MultiPartitionsDefinition({"instrument": instrument_partitions, "month": month_partitions})


def instrument_key(exchange: str, symbol: str) -> str:
    """`binance-futures`, `perpetual-BTC-USDT:USDT` → `binance-futures:perpetual-BTC-USDT:USDT`."""
    if exchange not in EXCHANGES:
        raise SymbolError(f"unknown exchange {exchange!r}; supported: {', '.join(EXCHANGES)}")
    if not symbol or _FORBIDDEN_IN_KEYS.search(symbol):
        raise SymbolError(
            f"symbol {symbol!r} cannot be part of a partition key (empty, or contains one of | , [ ] or whitespace);"
            " expected an Atlas symbol such as perpetual-BTC-USDT:USDT"
        )
    return f"{exchange}:{symbol}"


def parse_instrument_key(key: str) -> tuple[str, str]:
    """`binance-futures:perpetual-BTC-USDT:USDT` → (`binance-futures`, `perpetual-BTC-USDT:USDT`).

    The exchange never contains `:`, so the key splits on the first one; the symbol may contain more.
    """
    exchange, sep, symbol = key.partition(":")
    if not sep or not symbol:
        raise SymbolError(
            f"instrument key {key!r} is not '{{exchange}}:{{atlas_symbol}}',"
            " e.g. 'binance-futures:perpetual-BTC-USDT:USDT'"
        )
    instrument_key(exchange, symbol)  # same validation as when building one
    return exchange, symbol


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


def flow_partition_key(exchange: str, symbol: str, month: str) -> MultiPartitionKey:
    """The instrument × month key of one partition, e.g. for `materialize(..., partition_key=...)`."""
    return MultiPartitionKey({"instrument": instrument_key(exchange, symbol), "month": month_partition_key(month)})


def split_partition_key(partition_key: str | MultiPartitionKey) -> tuple[str, str, str]:
    """A multi-partition key → (exchange, atlas_symbol, `YYYY-MM`)."""
    if isinstance(partition_key, MultiPartitionKey):
        keys = partition_key.keys_by_dimension
    else:
        # Dagster joins dimension values with `|` in alphabetical order of the names: instrument, month.
        instrument, _, month = str(partition_key).rpartition("|")
        keys = {"instrument": instrument, "month": month}
    exchange, symbol = parse_instrument_key(keys["instrument"])
    return exchange, symbol, month_of(keys["month"])

