"""The flow toxicity score of spec §3 over a dense, time-ordered bar table."""

from __future__ import annotations

import numpy as np
import polars as pl

from aperiodic_pipelines.flow.grid import TOXICITY_WINDOW

# Output rows per block: the ~10 temporaries of a block stay in the CPU cache, which makes the 40 passes over
# the lagged values several times faster than over whole 2.7 M-row arrays, with the same arithmetic per row.
BLOCK_ROWS = 1 << 14
# A block where fewer rows than this share have volatility is scored on those rows only (`_block_scores`).
SPARSE_BELOW = 1 / 8
SAFE_RANGE = (1e-100, 1e100)  # `_in_safe_range`


def toxicity_scores(signed_flow: np.ndarray, volatility: np.ndarray, window: int = TOXICITY_WINDOW) -> np.ndarray:
    """flow_norm × vol_norm of each bar over the `window` bars before it; NaN where undefined.

    The window statistics are exact: the mean and the ddof=1 variance are two-pass sums over the lagged
    values, accumulated lag by lag (a fixed order, so the result is deterministic), not incremental rolling
    sums whose rounding residue would turn a constant window's zero deviation into a tiny number and the
    score into noise. A constant window (max = min) has std 0 and an all-zero volatility window has mean 0:
    both are undefined, as are the first `window` rows (fewer earlier bars). Rows are computed in blocks;
    a block whose windows hold no volatility at all (a quiet stretch) is undefined throughout and skipped.
    """
    n = len(signed_flow)
    scores = np.full(n, np.nan)
    for start in range(window, n, BLOCK_ROWS):
        stop = min(n, start + BLOCK_ROWS)
        if volatility[start - window : stop - 1].any():
            scores[start:stop] = _block_scores(signed_flow[start - window : stop], volatility[start - window : stop],
                                               window)
    return scores


def _block_scores(signed_flow: np.ndarray, volatility: np.ndarray, window: int) -> np.ndarray:
    """Scores of rows window..n-1 of the given arrays (rows before `window` are their lead-in).

    A row without volatility of its own scores flow_norm × 0 / mean(rv): 0 wherever the score is defined (its
    flow_norm is then finite, given `_in_safe_range`). Where few rows have volatility (a quiet month's 1s grid:
    ~2 % of its seconds move the price), the formula runs on those rows only, their lagged values gathered: the
    same operations on the same values in the same order, so the same bits as running it on every row.
    """
    defined = _defined(signed_flow, volatility, window)
    moving = np.flatnonzero(volatility[window:])
    if len(moving) < SPARSE_BELOW * len(defined) and _in_safe_range(signed_flow) and _in_safe_range(volatility):
        score = np.where(defined, 0.0, np.nan)
        score[moving] = _formula(signed_flow, volatility, window, moving + window)
    else:
        score = _formula(signed_flow, volatility, window, None)
    score[~defined] = np.nan
    score[score == 0] = 0.0  # IEEE −0.0 (an empty bar after a selling window) becomes 0.0
    return score


def _defined(signed_flow: np.ndarray, volatility: np.ndarray, window: int) -> np.ndarray:
    """Whether each row window..n-1 has a score: its window's flow is not constant (std 0) and its mean
    volatility is not 0. Exact, in integers: the flow is constant when no two neighbours in the window differ,
    and the mean volatility is 0 when none of its (non-negative) volatilities is positive."""
    n = len(signed_flow)
    changes = np.zeros(n, dtype=np.int32)  # a block's counts fit; int32 sums are cheaper
    np.cumsum(signed_flow[1:] != signed_flow[:-1], out=changes[1:])
    positives = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(volatility > 0, out=positives[1:])
    return (changes[window - 1 : n - 1] != changes[: n - window]) & (positives[window:n] != positives[: n - window])


def _in_safe_range(values: np.ndarray) -> bool:
    """Whether every non-zero value lies in [1e-100, 1e100] in magnitude. For the flows and volatilities of a
    block, it makes a row without volatility score exactly 0 where defined: a window whose flow is not constant
    has a deviation whose square does not underflow (std > 0), flow_norm is finite, and a window with volatility
    has a mean volatility that does not underflow to 0. Real flows and returns are many orders inside."""
    magnitude = np.abs(values)
    nonzero = magnitude[magnitude != 0]  # NaN stays in, and fails the bounds
    return not nonzero.size or bool(SAFE_RANGE[0] <= nonzero.min() and nonzero.max() <= SAFE_RANGE[1])


def _formula(signed_flow: np.ndarray, volatility: np.ndarray, window: int, rows: np.ndarray | None) -> np.ndarray:
    """flow_norm × vol_norm of the given rows (indices ≥ `window` into the arrays; None: every row from
    `window` on), before undefined rows are set to NaN."""
    n = len(signed_flow)
    if rows is None:  # the lag-k values of rows window..n-1 are x[window-k : n-k]: views, no copy
        def lagged(values: np.ndarray, lag: int) -> np.ndarray:
            return values[window - lag : n - lag]

        own_flow, own_volatility = signed_flow[window:], volatility[window:]
    else:
        def lagged(values: np.ndarray, lag: int) -> np.ndarray:
            return values[rows - lag]

        own_flow, own_volatility = signed_flow[rows], volatility[rows]
    count = len(own_flow)
    flow_sum, vol_sum = np.zeros(count), np.zeros(count)
    for lag in range(1, window + 1):
        flow_sum += lagged(signed_flow, lag)
        vol_sum += lagged(volatility, lag)
    flow_mean, vol_mean = flow_sum / window, vol_sum / window
    squares, deviation = np.zeros(count), np.empty(count)
    for lag in range(1, window + 1):
        np.subtract(lagged(signed_flow, lag), flow_mean, out=deviation)
        np.multiply(deviation, deviation, out=deviation)
        squares += deviation
    with np.errstate(divide="ignore", invalid="ignore"):
        return (own_flow - flow_mean) / np.sqrt(squares / (window - 1)) * (own_volatility / vol_mean)


def with_flow_toxicity_score(
    bars: pl.DataFrame,
    *,
    signed_flow: str,
    realised_volatility: str,
    window: int = TOXICITY_WINDOW,
    output: str = "flow_toxicity_score",
) -> pl.DataFrame:
    """`bars` with `output` = the toxicity score (null where undefined) from two of its columns."""
    scores = toxicity_scores(
        bars.get_column(signed_flow).to_numpy(), bars.get_column(realised_volatility).to_numpy(), window
    )
    return bars.with_columns(pl.Series(output, scores).fill_nan(None))
