"""The month-wide validation (pandera on the bars with trades + one dense pass) and the flow-bar parquet layout."""

from __future__ import annotations

import hashlib

import polars as pl
import pyarrow.parquet as pq
import pytest

from aperiodic_pipelines.domain.errors import InvalidBarsError
from aperiodic_pipelines.flow import (
    FLOW_COLUMNS,
    NULLABLE_FIELDS,
    compute_flow_bars,
    validate_bars,
    validate_month_bars,
)
from aperiodic_pipelines.storage import write_parquet_deterministic
from aperiodic_pipelines.synthetic import generate_tape

MONTH = "2024-01"
INTERVALS = ("1m", "1h", "1d")


@pytest.fixture(scope="module")
def month_bars() -> dict[str, pl.DataFrame]:
    tape = generate_tape(MONTH, 3_000, seed=31)
    bars = compute_flow_bars(tape, None, month=MONTH, intervals=INTERVALS)
    validate_month_bars(bars, month=MONTH)
    return bars


def _first_row(frame: pl.DataFrame, with_trades: bool) -> int:
    has_trades = (frame["taker_buy_count"] + frame["taker_sell_count"]) > 0
    return int((has_trades if with_trades else ~has_trades).arg_true()[0])


def _set(frame: pl.DataFrame, field: str, row: int, value: object) -> pl.DataFrame:
    return frame.with_columns(frame[field].scatter([row], [value]))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("taker_buy_volume", 0.5),  # volume in a bar without trades
        ("volume_delta_notional", -1.0),
        ("taker_sell_large_order_count", 1),
        ("taker_buy_sell_ratio", 0.0),  # a ratio where there is nothing to divide
        ("flow_entropy", 0.5),
        ("taker_sell_small_order_percentage", 1.0),
        ("flow_toxicity_score", 0.25),  # an empty bar's score is null or 0
        ("taker_buy_volume", float("nan")),
    ],
)
def test_an_empty_bar_that_is_not_the_empty_row_is_rejected(month_bars, field: str, value: object) -> None:
    tampered = dict(month_bars)
    tampered["1m"] = _set(month_bars["1m"], field, _first_row(month_bars["1m"], with_trades=False), value)
    with pytest.raises(InvalidBarsError, match=rf"1m: column '{field}' failed \w+_when_empty"):
        validate_month_bars(tampered, month=MONTH)


def test_pandera_sees_the_bars_with_trades_of_every_interval(month_bars) -> None:
    tampered = dict(month_bars)
    row = _first_row(month_bars["1h"], with_trades=True)
    tampered["1h"] = _set(month_bars["1h"], "volume_delta", row, month_bars["1h"]["volume_delta"][row] + 1.0)
    with pytest.raises(InvalidBarsError, match=r"flow bars 1h: .*volume_delta"):
        validate_month_bars(tampered, month=MONTH)
    tampered = dict(month_bars)
    tampered["1d"] = _set(month_bars["1d"], "taker_buy_sell_percentage", _first_row(month_bars["1d"], True), 1.5)
    with pytest.raises(InvalidBarsError, match=r"flow bars 1d: .*taker_buy_sell_percentage"):
        validate_month_bars(tampered, month=MONTH)


def test_grid_and_structure_are_checked_per_interval(month_bars) -> None:
    with pytest.raises(InvalidBarsError, match=r"1h: column 'time' failed covers_month"):
        validate_month_bars({**month_bars, "1h": month_bars["1h"].slice(1)}, month=MONTH)
    missing_bar = month_bars["1h"].filter(pl.int_range(pl.len()) != 5)
    with pytest.raises(InvalidBarsError, match=r"1h: column 'time' failed dense_grid"):
        validate_month_bars({**month_bars, "1h": missing_bar}, month=MONTH)
    with pytest.raises(InvalidBarsError, match="taker_buy_count"):
        validate_bars(month_bars["1d"].with_columns(pl.col("taker_buy_count").cast(pl.Float64)), interval="1d")


def test_flow_bar_parquet_is_required_where_never_null_and_reads_back_equal(month_bars, tmp_path) -> None:
    frame = month_bars["1m"]
    paths = [tmp_path / "a.parquet", tmp_path / "b.parquet"]
    for path in paths:
        write_parquet_deterministic(frame, path, metadata={"aperiodic.month": MONTH})
    assert hashlib.sha256(paths[0].read_bytes()).digest() == hashlib.sha256(paths[1].read_bytes()).digest()
    assert pl.read_parquet(paths[0]).equals(frame, null_equal=True)
    parquet_schema = pq.ParquetFile(paths[0]).schema
    for index, name in enumerate(FLOW_COLUMNS):
        column = parquet_schema.column(index)
        assert column.name == name
        assert (column.max_definition_level == 1) == (name in NULLABLE_FIELDS), name
    encodings = pq.ParquetFile(paths[0]).metadata.row_group(0).column(0).encodings
    assert "DELTA_BINARY_PACKED" in encodings
    # Min/max only where they prune: `time`, which a read by time range skips row groups with.
    group = pq.ParquetFile(paths[0]).metadata.row_group(0)
    with_statistics = [name for index, name in enumerate(FLOW_COLUMNS) if group.column(index).is_stats_set]
    assert with_statistics == ["time"]
    assert group.column(0).statistics.min == frame["time"][0] and group.column(0).statistics.max == frame["time"][-1]
    other = tmp_path / "other.parquet"  # any other table keeps statistics on every column
    write_parquet_deterministic(frame.select("time", "taker_buy_volume"), other, metadata={})
    assert all(pq.ParquetFile(other).metadata.row_group(0).column(index).is_stats_set for index in (0, 1))
    with pytest.raises(ValueError, match="taker_buy_volume"):
        write_parquet_deterministic(
            frame.with_columns(pl.lit(None, dtype=pl.Float64).alias("taker_buy_volume")), tmp_path / "c.parquet",
            metadata={},
        )


def test_bars_do_not_depend_on_the_slice_size(monkeypatch) -> None:
    """Non-empty bars are derived a slice at a time (the first slices partly the previous month's lead-in)."""
    from aperiodic_pipelines.flow import bars as bars_module

    tape = generate_tape(MONTH, 2_000, seed=41, first_trade_id=10_000)
    previous = generate_tape("2023-12", 2_000, seed=42)
    whole = compute_flow_bars(tape, previous, month=MONTH, intervals=("1s", "1m"))
    monkeypatch.setattr(bars_module, "SLICE_ROWS", 97)
    sliced = compute_flow_bars(tape, previous, month=MONTH, intervals=("1s", "1m"))
    for interval in ("1s", "1m"):
        assert sliced[interval].equals(whole[interval], null_equal=True), interval


def test_grid_and_sparse_derivations_give_identical_bars(monkeypatch) -> None:
    """Busy grids derive fields on the grid, sparse ones on the non-empty bars; the tables are the same."""
    from aperiodic_pipelines.flow import bars as bars_module

    tape = generate_tape(MONTH, 2_000, seed=43, first_trade_id=10_000)
    previous = generate_tape("2023-12", 2_000, seed=44)
    intervals = ("1s", "1m", "1d")
    monkeypatch.setattr(bars_module, "DENSE_FROM", 2.0)  # never the grid
    sparse = compute_flow_bars(tape, previous, month=MONTH, intervals=intervals)
    monkeypatch.setattr(bars_module, "DENSE_FROM", -1.0)  # always the grid
    grid = compute_flow_bars(tape, previous, month=MONTH, intervals=intervals)
    for interval in intervals:
        assert grid[interval].equals(sparse[interval], null_equal=True), interval


def test_every_column_of_both_derivations_is_one_contiguous_buffer(monkeypatch) -> None:
    """The parquet writer needs contiguous columns; the grid derivation joins its slices a column at a time, so
    the writer never has to rechunk (copy) a whole month of 1s bars."""
    from aperiodic_pipelines.flow import bars as bars_module

    tape = generate_tape(MONTH, 2_000, seed=45)
    for dense_from in (2.0, -1.0):  # never the grid, always the grid (in slices of a day)
        monkeypatch.setattr(bars_module, "DENSE_FROM", dense_from)
        monkeypatch.setattr(bars_module, "GRID_SLICE_BARS", 1_440)
        for interval, frame in compute_flow_bars(tape, None, month=MONTH, intervals=("1m", "1h")).items():
            assert frame.n_chunks("all") == [1] * len(FLOW_COLUMNS), (dense_from, interval)


def test_rules_pieces_name_the_interval_of_a_bad_bar_in_any_piece(month_bars, monkeypatch) -> None:
    """The per-bar rules see the bars with trades in bounded pieces (memory); a bad bar in the last piece of the
    largest table is still found and named by its interval."""
    from aperiodic_pipelines.flow import schema as schema_module

    monkeypatch.setattr(schema_module, "RULES_PIECE_ROWS", 500)
    validate_month_bars(month_bars, month=MONTH)  # the untouched month passes in batches
    frame = month_bars["1m"]
    has_trades = (frame["taker_buy_count"] + frame["taker_sell_count"]) > 0
    last = int(has_trades.arg_true()[-1])
    assert last > 10 * 500  # far past the first batch
    tampered = {**month_bars, "1m": _set(frame, "flow_entropy", last, 1.5)}
    with pytest.raises(InvalidBarsError, match=r"flow bars 1m: .*flow_entropy"):
        validate_month_bars(tampered, month=MONTH)
