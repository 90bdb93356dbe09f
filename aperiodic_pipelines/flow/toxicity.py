"""The flow toxicity score of spec §3 over a dense, time-ordered bar table."""

from __future__ import annotations

import polars as pl

from aperiodic_pipelines.flow.exprs import ordered_sum
from aperiodic_pipelines.flow.grid import TOXICITY_WINDOW


def _lagged(column: str, window: int) -> list[pl.Expr]:
    """The `window` values before each row (never the row itself); null where they do not exist."""
    return [pl.col(column).shift(lag) for lag in range(1, window + 1)]


def with_flow_toxicity_score(
    bars: pl.DataFrame,
    *,
    signed_flow: str,
    realised_volatility: str,
    window: int = TOXICITY_WINDOW,
    output: str = "flow_toxicity_score",
) -> pl.DataFrame:
    """Add `output` = flow_norm × vol_norm over the `window` previous bars.

    The window statistics are computed exactly from the lagged values (two-pass mean and ddof=1 variance)
    rather than with incremental rolling sums, whose rounding residue would turn a constant window's zero
    standard deviation into a tiny number and the score into noise. A constant window (max = min) has std 0
    and an all-zero volatility window has mean 0: both give null, as do rows with fewer than `window`
    earlier bars. Computed in stages so each lag is materialised once.
    """
    flows, vols = _lagged(signed_flow, window), _lagged(realised_volatility, window)
    with_means = bars.with_columns(
        (ordered_sum(flows) / window).alias("_flow_mean"),
        (ordered_sum(vols) / window).alias("_vol_mean"),
        # The table is dense and gap-free, so a full window is simply `window` rows before this one.
        (pl.int_range(pl.len()) >= window).alias("_complete"),
        # max/min over a window are exact, so a constant window is detected without rounding doubts.
        (
            pl.col(signed_flow).rolling_max(window).shift(1) == pl.col(signed_flow).rolling_min(window).shift(1)
        ).alias("_flow_constant"),
        (pl.col(realised_volatility).rolling_max(window).shift(1) == 0).alias("_no_volatility"),
    )
    flow_mean = pl.col("_flow_mean")
    deviations = [f - flow_mean for f in flows]
    flow_std = (ordered_sum([d * d for d in deviations]) / (window - 1)).sqrt()
    raw_score = (pl.col(signed_flow) - flow_mean) / flow_std * (pl.col(realised_volatility) / pl.col("_vol_mean"))
    # IEEE −0.0 (an empty bar after a selling window) becomes 0.0; `+ 0.0` is optimised away by polars.
    score = pl.when(raw_score == 0).then(0.0).otherwise(raw_score)
    defined = pl.col("_complete") & ~pl.col("_flow_constant") & ~pl.col("_no_volatility")
    return with_means.with_columns(pl.when(defined).then(score).alias(output)).drop(
        "_flow_mean", "_vol_mean", "_complete", "_flow_constant", "_no_volatility"
    )
