"""Synthetic perpetual-futures trade tapes for tests and benchmarks (canonical trades, spec §1).

The tape is generated one UTC day at a time from a per-day seed, so `generate_tape` (in memory) and
`generate_tape_to_parquet` (streamed, bounded memory) produce exactly the same rows for the same arguments.
Everything is vectorised with numpy; no per-trade Python code runs.

Features a flow engine must cope with, all present in every tape of a few thousand trades or more:
price random walk on a tick grid, lot-sized heavy-tailed quantities spanning the three notional buckets,
bursts and quiet gaps (fully empty minutes), runs of buys or sells, several trades in one millisecond,
trades exactly on second and minute boundaries, a trade at the month's first µs and one at its last µs,
arrival times a few ms after exchange times, some of which spill into the next month.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from aperiodic_pipelines.atomic import atomic_path
from aperiodic_pipelines.trades import CANONICAL_COLUMNS, CANONICAL_SCHEMA

US_PER_SECOND = 1_000_000
US_PER_DAY = 86_400 * US_PER_SECOND
GENERATOR_VERSION = "2"
PARQUET_METADATA_KEY = b"aperiodic.synthetic"

# Median notional of a trade, in quote currency: lands in the medium bucket, the lognormal tail reaches
# the small and large buckets on either side whatever the price level.
_MEDIAN_NOTIONAL = 250.0
_QUIET_GAP_SECONDS = (130.0, 900.0)  # >= 2 min, so every quiet gap contains at least one fully empty minute


@dataclass
class _Carry:
    """State handed from one day to the next so the tape is continuous."""

    price_ticks: int
    next_trade_id: int
    buying: bool


def month_bounds_us(month: str) -> tuple[int, int]:
    """`"2024-01"` → (first µs of the month, first µs of the next month), µs since the epoch, UTC."""
    try:
        year, mon = (int(part) for part in month.split("-"))
        start = datetime(year, mon, 1, tzinfo=UTC)
    except (ValueError, AttributeError):
        raise ValueError(f"month must look like 'YYYY-MM', got {month!r}") from None
    if len(month) != 7:
        raise ValueError(f"month must look like 'YYYY-MM', got {month!r}")
    end = datetime(year + mon // 12, mon % 12 + 1, 1, tzinfo=UTC)
    return int(start.timestamp()) * US_PER_SECOND, int(end.timestamp()) * US_PER_SECOND


def _decimals(step: float) -> int:
    """Digits after the point of a tick or lot size (0.1 → 1, 0.001 → 3, 5 → 0)."""
    return max(0, -Decimal(repr(step)).normalize().as_tuple().exponent)


def _run_lengths(rng: np.random.Generator, total: int, mean_short: float, long_share: float,
                 long_scale: float) -> np.ndarray:
    """Lengths of alternating runs covering `total` items: mostly short, a share long and heavy-tailed."""
    estimate = max(8, int(total / mean_short) + 8)
    lengths = rng.geometric(1.0 / mean_short, size=estimate)
    long_runs = rng.random(estimate) < long_share
    lengths[long_runs] += (rng.pareto(1.5, size=int(long_runs.sum())) * long_scale).astype(np.int64)
    while lengths.sum() < total:  # rare: top up so the runs cover every item
        lengths = np.concatenate([lengths, rng.geometric(1.0 / mean_short, size=estimate)])
    return lengths


def _alternating(rng: np.random.Generator, total: int, first: bool, **run_args: float) -> np.ndarray:
    """A boolean sequence of alternating runs (one-sided stretches) starting with `first`."""
    lengths = _run_lengths(rng, total, **run_args)
    values = (np.arange(lengths.size) % 2 == 0) == first
    return np.repeat(values, lengths)[:total]


def _day_times(rng: np.random.Generator, n: int, day_start: int, *, first_at_start: bool,
               last_at_end: bool) -> np.ndarray:
    """Sorted exchange times (µs) of `n` trades in the day starting at `day_start`: bursty, with quiet gaps."""
    # Inter-trade gaps alternate between burst and calm regimes; quiet gaps of fixed length are added on top.
    in_burst = _alternating(rng, n + 1, bool(rng.random() < 0.5), mean_short=40.0, long_share=0.05,
                            long_scale=200.0)
    gaps = rng.exponential(1.0, size=n + 1) * np.where(in_burst, 0.03, 1.0)
    n_quiet = min(n + 1, 1 + n // 200_000, 40)
    quiet_at = rng.choice(n + 1, size=n_quiet, replace=False)
    quiet_seconds = rng.uniform(*_QUIET_GAP_SECONDS, size=n_quiet)
    gaps[quiet_at] = 0.0
    if first_at_start:
        gaps[0] = 0.0
    busy_total = gaps.sum()
    if busy_total > 0:  # zero only for a lone trade pinned to the day's start
        gaps *= (86_400.0 - quiet_seconds.sum()) / busy_total
    gaps[quiet_at] = quiet_seconds
    times = day_start + np.floor(np.cumsum(gaps[:n]) * US_PER_SECOND).astype(np.int64)
    np.minimum(times, day_start + US_PER_DAY - 1, out=times)

    # Exact second and minute boundaries: floor keeps the trade inside its own second/minute.
    on_second = rng.random(n) < 0.01
    times[on_second] -= (times[on_second] - day_start) % US_PER_SECOND
    on_minute = rng.random(n) < 0.002
    times[on_minute] -= (times[on_minute] - day_start) % (60 * US_PER_SECOND)
    # Several trades in one millisecond: move a trade into its predecessor's millisecond.
    same_ms = np.zeros(n, dtype=bool)
    same_ms[1:] = rng.random(n - 1) < 0.05
    prev = np.roll(times, 1)
    room = 1_000 - prev % 1_000
    times = np.where(same_ms, prev + rng.integers(0, 1_000, size=n) % room, times)
    if first_at_start:
        times[0] = day_start
    if last_at_end:
        # The last trades fall in the month's final milliseconds; the very last one at its last µs.
        tail = min(n, 6)
        times[n - tail:] = day_start + US_PER_DAY - 1 - np.sort(rng.integers(0, 3_000, size=tail))[::-1]
        times[n - 1] = day_start + US_PER_DAY - 1
    times.sort()
    return times


def _day_frame(rng: np.random.Generator, n: int, day_start: int, carry: _Carry, *, tick: float, lot: float,
               price_decimals: int, lot_decimals: int, with_arrival: bool, first_at_start: bool,
               last_at_end: bool) -> pl.DataFrame:
    times = _day_times(rng, n, day_start, first_at_start=first_at_start, last_at_end=last_at_end)
    is_buy = _alternating(rng, n, carry.buying, mean_short=2.5, long_share=0.01, long_scale=60.0)

    # Price: mostly unchanged, else a geometric number of ticks, usually in the taker's direction.
    moves = rng.random(n) < 0.3
    with_flow = rng.random(n) < 0.7
    direction = np.where(is_buy == with_flow, 1, -1)
    steps = np.where(moves, direction * rng.geometric(0.6, size=n), 0)
    price_ticks = np.maximum(carry.price_ticks + np.cumsum(steps), 1)
    price = np.round(price_ticks * tick, price_decimals)

    # Quantity: lognormal around a medium notional, a Pareto tail for whales, at least one lot.
    median_lots = max(1.0, _MEDIAN_NOTIONAL / (carry.price_ticks * tick * lot))
    lots = np.exp(rng.normal(np.log(median_lots), 1.4, size=n))
    whales = rng.random(n) < 0.002
    lots[whales] *= np.minimum(1.0 + rng.pareto(1.2, size=int(whales.sum())) * 20.0, 1_000.0)
    lots = np.maximum(np.round(lots), 1.0)
    qty = np.round(lots * lot, lot_decimals)

    if with_arrival:
        latency = 300 + np.exp(rng.normal(np.log(2_000.0), 0.5, size=n))  # ~2 ms, right-skewed jitter
        arrival = pl.Series("ts_arrival", times + latency.astype(np.int64), dtype=pl.Int64)
    else:
        arrival = pl.Series("ts_arrival", [None] * n, dtype=pl.Int64)

    trade_ids = carry.next_trade_id + np.arange(n, dtype=np.int64)
    if n:
        carry.price_ticks = int(price_ticks[-1])
        carry.next_trade_id += n
        carry.buying = bool(is_buy[-1])
    return pl.DataFrame(
        [
            pl.Series("ts_exchange", times, dtype=pl.Int64),
            arrival,
            pl.Series("trade_id", trade_ids, dtype=pl.Int64),
            pl.Series("price", price, dtype=pl.Float64),
            pl.Series("qty", qty, dtype=pl.Float64),
            pl.Series("is_buy", is_buy, dtype=pl.Boolean),
        ]
    )


def iter_tape_days(month: str = "2024-01", n_trades: int = 100_000, seed: int = 7, *,
                   start_price: float = 42000.0, tick: float = 0.1, lot: float = 0.001,
                   with_arrival: bool = True, first_trade_id: int = 1) -> Iterator[pl.DataFrame]:
    """The tape of `generate_tape`, one UTC day per frame (days without trades are skipped)."""
    if n_trades < 0:
        raise ValueError(f"n_trades must be >= 0, got {n_trades}")
    if not (start_price > 0 and tick > 0 and lot > 0):
        raise ValueError(f"start_price, tick and lot must be > 0, got {start_price}, {tick}, {lot}")
    month_start, month_end = month_bounds_us(month)
    n_days = (month_end - month_start) // US_PER_DAY
    root = np.random.SeedSequence(seed)
    day_seeds = root.spawn(n_days + 1)
    # Busy and quiet days: activity varies from day to day.
    weights = np.random.default_rng(day_seeds[0]).lognormal(0.0, 0.3, size=n_days)
    per_day = np.random.default_rng(day_seeds[0]).multinomial(n_trades, weights / weights.sum())
    # The first and last days always trade, so the month's first and last µs are always present.
    edge_days = (0, n_days - 1)[: min(n_trades, 2)]
    for edge_day in edge_days:
        if per_day[edge_day] == 0:
            spare = per_day.copy()
            spare[list(edge_days)] -= 1  # an edge day keeps its one trade
            per_day[int(np.argmax(spare))] -= 1
            per_day[edge_day] += 1
    carry = _Carry(price_ticks=max(1, round(start_price / tick)), next_trade_id=first_trade_id, buying=True)
    price_decimals, lot_decimals = _decimals(tick), _decimals(lot)
    for day in range(n_days):
        if per_day[day] == 0:
            continue
        yield _day_frame(
            np.random.default_rng(day_seeds[day + 1]), int(per_day[day]), month_start + day * US_PER_DAY, carry,
            tick=tick, lot=lot, price_decimals=price_decimals, lot_decimals=lot_decimals,
            with_arrival=with_arrival, first_at_start=day == 0, last_at_end=day == n_days - 1,
        )


def generate_tape(month: str = "2024-01", n_trades: int = 100_000, seed: int = 7, *,
                  start_price: float = 42000.0, tick: float = 0.1, lot: float = 0.001,
                  with_arrival: bool = True, first_trade_id: int = 1) -> pl.DataFrame:
    """A month of canonical trades (spec §1) that looks like a perpetual's tape; deterministic per seed.

    Sorted by (ts_exchange, trade_id), ids contiguous from `first_trade_id`. `ts_arrival` is null when
    `with_arrival` is False.
    """
    frames = list(iter_tape_days(month, n_trades, seed, start_price=start_price, tick=tick, lot=lot,
                                 with_arrival=with_arrival, first_trade_id=first_trade_id))
    if not frames:
        return pl.DataFrame(schema=CANONICAL_SCHEMA)
    return pl.concat(frames, rechunk=True).select(CANONICAL_COLUMNS)


def synthetic_parquet_metadata(path: str | os.PathLike[str]) -> dict[str, object] | None:
    """The generator arguments recorded in a parquet file written by `generate_tape_to_parquet`, or None."""
    try:
        metadata = pq.read_schema(path).metadata or {}
    except (OSError, pa.ArrowInvalid):
        return None
    raw = metadata.get(PARQUET_METADATA_KEY)
    return json.loads(raw) if raw else None


def generate_tape_to_parquet(path: str | os.PathLike[str], month: str = "2024-01", n_trades: int = 100_000,
                             seed: int = 7, *, start_price: float = 42000.0, tick: float = 0.1,
                             lot: float = 0.001, with_arrival: bool = True, first_trade_id: int = 1,
                             compression: str = "zstd") -> int:
    """Write the tape of `generate_tape` to parquet one day (row group) at a time; return the row count.

    Memory stays bounded by one day of trades. The file appears atomically (written aside, then renamed) and
    records its generator arguments in the key-value metadata under `aperiodic.synthetic`.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    arguments = {
        "generator_version": GENERATOR_VERSION, "month": month, "n_trades": n_trades, "seed": seed,
        "start_price": start_price, "tick": tick, "lot": lot, "with_arrival": with_arrival,
        "first_trade_id": first_trade_id,
    }
    schema = pl.DataFrame(schema=CANONICAL_SCHEMA).to_arrow().schema.with_metadata(
        {PARQUET_METADATA_KEY: json.dumps(arguments, sort_keys=True).encode()}
    )
    rows = 0
    with atomic_path(target) as temp_path, pq.ParquetWriter(temp_path, schema, compression=compression) as writer:
        for day in iter_tape_days(month, n_trades, seed, start_price=start_price, tick=tick, lot=lot,
                                  with_arrival=with_arrival, first_trade_id=first_trade_id):
            writer.write_table(day.to_arrow().cast(schema), row_group_size=1 << 20)
            rows += day.height
    return rows
