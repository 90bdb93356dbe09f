"""A deliberately naive reference implementation of flow bars, written straight from spec §2–§3.

Small inputs only: it walks the trades one by one in Python. It exists to check the real engine, so it is
written for obviousness, not speed, and without looking at the engine's code. Null is represented by NaN
inside this module and turned into a real null in the returned frame.

Two shortcuts keep it usable on monthly grids of 1s bars, both exact:
- a second without trades has a return of 0 (the price is carried forward), or no return at all before the
  first trade; either way it adds nothing to Σ r², so only seconds holding trades are visited;
- a toxicity window whose 20 flows are all exactly 0 has a standard deviation of 0, so its score is null;
  only bars within 20 bars after a bar with non-zero flow are computed.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from itertools import groupby

import numpy as np
import polars as pl

from aperiodic_pipelines.domain.errors import InvalidTradesError

US_PER_SECOND = 1_000_000
INTERVAL_SECONDS = {"1s": 1, "1m": 60, "5m": 300, "15m": 900, "30m": 1_800, "1h": 3_600, "4h": 14_400, "1d": 86_400}
WINDOW = 20
SIDES = ("buy", "sell")
BUCKETS = ("small", "medium", "large")

FIELDS = [
    "taker_buy_volume",
    "taker_sell_volume",
    "taker_buy_count",
    "taker_sell_count",
    "volume_delta",
    "volume_delta_notional",
    "flow_entropy",
    "flow_toxicity_score",
    "taker_buy_sell_ratio",
    "taker_buy_sell_count_ratio",
    "taker_buy_sell_percentage",
    "taker_buy_sell_count_percentage",
]
for _side in SIDES:
    for _bucket in BUCKETS:
        FIELDS += [f"taker_{_side}_{_bucket}_order_volume", f"taker_{_side}_{_bucket}_order_count"]
for _side in SIDES:
    for _what in ("percentage", "count_percentage"):
        FIELDS += [f"taker_{_side}_{_bucket}_order_{_what}" for _bucket in BUCKETS]
assert len(FIELDS) == 36
COLUMNS = ["time", *FIELDS]
COUNT_FIELDS = {f for f in FIELDS if f.endswith("_count")}
ADDITIVE_FIELDS = [
    "taker_buy_volume", "taker_sell_volume", "taker_buy_count", "taker_sell_count", "volume_delta",
    "volume_delta_notional",
    *[f"taker_{s}_{b}_order_{w}" for s in SIDES for b in BUCKETS for w in ("volume", "count")],
]
NULLABLE_FIELDS = [f for f in FIELDS if f not in ADDITIVE_FIELDS]


def month_start_us(month: str) -> int:
    year, mon = (int(part) for part in month.split("-"))
    return int(datetime(year, mon, 1, tzinfo=UTC).timestamp()) * US_PER_SECOND


def next_month(month: str) -> str:
    year, mon = (int(part) for part in month.split("-"))
    return f"{year + mon // 12:04d}-{mon % 12 + 1:02d}"


def previous_month(month: str) -> str:
    year, mon = (int(part) for part in month.split("-"))
    return f"{year - (mon == 1):04d}-{(mon - 2) % 12 + 1:02d}"


def bucket_of(notional: float) -> str:
    if notional < 100:
        return "small"
    if notional < 1000:
        return "medium"
    return "large"


def binary_entropy(p: float) -> float:
    total = 0.0
    for q in (p, 1.0 - p):
        if q > 0:
            total -= q * math.log2(q)
    return min(1.0, max(0.0, total))


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator != 0 else math.nan


def reference_bars(
    trades: pl.DataFrame,
    previous: pl.DataFrame | None = None,
    *,
    month: str,
    interval: str,
    timestamp: str = "exchange",
) -> pl.DataFrame:
    """One interval's dense monthly bar table (time + 36 fields), computed the slow and obvious way."""
    time_column = {"exchange": "ts_exchange", "true": "ts_arrival"}[timestamp]
    step = INTERVAL_SECONDS[interval] * US_PER_SECOND
    start, end = month_start_us(month), month_start_us(next_month(month))
    # The two-month span: bars of the previous month exist only when the instrument has a previous month.
    span_start = month_start_us(previous_month(month)) if previous is not None else start
    n_bars = (end - span_start) // step

    rows = []  # (time, trade_id, price, qty, is_buy)
    for frame in (previous, trades):
        if frame is None:
            continue
        for row in frame.iter_rows(named=True):
            if row[time_column] is None:
                raise InvalidTradesError(f"{time_column} is null for trade {row['trade_id']}")
            rows.append((row[time_column], row["trade_id"], row["price"], row["qty"], row["is_buy"]))
    rows.sort(key=lambda r: (r[0], r[1]))

    # Additive sums per bar of the whole span.
    sums = {f: np.zeros(n_bars, dtype=np.float64) for f in ADDITIVE_FIELDS}
    buy_notional = np.zeros(n_bars)
    sell_notional = np.zeros(n_bars)
    for time, _trade_id, price, qty, is_buy in rows:
        if not span_start <= time < end:
            continue
        bar = (time - span_start) // step
        side = "buy" if is_buy else "sell"
        notional = price * qty
        sums[f"taker_{side}_volume"][bar] += qty
        sums[f"taker_{side}_count"][bar] += 1
        sums[f"taker_{side}_{bucket_of(notional)}_order_volume"][bar] += notional
        sums[f"taker_{side}_{bucket_of(notional)}_order_count"][bar] += 1
        if is_buy:
            buy_notional[bar] += notional
        else:
            sell_notional[bar] += notional
    sums["volume_delta"] = sums["taker_buy_volume"] - sums["taker_sell_volume"]
    sums["volume_delta_notional"] = buy_notional - sell_notional

    # Realised volatility: Σ r_k² per bar over the seconds k holding trades (others add 0, see module doc).
    squared_returns = np.zeros(n_bars)
    last_price = None
    for second, group in groupby(rows, key=lambda r: r[0] // US_PER_SECOND):
        close = list(group)[-1][2]  # last trade of the second, ties already broken by trade_id
        if last_price is not None and span_start <= second * US_PER_SECOND < end:
            squared_returns[(second * US_PER_SECOND - span_start) // step] += math.log(close / last_price) ** 2
        last_price = close
    realised_vol = np.sqrt(squared_returns)

    # Toxicity score: past window of 20 bars, never including the bar itself.
    flow = sums["volume_delta_notional"]
    score = np.full(n_bars, math.nan)
    candidates = set()
    for bar in np.flatnonzero(flow != 0):
        candidates.update(range(bar + 1, bar + WINDOW + 1))
    for bar in sorted(candidates):
        if bar < WINDOW or bar >= n_bars:
            continue
        window = flow[bar - WINDOW:bar]
        vol_window = realised_vol[bar - WINDOW:bar]
        mean = math.fsum(window) / WINDOW
        std = math.sqrt(math.fsum((x - mean) ** 2 for x in window) / (WINDOW - 1))
        mean_vol = math.fsum(vol_window) / WINDOW
        if std == 0 or mean_vol == 0:
            continue
        score[bar] = (flow[bar] - mean) / std * (realised_vol[bar] / mean_vol)

    # Keep only the month's bars; derive the ratios for the bars holding trades.
    first = (start - span_start) // step
    out = {f: sums[f][first:].copy() for f in ADDITIVE_FIELDS}
    out["flow_toxicity_score"] = score[first:]
    for f in NULLABLE_FIELDS:
        if f != "flow_toxicity_score":
            out[f] = np.full(n_bars - first, math.nan)
    for i in np.flatnonzero(out["taker_buy_count"] + out["taker_sell_count"] > 0):  # empty bars stay null
        buy_vol, sell_vol = out["taker_buy_volume"][i], out["taker_sell_volume"][i]
        buys, sells = out["taker_buy_count"][i], out["taker_sell_count"][i]
        out["taker_buy_sell_ratio"][i] = _ratio(buy_vol, sell_vol)
        out["taker_buy_sell_count_ratio"][i] = _ratio(buys, sells)
        out["taker_buy_sell_percentage"][i] = _ratio(buy_vol, buy_vol + sell_vol)
        out["taker_buy_sell_count_percentage"][i] = _ratio(buys, buys + sells)
        if buy_vol + sell_vol > 0:
            out["flow_entropy"][i] = binary_entropy(buy_vol / (buy_vol + sell_vol))
        for side, side_count in (("buy", buys), ("sell", sells)):
            side_notional = math.fsum(out[f"taker_{side}_{b}_order_volume"][i] for b in BUCKETS)
            for b in BUCKETS:
                out[f"taker_{side}_{b}_order_percentage"][i] = _ratio(
                    out[f"taker_{side}_{b}_order_volume"][i], side_notional
                )
                out[f"taker_{side}_{b}_order_count_percentage"][i] = _ratio(
                    out[f"taker_{side}_{b}_order_count"][i], side_count
                )

    times = start + np.arange(n_bars - first, dtype=np.int64) * step
    columns = [pl.Series("time", times, dtype=pl.Int64).cast(pl.Datetime("us"))]
    for f in FIELDS:
        if f in COUNT_FIELDS:
            columns.append(pl.Series(f, out[f].astype(np.int64), dtype=pl.Int64))
        else:
            columns.append(pl.Series(f, out[f], dtype=pl.Float64, nan_to_null=True))
    return pl.DataFrame(columns)
