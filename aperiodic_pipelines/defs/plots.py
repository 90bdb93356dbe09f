"""The month at a glance: daily volume delta and daily toxicity as a small PNG for the asset's metadata.

Drawn with numpy and written with zlib, not matplotlib: importing and laying out a matplotlib figure cost about
a second of CPU in every publishing run, for two dozen bars and a line. The numbers the picture leaves out
(scales, extremes) are in the caption under it.
"""

from __future__ import annotations

import base64
import math
import struct
import zlib

import numpy as np
import polars as pl
from dagster import MetadataValue

WIDTH, HEIGHT = 432, 230
MARGIN = 10
TOP = (MARGIN, 112)  # rows of the volume-delta panel
BOTTOM = (124, HEIGHT - MARGIN)  # rows of the toxicity panel
BACKGROUND = (255, 255, 255)
FRAME = (200, 200, 200)
AXIS = (0, 0, 0)
BUY = (44, 160, 44)  # matplotlib's tab:green
SELL = (214, 39, 40)  # tab:red
TOXICITY = (148, 103, 189)  # tab:purple


def _png(pixels: np.ndarray) -> bytes:
    """An 8-bit RGB PNG of `pixels` (height × width × 3, uint8); same pixels → same bytes."""
    height, width, _ = pixels.shape
    rows = np.zeros((height, 1 + width * 3), dtype=np.uint8)  # filter byte 0 (none) before each row
    rows[:, 1:] = pixels.reshape(height, width * 3)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows.tobytes(), 9))
            + chunk(b"IEND", b""))


def _frame(pixels: np.ndarray, rows: tuple[int, int]) -> None:
    top, bottom = rows
    pixels[top, MARGIN:WIDTH - MARGIN] = FRAME
    pixels[bottom - 1, MARGIN:WIDTH - MARGIN] = FRAME
    pixels[top:bottom, MARGIN] = FRAME
    pixels[top:bottom, WIDTH - MARGIN - 1] = FRAME


def _scale(values: list[float]) -> tuple[float, float]:
    """(lowest, highest) shown in a panel: the values' range, always including 0, never empty."""
    finite = [v for v in values if math.isfinite(v)]
    low, high = min([0.0, *finite]), max([0.0, *finite])
    if high == low:
        high, low = high + 1.0, low - 1.0
    return low, high


def _row_of(value: float, low: float, high: float, rows: tuple[int, int]) -> int:
    top, bottom = rows[0] + 3, rows[1] - 4  # a few pixels inside the frame
    return int(round(bottom - (value - low) / (high - low) * (bottom - top)))


def month_picture_png(daily_bars: pl.DataFrame, *, title: str = "") -> bytes:
    """PNG of the `1d` bars of a month: volume delta (bars, green/red) over flow toxicity (line)."""
    delta = [float(v or 0.0) for v in daily_bars.get_column("volume_delta").to_list()]
    toxicity = [math.nan if v is None else float(v) for v in daily_bars.get_column("flow_toxicity_score").to_list()]
    pixels = np.empty((HEIGHT, WIDTH, 3), dtype=np.uint8)
    pixels[:] = BACKGROUND
    _frame(pixels, TOP)
    _frame(pixels, BOTTOM)
    slot = (WIDTH - 2 * MARGIN - 8) / max(len(delta), 1)
    centres = [MARGIN + 4 + slot * (i + 0.5) for i in range(len(delta))]
    half_bar = max(1, int(slot * 0.4))

    low, high = _scale(delta)
    zero = _row_of(0.0, low, high, TOP)
    for centre, value in zip(centres, delta, strict=True):
        row = _row_of(value, low, high, TOP)
        first, last = sorted((row, zero))
        pixels[first:last + 1, int(centre) - half_bar:int(centre) + half_bar + 1] = BUY if value >= 0 else SELL
    pixels[zero, MARGIN:WIDTH - MARGIN] = AXIS

    low, high = _scale(toxicity)
    pixels[_row_of(0.0, low, high, BOTTOM), MARGIN:WIDTH - MARGIN] = AXIS
    points = [(c, _row_of(v, low, high, BOTTOM)) for c, v in zip(centres, toxicity, strict=True) if math.isfinite(v)]
    for (x0, y0), (x1, y1) in zip(points, points[1:], strict=False):
        steps = int(max(abs(x1 - x0), abs(y1 - y0))) + 1
        xs = np.rint(np.linspace(x0, x1, steps)).astype(int)
        ys = np.rint(np.linspace(y0, y1, steps)).astype(int)
        pixels[ys, xs] = TOXICITY
        pixels[ys + 1, xs] = TOXICITY  # two pixels thick
    for x, y in points:
        pixels[y - 1:y + 2, int(round(x)) - 1:int(round(x)) + 2] = TOXICITY
    return _png(pixels)


def _number(value: float) -> str:
    return "n/a" if not math.isfinite(value) else f"{value:,.6g}"


def month_picture_metadata(daily_bars: pl.DataFrame, *, title: str) -> MetadataValue:
    """The picture as Markdown with an inline base64 image (the Dagster UI renders it), and a caption with the
    scales the picture does not print."""
    encoded = base64.b64encode(month_picture_png(daily_bars, title=title)).decode("ascii")
    delta = [float(v or 0.0) for v in daily_bars.get_column("volume_delta").to_list()]
    toxicity = [float(v) for v in daily_bars.get_column("flow_toxicity_score").to_list() if v is not None]
    caption = (
        f"**{title}**, one column per day. Top: daily volume delta (green: net taker buying, red: net selling; "
        f"from {_number(min(delta, default=math.nan))} to {_number(max(delta, default=math.nan))}). "
        f"Bottom: daily flow toxicity (from {_number(min(toxicity, default=math.nan))} to "
        f"{_number(max(toxicity, default=math.nan))}); black lines are zero."
    )
    return MetadataValue.md(f"![{title}](data:image/png;base64,{encoded})\n\n{caption}")
