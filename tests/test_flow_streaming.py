"""The month's 1s bars a slice at a time: derived (`second_bar_slices`), checked (`MonthBarsValidator`,
`MonthBarChecks`) and written (`RowGroupWriter`) without the whole table in memory, with the same bytes as
the whole table."""

from __future__ import annotations

import hashlib
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest
from dagster import AssetKey

from aperiodic_pipelines.defs.checks import MonthBarChecks, run_bar_checks
from aperiodic_pipelines.domain.errors import InvalidBarsError
from aperiodic_pipelines.flow import (
    INTERVALS,
    bars_from_second_stats,
    compute_second_stats,
    second_bar_slices,
    validate_month_bars,
)
from aperiodic_pipelines.flow import bars as bars_module
from aperiodic_pipelines.flow.grid import FLOW_COLUMNS, NULLABLE_FIELDS, US_PER_SECOND, month_start_us
from aperiodic_pipelines.flow.schema import MonthBarsValidator
from aperiodic_pipelines.storage import bars_metadata, write_parquet_deterministic, write_parquet_row_groups
from aperiodic_pipelines.storage.parquet import (
    ROW_GROUP_SIZE,
    RowGroupWriter,
    _arrow_layout,
    _deterministic_writer,
)
from aperiodic_pipelines.synthetic import generate_tape

MONTH = "2024-02"  # 29 days: 2,505,600 seconds, so the last 1s row group is a short one


@pytest.fixture(scope="module")
def stats():
    previous = generate_tape("2024-01", 30_000, seed=51)
    current = generate_tape(MONTH, 30_000, seed=52, first_trade_id=1_000_000)
    return compute_second_stats(current, previous, month=MONTH)


@pytest.fixture(scope="module")
def whole_1s(stats) -> pl.DataFrame:
    return bars_from_second_stats(stats, intervals=["1s"])["1s"]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def metadata(rows: int) -> dict[str, str]:
    return bars_metadata(exchange="binance-futures", symbol="BINANCE_FUTURES:BTCUSDT", native_symbol="BTCUSDT",
                         interval="1s", timestamp="exchange", month=MONTH, row_count=rows)


def pyarrow_whole_table(frame: pl.DataFrame, path: Path, meta: dict[str, str], row_group_size: int) -> None:
    """What `write_parquet_deterministic` did before it wrote row groups one by one: the whole table in one
    `write_table` call that pyarrow splits into row groups."""
    table, layout_options = _arrow_layout(frame)
    with _deterministic_writer(path, table.schema, layout_options) as writer:
        writer.write_table(table, row_group_size=row_group_size)
        writer.add_key_value_metadata({k: meta[k] for k in sorted(meta)})


@pytest.mark.parametrize("rows", [ROW_GROUP_SIZE, 400_000, 86_400 * 7 + 13])
def test_slices_are_the_whole_1s_table(stats, whole_1s, rows: int) -> None:
    """Each slice's scores see the 20 bars before it: the slices join into the whole table, bit for bit,
    whichever derivation (sparse bars scattered, or the grid) each slice takes."""
    slices = list(second_bar_slices(stats, rows))
    assert [part.height for part in slices[:-1]] == [rows] * (len(slices) - 1)
    assert 0 < slices[-1].height <= rows
    assert pl.concat(slices).equals(whole_1s, null_equal=True)
    assert whole_1s["flow_toxicity_score"].is_not_null().sum() > 1_000  # the scores are compared too


def test_sparse_and_grid_slices_agree(stats, whole_1s, monkeypatch) -> None:
    for dense_from in (2.0, -1.0):  # never the grid, always the grid
        monkeypatch.setattr(bars_module, "DENSE_FROM", dense_from)
        assert pl.concat(list(second_bar_slices(stats, 500_000))).equals(whole_1s, null_equal=True), dense_from


def test_slices_without_trades_hold_zero_sums_and_nulls(monkeypatch) -> None:
    """Trades on the month's first day only: the later slices hold no trade at all. Their sums are 0 and every
    other field null (the window of an empty bar after a quiet stretch is undefined), as the grid derives them."""
    day_end = month_start_us(MONTH) + 86_400 * US_PER_SECOND
    trades = generate_tape(MONTH, 30_000, seed=53).filter(pl.col("ts_exchange") < day_end)
    quiet = compute_second_stats(trades, month=MONTH)
    slices = list(second_bar_slices(quiet, 400_000))
    assert quiet.frame.height > 1_000 and len(slices) == 7
    for empty in slices[1:]:
        for name in FLOW_COLUMNS[1:]:
            column = empty.get_column(name)
            if name in NULLABLE_FIELDS:
                assert column.null_count() == empty.height, name
            else:
                assert column.null_count() == 0 and (column == 0).all(), name
    monkeypatch.setattr(bars_module, "DENSE_FROM", -1.0)  # always the grid
    assert pl.concat(slices).equals(pl.concat(list(second_bar_slices(quiet, 400_000))), null_equal=True)


def test_streamed_file_is_byte_identical_to_the_whole_table(stats, whole_1s, tmp_path: Path) -> None:
    """A month of 1s bars written a row group at a time has the bytes of the whole table written at once, by
    `write_parquet_deterministic` and by pyarrow's own row-group split of the whole table."""
    streamed, whole, reference = tmp_path / "streamed.parquet", tmp_path / "whole.parquet", tmp_path / "ref.parquet"
    rows = write_parquet_row_groups(second_bar_slices(stats, ROW_GROUP_SIZE), streamed, metadata=metadata)
    assert rows == whole_1s.height == 29 * 86_400
    write_parquet_deterministic(whole_1s, whole, metadata=metadata(whole_1s.height))
    pyarrow_whole_table(whole_1s, reference, metadata(whole_1s.height), ROW_GROUP_SIZE)
    assert sha256(streamed) == sha256(whole) == sha256(reference)
    groups = pq.ParquetFile(streamed).metadata
    assert groups.num_row_groups == -(-rows // ROW_GROUP_SIZE) > 1
    assert groups.row_group(groups.num_row_groups - 1).num_rows == rows % ROW_GROUP_SIZE > 0  # a short last one
    assert pl.read_parquet(streamed).equals(whole_1s, null_equal=True)


@pytest.mark.parametrize("row_group_size", [1_000, 4_096])
def test_row_groups_match_pyarrow_split_for_any_size(whole_1s, tmp_path: Path, row_group_size: int) -> None:
    frame = whole_1s.head(10_500)
    streamed, reference = tmp_path / "streamed.parquet", tmp_path / "ref.parquet"
    slices = [frame.slice(offset, row_group_size) for offset in range(0, frame.height, row_group_size)]
    write_parquet_row_groups(slices, streamed, metadata=metadata, row_group_size=row_group_size)
    pyarrow_whole_table(frame, reference, metadata(frame.height), row_group_size)
    assert sha256(streamed) == sha256(reference)
    # ... and a changed value changes the bytes (the comparison is not vacuous).
    slices[1] = slices[1].with_columns(pl.col("taker_buy_count") + 1)
    write_parquet_row_groups(slices, streamed, metadata=metadata, row_group_size=row_group_size)
    assert sha256(streamed) != sha256(reference)


def test_misaligned_slices_are_refused_and_leave_no_file(whole_1s, tmp_path: Path) -> None:
    path = tmp_path / "bars.parquet"
    for slices in ([whole_1s.head(999), whole_1s.slice(999, 1_000)],  # a short slice before the last
                   [whole_1s.head(1_001)],  # more than a row group
                   [whole_1s.head(1_000), whole_1s.head(0)]):  # an empty slice after rows
        with pytest.raises(ValueError, match="every slice but the last must hold 1000 rows"):
            write_parquet_row_groups(slices, path, metadata=metadata, row_group_size=1_000)
        assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="not finished"), RowGroupWriter(path, row_group_size=1_000) as writer:
        writer.write(whole_1s.head(10))
    assert list(tmp_path.iterdir()) == []


def test_validation_in_slices_finds_what_the_whole_table_would(stats, whole_1s) -> None:
    slices = list(second_bar_slices(stats, 700_000))

    def validate(parts: list[pl.DataFrame]) -> None:
        validator = MonthBarsValidator(month=MONTH)
        for part in parts:
            validator.add("1s", part)
        validator.finish()

    validate(slices)
    validate_month_bars({"1s": whole_1s}, month=MONTH)
    with pytest.raises(InvalidBarsError, match=r"1s: column 'time' failed covers_month"):
        validate(slices[:-1])  # a month without its last slice
    with pytest.raises(InvalidBarsError, match=r"1s: column 'time' failed dense_grid"):
        validate([slices[0], slices[1].slice(1), *slices[2:]])  # a bar missing at a slice boundary
    with pytest.raises(InvalidBarsError, match=r"1s: column 'time' failed covers_month"):
        validate(slices[1:])  # starts after the month's start
    empty_row = int(((slices[2]["taker_buy_count"] + slices[2]["taker_sell_count"]) == 0).arg_true()[0])
    tampered = slices[2].with_columns(slices[2]["taker_buy_volume"].scatter([empty_row], [1.0]))
    with pytest.raises(InvalidBarsError, match=r"1s: column 'taker_buy_volume' failed zero_when_empty"):
        validate([*slices[:2], tampered, *slices[3:]])


def test_quiet_slices_gather_for_the_per_bar_rules_and_a_bad_bar_is_still_named(stats, monkeypatch) -> None:
    """A quiet month's slices are filtered to their bars with trades, which wait (up to `PENDING_ROWS`) for one
    query of the per-bar rules instead of one per slice; a bad bar in the first slice is reported, by `finish`
    at the latest, with its interval."""
    from aperiodic_pipelines.flow import schema as schema_module

    slices = list(second_bar_slices(stats, 262_144))  # 10 slices, ~2 % of their bars with trades
    queries = []
    real_broken_rule = schema_module.broken_rule
    monkeypatch.setattr(schema_module, "broken_rule", lambda frame, rules: queries.append(frame.height)
                        or real_broken_rule(frame, rules))

    def validate(parts: list[pl.DataFrame]) -> None:
        validator = MonthBarsValidator(month=MONTH)
        for part in parts:
            validator.add("1s", part)
        validator.finish()

    validate(slices)
    with_trades = sum(part.select((pl.col("taker_buy_count") + pl.col("taker_sell_count") > 0).sum()).item()
                      for part in slices)
    assert queries == [with_trades]  # one query over every slice's bars with trades
    first = slices[0]
    row = int((first["taker_buy_count"] + first["taker_sell_count"] > 0).arg_true()[3])
    tampered = first.with_columns(first["flow_entropy"].scatter([row], [1.5]))
    with pytest.raises(InvalidBarsError, match=r"flow bars 1s: .*flow_entropy"):
        validate([tampered, *slices[1:]])
    monkeypatch.setattr(schema_module, "PENDING_ROWS", 1)  # no gathering: found by the slice's own add
    validator = MonthBarsValidator(month=MONTH)
    with pytest.raises(InvalidBarsError, match=r"flow bars 1s: .*flow_entropy"):
        validator.add("1s", tampered)


def test_month_checks_in_slices(stats) -> None:
    """The blocking checks fed slice by slice pass on a good month and name the interval and the rule of a bad
    one; fed whole tables (`run_bar_checks`) they give the same verdicts."""
    coarser = bars_from_second_stats(stats, intervals=INTERVALS[1:])
    slices = list(second_bar_slices(stats, 1_000_000))

    def verdicts(parts: list[pl.DataFrame]) -> dict[str, tuple[bool, str]]:
        checks = MonthBarChecks(MONTH)
        for part in parts:
            checks.add("1s", part)
        for interval, frame in coarser.items():
            checks.add(interval, frame)
        return {r.check_name: (r.passed, getattr(r.metadata.get("failed_rule"), "text", ""))
                for r in checks.results(AssetKey("x"))}

    good = verdicts(slices)
    assert all(passed for passed, _ in good.values()), good
    whole = {r.check_name: r.passed for r in run_bar_checks(AssetKey("x"), {"1s": pl.concat(slices), **coarser},
                                                             MONTH)}
    assert whole == {name: passed for name, (passed, _) in good.items()}
    gap = verdicts([slices[0], slices[1].slice(5), slices[2]])
    assert gap["dense_grid"] == (False, "1s: first bar at 2024-02-12 13:46:45, expected the bar after the previous "
                                        "slice's last")
    assert gap["schema_and_invariants"][0] is False and gap["nonempty_month"][0] is True
    short = verdicts(slices[:2])
    assert short["dense_grid"] == (False, f"1s: 2000000 rows, expected {29 * 86_400} for {MONTH}")
    # A bad bar fails schema_and_invariants in the first slice; the grid is still followed slice by slice (the
    # validator stops being fed, the grid check reads its own facts of the later slices' times).
    first = slices[0]
    empty_row = int(((first["taker_buy_count"] + first["taker_sell_count"]) == 0).arg_true()[0])
    bad_bar = first.with_columns(first["taker_buy_volume"].scatter([empty_row], [1.0]))
    tampered = verdicts([bad_bar, *slices[1:]])
    assert tampered["schema_and_invariants"][0] is False and tampered["dense_grid"] == (True, "")
    tampered_gap = verdicts([bad_bar, slices[1].slice(5), slices[2]])
    assert tampered_gap["dense_grid"] == gap["dense_grid"]


def test_month_checks_split_across_threads_give_one_ordered_verdict(stats) -> None:
    """The step checks the 1s table and the coarser ones in separate `MonthBarChecks` (two threads): joined by
    `results`, they give the verdicts and metadata of one set fed in interval order, and a check failed in both
    reports the finer interval's failure, whichever thread finished first."""
    coarser = bars_from_second_stats(stats, intervals=INTERVALS[1:])
    slices = list(second_bar_slices(stats, 1_000_000))

    def checked(seconds: list[pl.DataFrame], tables: dict[str, pl.DataFrame]) -> tuple[MonthBarChecks, ...]:
        second_checks, coarser_checks = MonthBarChecks(MONTH), MonthBarChecks(MONTH)
        for interval, frame in tables.items():  # the coarser set first: the order a thread may finish in
            coarser_checks.add(interval, frame)
        for part in seconds:
            second_checks.add("1s", part)
        return second_checks, coarser_checks

    def summary(results) -> dict[str, tuple[bool, dict]]:
        return {r.check_name: (r.passed, {k: getattr(v, "value", getattr(v, "text", v)) for k, v in r.metadata.items()})
                for r in results}

    together = MonthBarChecks(MONTH)
    for part in slices:
        together.add("1s", part)
    for interval, frame in coarser.items():
        together.add(interval, frame)
    second_checks, coarser_checks = checked(slices, coarser)
    joined = summary(second_checks.results(AssetKey("x"), coarser_checks))
    assert joined == summary(together.results(AssetKey("x")))
    assert all(passed for passed, _ in joined.values())
    assert joined["schema_and_invariants"][1]["intervals"] == ",".join(INTERVALS)
    assert joined["nonempty_month"][1]["trades"] == sum(
        part.select(pl.col("taker_buy_count").sum() + pl.col("taker_sell_count").sum()).item() for part in slices)

    short_1m = {**coarser, "1m": coarser["1m"].slice(0, 100)}
    second_checks, coarser_checks = checked(slices[:2], short_1m)  # both fail dense_grid
    failed = summary(second_checks.results(AssetKey("x"), coarser_checks))
    assert failed["dense_grid"][0] is False
    assert failed["dense_grid"][1]["failed_rule"] == f"1s: 2000000 rows, expected {29 * 86_400} for {MONTH}"
    second_checks, coarser_checks = checked(slices, short_1m)  # only the coarser set fails
    only_coarser = summary(second_checks.results(AssetKey("x"), coarser_checks))
    assert only_coarser["dense_grid"][1]["failed_rule"].startswith("1m: 100 rows, expected")


def _bits(frame: pl.DataFrame) -> pl.DataFrame:
    """Floats as their bit patterns, so equality is bit for bit (−0.0 ≠ 0.0, NaN = NaN)."""
    return frame.with_columns(pl.col(pl.Float64).reinterpret(signed=True))


def test_roll_ups_in_pieces_are_one_group_by_bit_for_bit(stats, monkeypatch: pytest.MonkeyPatch) -> None:
    """`_roll_up` sums a busy month in pieces cut where a coarser bar starts (bounded temporaries): with pieces
    far smaller than the month, and cuts that land inside bars of every width, every interval's bars are those
    of one group-by over the whole table, bit for bit."""
    whole = {interval: _bits(frame) for interval, frame in bars_from_second_stats(stats).items()}
    seconds = stats.frame.rename({"second": "bar"})
    for piece_rows in (997, 4_096):
        monkeypatch.setattr(bars_module, "ROLL_UP_PIECE_ROWS", piece_rows)
        assert seconds.height > 10 * piece_rows  # many pieces
        for width in (60, 300, 3_600):
            pieces = bars_module._roll_up(seconds, width)
            assert pieces.equals(bars_module._roll_up_piece(seconds, width))
            assert _bits(pieces).equals(_bits(bars_module._roll_up_piece(seconds, width)))
        in_pieces = {interval: _bits(frame) for interval, frame in bars_from_second_stats(stats).items()}
        for interval in INTERVALS:
            assert in_pieces[interval].equals(whole[interval]), interval


def test_slices_reading_their_seconds_from_the_file_are_the_whole_table(stats, whole_1s, tmp_path: Path) -> None:
    """A busy month's 1s slices read their own seconds from the statistics' file (`seconds_between`) rather than
    holding them all: the same bars, bit for bit, with the month's lead-in read the same way."""
    from dataclasses import replace

    from aperiodic_pipelines.defs.bars import _seconds_reader

    path = tmp_path / "seconds.parquet"
    write_parquet_deterministic(stats.frame, path, metadata={"a": "b"})
    for rows in (1_000_000, 777_777):
        read = list(second_bar_slices(replace(stats, frame=stats.frame.clear()), rows,
                                      seconds_between=_seconds_reader(path)))
        assert [part.height for part in read] == [part.height for part in second_bar_slices(stats, rows)]
        assert _bits(pl.concat(read)).equals(_bits(whole_1s))
