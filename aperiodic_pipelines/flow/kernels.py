"""Compiled (numba) loops of the engine: the per-second pass over the trades and the toxicity window.

Both are plain sequential loops that do the same IEEE operations in the same order as the numpy code they
replace (no `fastmath`, so no reassociation or fused multiply-add): results are identical bit for bit, and
they stay so whatever the batch boundaries are. This module imports numba, which costs a fraction of a second;
the engine imports it on first use only, so loading the Dagster definitions does not pay for it.
`cache=True` keeps the compiled code on disk next to this file (`__pycache__`), so a fresh process loads it
instead of compiling again.
"""

from __future__ import annotations

import numba
import numpy as np

# Error codes of `aggregate_trades`: the first offending row is then explained by the polars checks.
OK, BAD_VALUE, OUTSIDE_MONTH, UNSORTED = 0, 1, 2, 3

# Slots per second: side (buy 0, sell 1) × 3 + size bucket (small 0, medium 1, large 2).
SLOTS = 6


@numba.njit(cache=True, nogil=True, error_model="numpy")
def aggregate_trades(
    ts: np.ndarray, price: np.ndarray, qty: np.ndarray, is_buy: np.ndarray,
    lo: int, hi: int, small_below: float, large_from: float,
    state: np.ndarray, open_notional: np.ndarray, open_count: np.ndarray, open_qty: np.ndarray,
    open_price: np.ndarray,
    second: np.ndarray, notional_out: np.ndarray, count_out: np.ndarray, qty_out: np.ndarray,
    price_out: np.ndarray,
) -> tuple[int, int, int]:
    """Add trades sorted by time to per-second sums; return (closed seconds written, error code, error row).

    The second being summed when the batch ends stays open in the `open_*` arrays (`state` holds that second,
    whether one is open, and the last time seen): the next batch keeps adding to it, so each
    second's sums are added in row order, from 0.0, whatever the batching. Seconds that close are written to
    the output arrays (one row per second, at most one per trade). Each row is checked on the way (spec §1:
    price and qty finite and > 0, time inside [lo, hi), time not going back); on the first bad row the pass
    stops and reports it.
    """
    closed = 0
    current, is_open, last_time = state[0], state[1], state[2]
    for row in range(len(ts)):
        time = ts[row]
        p, q = price[row], qty[row]
        if not (p > 0.0 and p < np.inf and q > 0.0 and q < np.inf):
            return closed, BAD_VALUE, row
        if time < lo or time >= hi:
            return closed, OUTSIDE_MONTH, row
        if time < last_time:
            return closed, UNSORTED, row
        last_time = time
        sec = time // 1_000_000
        if sec != current or not is_open:
            if is_open:
                _close(current, open_notional, open_count, open_qty, open_price, closed,
                       second, notional_out, count_out, qty_out, price_out)
                closed += 1
            current = sec
            is_open = 1
        notional = p * q
        side = 0 if is_buy[row] else 1
        slot = side * 3 + (1 if notional >= small_below else 0) + (1 if notional >= large_from else 0)
        open_notional[slot] += notional
        open_count[slot] += 1
        open_qty[side] += q
        open_price[0] = p
    state[0], state[1], state[2] = current, is_open, last_time
    return closed, OK, -1


@numba.njit(cache=True, nogil=True, inline="always")
def _close(current, open_notional, open_count, open_qty, open_price, at, second, notional_out, count_out,
           qty_out, price_out):  # noqa: ANN001, ANN202 - numba infers the types
    """Write the open second's sums to row `at` of the outputs and reset them to zero."""
    second[at] = current
    for slot in range(SLOTS):
        notional_out[at, slot] = open_notional[slot]
        count_out[at, slot] = open_count[slot]
        open_notional[slot] = 0.0
        open_count[slot] = 0
    for side in range(2):
        qty_out[at, side] = open_qty[side]
        open_qty[side] = 0.0
    price_out[at] = open_price[0]


@numba.njit(cache=True, nogil=True, error_model="numpy")
def toxicity_scores(signed_flow: np.ndarray, volatility: np.ndarray, window: int) -> np.ndarray:
    """flow_norm × vol_norm of each bar over the `window` bars before it; NaN where undefined.

    The same arithmetic as the two-pass numpy formulation in `flow.toxicity` (sums from 0.0 by increasing
    lag, ddof=1). A row is defined when its window holds two neighbouring flows that differ (std > 0) and a
    positive volatility (mean > 0); the most recent such positions are tracked as the loop goes, so rows of
    a quiet stretch cost a comparison each, and the window sums are only computed for defined rows.
    """
    n = len(signed_flow)
    scores = np.full(n, np.nan)
    last_change = -1  # latest t with signed_flow[t] != signed_flow[t - 1]
    last_positive = -1  # latest t with volatility[t] > 0
    for row in range(n):
        if row >= window and last_change > row - window and last_positive >= row - window:
            flow_sum = 0.0
            vol_sum = 0.0
            for lag in range(1, window + 1):
                flow_sum += signed_flow[row - lag]
                vol_sum += volatility[row - lag]
            flow_mean = flow_sum / window
            vol_mean = vol_sum / window
            squares = 0.0
            for lag in range(1, window + 1):
                deviation = signed_flow[row - lag] - flow_mean
                squares += deviation * deviation
            score = (signed_flow[row] - flow_mean) / np.sqrt(squares / (window - 1)) * (volatility[row] / vol_mean)
            scores[row] = 0.0 if score == 0.0 else score  # IEEE −0.0 becomes 0.0
        if row > 0 and signed_flow[row] != signed_flow[row - 1]:
            last_change = row
        if volatility[row] > 0:
            last_positive = row
    return scores
