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
    both are undefined, as are the first `window` rows (fewer earlier bars). A compiled loop (flow.kernels)
    does this row by row; rows of quiet stretches, undefined, cost next to nothing.
    """
    from aperiodic_pipelines.flow import kernels  # numba: imported when the engine first runs

    return kernels.toxicity_scores(np.ascontiguousarray(signed_flow, dtype=np.float64),
                                   np.ascontiguousarray(volatility, dtype=np.float64), window)


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
