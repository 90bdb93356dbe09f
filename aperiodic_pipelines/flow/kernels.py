"""The compiled (numba) loop of the engine: the per-second pass over a big month's trades.

A plain sequential loop doing the same IEEE operations in the same order as the numpy aggregation
(`seconds._aggregate_seconds`; no `fastmath`, so no reassociation or fused multiply-add): results are
identical bit for bit, whatever the batch boundaries. Importing numba and loading the cached machine code
costs about half a CPU second per process, so the engine imports this module only for inputs bigger than one
batch (small months take the numpy path), never when the Dagster definitions load. `cache=True` keeps the
compiled code on disk next to this file (`__pycache__`), so a fresh process loads it instead of compiling.
"""

from __future__ import annotations

import numba
import numpy as np

# Error codes of `aggregate_trades`: the first offending row is then explained by the polars checks.
OK, BAD_VALUE, OUTSIDE_MONTH, UNSORTED = 0, 1, 2, 3

# Slots per second: side (buy 0, sell 1) × 3 + size bucket (small 0, medium 1, large 2). Per-second sums
# (`sums`, float) are the 6 slot notionals, the 2 side quantities and the last price; counts (int) are the
# 6 slot counts and the 2 side counts. `state` is [open second, a second is open (0/1), last time, rows out].
SLOTS = 6
SUM_ROWS, COUNT_ROWS = 9, 8
SECOND, IS_OPEN, LAST_TIME, ROWS_OUT = 0, 1, 2, 3


@numba.njit(cache=True, nogil=True, error_model="numpy")
def aggregate_trades(
    ts: np.ndarray, price: np.ndarray, qty: np.ndarray, is_buy: np.ndarray,
    lo: int, hi: int, small_below: float, large_from: float,
    state: np.ndarray, open_sums: np.ndarray, open_counts: np.ndarray,
    seconds_out: np.ndarray, sums_out: np.ndarray, counts_out: np.ndarray,
) -> tuple[int, int]:
    """Add trades sorted by time to per-second sums; return (error code, row of the first bad trade or −1).

    The second being summed when the batch ends stays open (`open_sums`, `open_counts`, `state`): the next
    batch keeps adding to it, so each second's sums are added in row order, from 0.0, whatever the batching.
    A second that closes is written to column `state[ROWS_OUT]` of the outputs (one column per second; each
    row of `sums_out`/`counts_out` is one statistic, so it is contiguous). Each trade is checked on the way
    (spec §1: price and qty finite and > 0, time inside [lo, hi) and not going back); on the first bad row
    the pass stops and reports it.
    """
    current, is_open, last_time = state[SECOND], state[IS_OPEN], state[LAST_TIME]
    for row in range(len(ts)):
        time = ts[row]
        p, q = price[row], qty[row]
        if not (p > 0.0 and p < np.inf and q > 0.0 and q < np.inf):
            return BAD_VALUE, row
        if time < lo or time >= hi:
            return OUTSIDE_MONTH, row
        if time < last_time:
            return UNSORTED, row
        last_time = time
        second = time // 1_000_000
        if second != current or not is_open:
            if is_open:
                state[SECOND] = current
                close_second(state, open_sums, open_counts, seconds_out, sums_out, counts_out)
            current, is_open = second, 1
        notional = p * q
        side = 0 if is_buy[row] else 1
        slot = side * 3 + (1 if notional >= small_below else 0) + (1 if notional >= large_from else 0)
        open_sums[slot] += notional
        open_counts[slot] += 1
        open_sums[SLOTS + side] += q
        open_sums[SLOTS + 2] = p
    state[SECOND], state[IS_OPEN], state[LAST_TIME] = current, is_open, last_time
    return OK, -1


@numba.njit(cache=True, nogil=True)
def close_second(state: np.ndarray, open_sums: np.ndarray, open_counts: np.ndarray,
                 seconds_out: np.ndarray, sums_out: np.ndarray, counts_out: np.ndarray) -> None:
    """Write the open second (`state[SECOND]`) to the next output column and reset its sums to zero."""
    at = state[ROWS_OUT]
    seconds_out[at] = state[SECOND]
    for stat in range(SUM_ROWS):
        sums_out[stat, at] = open_sums[stat]
        open_sums[stat] = 0.0
    for slot in range(SLOTS):
        counts_out[slot, at] = open_counts[slot]
        open_counts[slot] = 0
    counts_out[SLOTS, at] = counts_out[0, at] + counts_out[1, at] + counts_out[2, at]
    counts_out[SLOTS + 1, at] = counts_out[3, at] + counts_out[4, at] + counts_out[5, at]
    state[ROWS_OUT] = at + 1
    state[IS_OPEN] = 0
