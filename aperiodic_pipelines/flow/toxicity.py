"""The flow toxicity score of spec §3 over a dense, time-ordered bar table."""

from __future__ import annotations

import numpy as np
import polars as pl

from aperiodic_pipelines.flow.grid import TOXICITY_WINDOW


def toxicity_scores(signed_flow: np.ndarray, volatility: np.ndarray, window: int = TOXICITY_WINDOW) -> np.ndarray:
    """flow_norm × vol_norm of each bar over the `window` bars before it; NaN where undefined.

    The window statistics are exact: the mean and the ddof=1 variance are two-pass sums over the lagged
    values, accumulated lag by lag (a fixed order, so the result is deterministic), not incremental rolling
    sums whose rounding residue would turn a constant window's zero deviation into a tiny number and the
    score into noise. A constant window (max = min) has std 0 and an all-zero volatility window has mean 0:
    both are undefined, as are the first `window` rows (fewer earlier bars).
    """
    n = len(signed_flow)
    scores = np.full(n, np.nan)
    if n <= window:
        return scores
    rows = n - window  # rows window..n-1 have a full window; their lag-k values are x[window-k : n-k]

    def lagged(values: np.ndarray, lag: int) -> np.ndarray:
        return values[window - lag : n - lag]

    flow_sum, vol_sum = np.zeros(rows), np.zeros(rows)
    flow_max, flow_min = np.full(rows, -np.inf), np.full(rows, np.inf)
    vol_max = np.zeros(rows)
    for lag in range(1, window + 1):
        flow_lag, vol_lag = lagged(signed_flow, lag), lagged(volatility, lag)
        flow_sum += flow_lag
        vol_sum += vol_lag
        np.maximum(flow_max, flow_lag, out=flow_max)
        np.minimum(flow_min, flow_lag, out=flow_min)
        np.maximum(vol_max, vol_lag, out=vol_max)
    flow_mean, vol_mean = flow_sum / window, vol_sum / window
    squares = np.zeros(rows)
    for lag in range(1, window + 1):
        deviation = lagged(signed_flow, lag) - flow_mean
        squares += deviation * deviation
    defined = (flow_max != flow_min) & (vol_max != 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        score = (signed_flow[window:] - flow_mean) / np.sqrt(squares / (window - 1)) * (volatility[window:] / vol_mean)
    score[~defined] = np.nan
    score[score == 0] = 0.0  # IEEE −0.0 (an empty bar after a selling window) becomes 0.0
    scores[window:] = score
    return scores


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
