"""The month picture on `published_flow_bars`: a real PNG (decoded by Pillow), deterministic, bars where the days are."""

from __future__ import annotations

import base64
import io
from datetime import datetime

import polars as pl
from PIL import Image

from aperiodic_pipelines.defs.plots import BUY, SELL, TOXICITY, month_picture_metadata, month_picture_png


def _daily(deltas: list[float], toxicity: list[float | None]) -> pl.DataFrame:
    return pl.DataFrame({
        "time": [datetime(2025, 8, day + 1) for day in range(len(deltas))],
        "volume_delta": deltas,
        "flow_toxicity_score": pl.Series(toxicity, dtype=pl.Float64),
    })


def _colours_in_column(image: Image.Image, x: int) -> set[tuple[int, int, int]]:
    return {image.getpixel((x, y)) for y in range(image.height)}


def test_picture_is_a_png_with_a_green_bar_for_buying_and_a_red_bar_for_selling() -> None:
    days = 30
    deltas = [0.0] * days
    deltas[3], deltas[20] = 50.0, -80.0
    toxicity = [None, None, *[0.1 * (i % 5) for i in range(days - 2)]]
    png = month_picture_png(_daily(deltas, toxicity))
    image = Image.open(io.BytesIO(png)).convert("RGB")
    assert image.size == (432, 230)
    slot = (432 - 2 * 10 - 8) / days
    centre = [int(10 + 4 + slot * (i + 0.5)) for i in range(days)]
    assert BUY in _colours_in_column(image, centre[3]) and SELL not in _colours_in_column(image, centre[3])
    assert SELL in _colours_in_column(image, centre[20]) and BUY not in _colours_in_column(image, centre[20])
    assert not ({BUY, SELL} & _colours_in_column(image, centre[10]))  # no bar on a day without delta
    assert TOXICITY in _colours_in_column(image, centre[10])
    assert TOXICITY not in _colours_in_column(image, centre[0])  # toxicity null (warm-up): no point
    assert png == month_picture_png(_daily(deltas, toxicity))  # same month, same bytes


def test_metadata_is_markdown_with_the_inline_png_and_a_caption_with_the_ranges() -> None:
    value = month_picture_metadata(_daily([1.5, -2.5, 0.0], [None, 0.25, -0.5]), title="binance-futures BTCUSDT 2025-09")
    image_part, caption = value.value.split("\n\n", 1)
    prefix = "![binance-futures BTCUSDT 2025-09](data:image/png;base64,"
    assert image_part.startswith(prefix) and image_part.endswith(")")
    Image.open(io.BytesIO(base64.b64decode(image_part[len(prefix):-1]))).verify()
    assert "from -2.5 to 1.5" in caption and "from -0.5 to 0.25" in caption


def test_month_without_trades_draws_axes_only() -> None:
    png = month_picture_png(_daily([0.0] * 31, [None] * 31))
    colours = set(Image.open(io.BytesIO(png)).convert("RGB").getdata())
    assert not ({BUY, SELL, TOXICITY} & colours)
    assert month_picture_metadata(_daily([], []), title="empty").value.endswith("black lines are zero.")
