"""The month at a glance: daily volume delta and daily toxicity as a small PNG for the asset's metadata."""

from __future__ import annotations

import base64
import io

import polars as pl
from dagster import MetadataValue


def month_picture_png(daily_bars: pl.DataFrame, *, title: str) -> bytes:
    """PNG of the `1d` bars of a month: volume delta (bars) over flow toxicity (line)."""
    # Imported here, not at module load: matplotlib costs every run's start-up, and only publishing draws.
    import matplotlib

    matplotlib.use("Agg")  # headless: run workers have no display
    import matplotlib.pyplot as plt

    days = daily_bars.get_column("time").dt.day().to_list()
    delta = daily_bars.get_column("volume_delta").to_list()
    toxicity = [float("nan") if v is None else v for v in daily_bars.get_column("flow_toxicity_score").to_list()]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(6, 3.2), dpi=72, sharex=True)
    try:
        top.bar(days, delta, color=["tab:green" if v >= 0 else "tab:red" for v in delta])
        top.set_ylabel("Δ volume")
        top.axhline(0, color="black", linewidth=0.5)
        bottom.plot(days, toxicity, marker="o", markersize=2, color="tab:purple")
        bottom.axhline(0, color="black", linewidth=0.5)
        bottom.set_ylabel("toxicity")
        bottom.set_xlabel("day of month")
        fig.suptitle(title, fontsize=9)
        fig.tight_layout()
        buffer = io.BytesIO()
        # No creation date in the PNG, so the same month draws the same bytes.
        fig.savefig(buffer, format="png", metadata={"Software": None})
        return buffer.getvalue()
    finally:
        plt.close(fig)


def month_picture_metadata(daily_bars: pl.DataFrame, *, title: str) -> MetadataValue:
    """The picture as Markdown with an inline base64 image (the Dagster UI renders it)."""
    encoded = base64.b64encode(month_picture_png(daily_bars, title=title)).decode("ascii")
    return MetadataValue.md(f"![{title}](data:image/png;base64,{encoded})")
