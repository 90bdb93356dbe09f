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


# `second_fields`: the columns of the dense 1s fields it writes. Kept (never null): the 6 summed notionals and
# 2 quantities, the 2 deltas; the 8 counts. Nullable (NaN where null), then the internal inputs of the score
# and the entropy.
KEPT_FLOATS = ("taker_buy_volume", "taker_sell_volume",
               "taker_buy_small_order_volume", "taker_buy_medium_order_volume", "taker_buy_large_order_volume",
               "taker_sell_small_order_volume", "taker_sell_medium_order_volume", "taker_sell_large_order_volume",
               "volume_delta", "volume_delta_notional")
COUNTS = ("taker_buy_count", "taker_sell_count",
          "taker_buy_small_order_count", "taker_buy_medium_order_count", "taker_buy_large_order_count",
          "taker_sell_small_order_count", "taker_sell_medium_order_count", "taker_sell_large_order_count")
RATIOS = ("taker_buy_sell_percentage", "_sell_share", "taker_buy_sell_ratio", "taker_buy_sell_count_ratio",
          "taker_buy_sell_count_percentage",
          "taker_buy_small_order_percentage", "taker_buy_medium_order_percentage", "taker_buy_large_order_percentage",
          "taker_sell_small_order_percentage", "taker_sell_medium_order_percentage",
          "taker_sell_large_order_percentage",
          "taker_buy_small_order_count_percentage", "taker_buy_medium_order_count_percentage",
          "taker_buy_large_order_count_percentage", "taker_sell_small_order_count_percentage",
          "taker_sell_medium_order_count_percentage", "taker_sell_large_order_count_percentage",
          "_volume", "_volatility")


@numba.njit(cache=True, nogil=True)
def _ratio(numerator: float, denominator: float) -> tuple[float, int]:
    """numerator / denominator, NaN where the denominator is 0 (null); and 1 if a defined ratio is NaN."""
    if denominator != 0:
        value = numerator / denominator
        return value, 1 if np.isnan(value) else 0
    return np.nan, 0


@numba.njit(cache=True, nogil=True)
def second_fields(
    bar: np.ndarray, sums: tuple, counts: tuple, abs_return: np.ndarray, first_bar: int,
    kept: np.ndarray, ratios: np.ndarray, counts_out: np.ndarray,
) -> int:
    """The fields of every 1s bar of [first_bar, first_bar + rows), from the non-empty seconds among them.

    The arithmetic of `bars._derive_fields` on the zero-filled grid (`bars._densify`), operation for operation
    (IEEE, no fastmath), so the bits are the same: an empty second is a row of zero sums. `sums` are the 8
    summed float statistics in the order of `KEPT_FLOATS`, `counts` the 8 counts in the order of `COUNTS`; the
    outputs are one row per column of `KEPT_FLOATS`, `RATIOS` and `COUNTS`, one column per bar. Returns how
    many defined ratios are NaN (the caller then cannot use NaN for null).
    """
    rows = kept.shape[1]
    undefined = 0
    at, n_in = 0, len(bar)
    for row in range(rows):
        if at < n_in and bar[at] - first_bar == row:
            buy, sell = sums[0][at], sums[1][at]
            bs, bm, bl, ss, sm, sl = sums[2][at], sums[3][at], sums[4][at], sums[5][at], sums[6][at], sums[7][at]
            buy_n, sell_n = counts[0][at], counts[1][at]
            cbs, cbm, cbl, css, csm, csl = (counts[2][at], counts[3][at], counts[4][at], counts[5][at],
                                            counts[6][at], counts[7][at])
            volatility = abs_return[at]
            at += 1
        else:
            buy = sell = bs = bm = bl = ss = sm = sl = volatility = 0.0
            buy_n = sell_n = cbs = cbm = cbl = css = csm = csl = 0
        buy_notional, sell_notional = bs + bm + bl, ss + sm + sl
        volume = buy + sell
        count = float(buy_n + sell_n)
        for k, value in enumerate((buy, sell, bs, bm, bl, ss, sm, sl, buy - sell, buy_notional - sell_notional)):
            kept[k, row] = value
        for k, value in enumerate((buy_n, sell_n, cbs, cbm, cbl, css, csm, csl)):
            counts_out[k, row] = value
        k = 0
        for numerator, denominator in (
            (buy, volume), (sell, volume), (buy, sell), (float(buy_n), float(sell_n)), (float(buy_n), count),
            (bs, buy_notional), (bm, buy_notional), (bl, buy_notional),
            (ss, sell_notional), (sm, sell_notional), (sl, sell_notional),
            (float(cbs), float(buy_n)), (float(cbm), float(buy_n)), (float(cbl), float(buy_n)),
            (float(css), float(sell_n)), (float(csm), float(sell_n)), (float(csl), float(sell_n)),
        ):
            ratios[k, row], bad = _ratio(numerator, denominator)
            undefined += bad
            k += 1
        ratios[k, row] = volume
        ratios[k + 1, row] = volatility
    return undefined
