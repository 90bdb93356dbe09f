"""Duplicates (issue 16 item 5): one trade id with two contents fails the month naming both rows; identical
repeats are dropped and counted up to a documented share of the month, beyond which the month is refused."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from aperiodic_pipelines.domain.errors import CorruptArchiveError, InvalidTradesError
from aperiodic_pipelines.mirror.archives import binance_csv, write_zip
from aperiodic_pipelines.sources.binance import convert_archives
from aperiodic_pipelines.sources.canonical import TradeFile, build_canonical_month, month_bounds_us
from aperiodic_pipelines.trades import (
    ALLOWED_DUPLICATE_ROWS,
    MAX_DUPLICATE_SHARE,
    ConflictingTradesError,
    TooManyDuplicatesError,
    duplicates_allowed,
)
from tests.http_fixtures import tiny_tape

MONTH = "2024-01"
START_US, _ = month_bounds_us(MONTH)


def _build(tmp_path: Path, *frames: pl.DataFrame, name: str = "out.parquet"):
    files = [TradeFile(f"part-{i}.csv", frame.lazy()) for i, frame in enumerate(frames)]
    return build_canonical_month(files, MONTH, tmp_path / name, outside_month="error")


def _tape(n: int = 2000) -> pl.DataFrame:
    return tiny_tape(MONTH, n=n, seed=5).with_columns(ts_arrival=pl.lit(None, dtype=pl.Int64))


@pytest.mark.parametrize("column", ["price", "qty", "is_buy"])
def test_a_repeated_id_with_other_content_names_both_rows(tmp_path: Path, column: str) -> None:
    """Sorted input: the repeat sits next to its original and is caught in the streaming pass."""
    tape = _tape()
    original = tape.row(700, named=True)
    changed = {**original, column: (not original[column]) if column == "is_buy" else original[column] * 1.5}
    rows = pl.concat([tape.head(701), pl.DataFrame([changed], schema=tape.schema), tape.slice(701)])
    with pytest.raises(ConflictingTradesError) as caught:
        _build(tmp_path, rows)
    message = str(caught.value)
    assert message.startswith(f"{MONTH} (part-0.csv): trade id {original['trade_id']} appears twice")
    assert f"{column}={original[column]}" in message or column == "is_buy"
    assert str(changed[column] if column != "is_buy" else ("buy" if changed["is_buy"] else "sell")) in message
    assert isinstance(caught.value, InvalidTradesError) and isinstance(caught.value, CorruptArchiveError)
    assert not (tmp_path / "out.parquet").exists()


def test_a_conflict_between_two_files_is_found_after_sorting(tmp_path: Path) -> None:
    """Two daily files disagreeing about one trade: not adjacent in the input, found when each day is sorted."""
    tape = _tape()
    twin = tape.slice(1500, 1).with_columns(price=pl.col("price") + 1.0)
    with pytest.raises(ConflictingTradesError, match=r"2 files: part-0\.csv, part-1\.csv\): trade id \d+ appears "
                       r"twice with different contents: .* and .*"):
        _build(tmp_path, tape, twin)


def test_an_id_at_two_times_names_both_rows(tmp_path: Path) -> None:
    tape = _tape()
    moved = tape.slice(10, 1).with_columns(ts_exchange=pl.col("ts_exchange") + 86_400_000_000 * 3)
    with pytest.raises(ConflictingTradesError, match=r"appears twice with different contents: trade_id=\d+ ts=2024-01-"
                       r".* and trade_id=\d+ ts=2024-01-"):
        _build(tmp_path, tape, moved)


def test_a_handful_of_identical_repeats_is_dropped_and_counted(tmp_path: Path) -> None:
    tape = _tape()
    repeats = pl.concat([tape.slice(i * 150, 1) for i in range(9)])
    stats = _build(tmp_path, tape, repeats)
    assert stats.duplicates_dropped == 9 and stats.trade_count == tape.height
    assert pl.read_parquet(tmp_path / "out.parquet").equals(tape)


def test_identical_repeats_differing_only_in_arrival_time_keep_the_first(tmp_path: Path) -> None:
    tape = tiny_tape(MONTH, n=300, seed=9, with_arrival=True)
    again = tape.slice(5, 1).with_columns(ts_arrival=pl.col("ts_arrival") + 7)
    stats = _build(tmp_path, tape, again)
    assert stats.duplicates_dropped == 1
    assert pl.read_parquet(tmp_path / "out.parquet").equals(tape)


def test_repeats_beyond_the_share_block_the_month(tmp_path: Path) -> None:
    tape = _tape(n=1000)
    allowed = duplicates_allowed(tape.height + ALLOWED_DUPLICATE_ROWS + 1)
    assert allowed == ALLOWED_DUPLICATE_ROWS  # a small month: the floor applies
    repeats = pl.concat([tape.slice(3, 1)] * (ALLOWED_DUPLICATE_ROWS + 1))
    with pytest.raises(TooManyDuplicatesError, match=rf"{MONTH} \(2 files: .*\): 101 of 1101 rows repeat another "
                       r"row exactly; at most 100 \(0\.1% of the rows"):
        _build(tmp_path, tape, repeats)
    assert not (tmp_path / "out.parquet").exists()
    stats = _build(tmp_path, tape, repeats.head(ALLOWED_DUPLICATE_ROWS), name="edge.parquet")  # at the limit: fine
    assert stats.duplicates_dropped == ALLOWED_DUPLICATE_ROWS


def test_a_month_of_one_repeated_row_is_refused_from_its_archive(tmp_path: Path) -> None:
    """Issue 16: 1 GB of one repeated row was published as 1 trade. Here 200,000 copies in a Binance zip."""
    row = _tape(n=10).head(1)
    path = tmp_path / "BTCUSDT-aggTrades-2024-01.zip"
    write_zip(path, "BTCUSDT-aggTrades-2024-01.csv", binance_csv(pl.concat([row] * 200_000)))
    with pytest.raises(TooManyDuplicatesError, match=r"2024-01 \(BTCUSDT-aggTrades-2024-01\.zip\): 199999 of 200000 "
                       r"rows repeat another row exactly"):
        convert_archives([path], MONTH, tmp_path / "one.parquet")
    assert not (tmp_path / "one.parquet").exists()


def test_the_share_is_documented_and_scales_with_the_month() -> None:
    assert MAX_DUPLICATE_SHARE == 0.001 and ALLOWED_DUPLICATE_ROWS == 100
    assert duplicates_allowed(50_000_000) == 50_000  # a busy Binance month: far above its handful of repeats
    assert duplicates_allowed(10) == 100


def test_hyperliquid_repeats_beyond_the_share_block_the_coin_month(tmp_path: Path) -> None:
    """The same rule for Hyperliquid's exact repeats within one dataset (era overlaps are merged apart)."""
    from aperiodic_pipelines.sources.base import SourceObject
    from aperiodic_pipelines.sources.hyperliquid.eras import NODE_FILLS_BY_BLOCK, month_bounds
    from aperiodic_pipelines.sources.hyperliquid.parse import HOUR_SCHEMA
    from aperiodic_pipelines.sources.hyperliquid.source import ParsedHour, PreparedMonth, fetch_month

    month = "2025-09"
    start, end = month_bounds(month)
    start_us = int(start.timestamp()) * 1_000_000
    n = 500
    fills = pl.DataFrame(
        {"coin": ["BTC"] * n, "ts_exchange": [start_us + i * 1000 for i in range(n)],
         "ts_arrival": [start_us + i * 1000 + 5 for i in range(n)], "trade_id": list(range(1, n + 1)),
         "price": [100.0 + i for i in range(n)], "qty": [1.0] * n, "is_buy": [i % 2 == 0 for i in range(n)],
         "crossed": [True] * n, "hash64": list(range(n)), "side_fp": [None] * n, "line": list(range(1, n + 1))},
        schema=HOUR_SCHEMA,
    )

    def prepared_with(repeats: int) -> PreparedMonth:
        again = pl.concat([fills.head(1)] * repeats).with_columns(line=pl.int_range(n + 1, n + 1 + repeats))
        path = tmp_path / f"hour-{repeats}.parquet"
        pl.concat([fills, again]).write_parquet(path)
        hour = ParsedHour(NODE_FILLS_BY_BLOCK, start, path, SourceObject("s3://b/hourly/0.lz4", 1, "0" * 64), False, 0)
        return PreparedMonth(month, start, end, hours=[hour])

    ok = fetch_month("BTC", month, dest=tmp_path / "ok.parquet", prepared=prepared_with(ALLOWED_DUPLICATE_ROWS))
    assert ok.duplicates_dropped == ALLOWED_DUPLICATE_ROWS and ok.trade_count == n
    with pytest.raises(TooManyDuplicatesError, match=r"^hyperliquid-perps BTC 2025-09: 101 of 601 rows repeat"):
        fetch_month("BTC", month, dest=tmp_path / "bad.parquet", prepared=prepared_with(ALLOWED_DUPLICATE_ROWS + 1))
    assert not (tmp_path / "bad.parquet").exists()
