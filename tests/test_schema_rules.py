"""The flow-bar schema's rules evaluated in one polars pass (`bar_rules`, `broken_rule`): every check pandera's
schema makes is one of them, a table breaking any of them is rejected with pandera's own report, and a table
that passes never imports pandera."""

from __future__ import annotations

import math
import subprocess
import sys

import polars as pl
import pytest

from aperiodic_pipelines.domain.errors import InvalidBarsError
from aperiodic_pipelines.flow import (
    FLOW_COLUMNS,
    NULLABLE_FIELDS,
    compute_flow_bars,
    validate_bars,
    validate_month_bars,
)
from aperiodic_pipelines.flow.schema import bar_rules, flow_bars_schema
from aperiodic_pipelines.synthetic import generate_tape
from aperiodic_pipelines.trades import summarise_schema_errors

MONTH = "2024-01"
HAS_TRADES = (pl.col("taker_buy_count") + pl.col("taker_sell_count")) > 0


@pytest.fixture(scope="module")
def bars_1m() -> pl.DataFrame:
    tape = generate_tape(MONTH, 3_000, seed=37)
    return compute_flow_bars(tape, None, month=MONTH, intervals=("1m",))["1m"]


def _pandera_checks(schema) -> set[tuple[str | None, str]]:
    """(column, check) of every check the pandera schema makes on the values (dtypes and order aside)."""
    checks = {(None, check.name) for check in schema.checks}
    for name, column in schema.columns.items():
        checks |= {(name, check.name) for check in column.checks}
        if not column.nullable:
            checks.add((name, "not_nullable"))
    return checks


@pytest.mark.parametrize(("interval", "month", "ordered"), [(None, None, False), (None, None, True),
                                                             ("1h", None, True), ("1h", MONTH, True)])
def test_every_check_of_the_pandera_schema_is_a_rule(interval, month, ordered) -> None:
    schema = flow_bars_schema(interval, month, ordered_in_time=ordered)
    rules = bar_rules(interval, month, ordered_in_time=ordered)
    assert _pandera_checks(schema) == {(rule.column, rule.check) for rule in rules}
    assert len(rules) == len({(rule.column, rule.check) for rule in rules})
    assert list(schema.columns) == list(FLOW_COLUMNS)
    assert {name for name, column in schema.columns.items() if column.nullable} == set(NULLABLE_FIELDS)


def _pandera_report(frame: pl.DataFrame) -> tuple[set[tuple[str | None, str]], str]:
    """The (column, check) pairs pandera finds broken in the bars with trades of `frame`, and its report."""
    import pandera.polars as pa

    schema = flow_bars_schema(ordered_in_time=False)
    # pandera's failure cases name a check by its error text, and a table's check by the schema's name.
    names = {(None, text): (None, check.name) for check in schema.checks for text in (str(check), check.error)}
    for name, column in schema.columns.items():
        names |= {(name, text): (name, check.name) for check in column.checks for text in (str(check), check.error)}
        names[(name, "not_nullable")] = (name, "not_nullable")
    try:
        schema.validate(frame.filter(HAS_TRADES), lazy=True)
    except pa.errors.SchemaErrors as exc:
        cases = exc.failure_cases.select("column", "check").unique().iter_rows()
        failed = {names[(None if column == schema.name else column, check)] for column, check in cases}
        return failed, summarise_schema_errors(exc)
    return set(), ""


def _candidates(value: object) -> list[object]:
    if isinstance(value, int):
        return [value + 1, -1, None]
    nudged = [value + 1.0, value * 1.5] if value is not None and not math.isnan(value) else [0.5]
    return [*nudged, 2.0, -1.0, float("nan"), None]


def test_a_bar_breaking_any_rule_is_rejected_with_pandera_s_report(bars_1m) -> None:
    """For each check pandera makes on the bars with trades, tamper with one such bar until pandera reports
    that check broken: the fast path rejects the table with exactly pandera's report."""
    first = int(bars_1m.with_row_index().filter(HAS_TRADES)["index"][0])
    bars = bars_1m.slice(first, 120)  # bars with trades and empty ones; no grid rules: validate_bars(interval=None)
    both_sides = (pl.col("taker_buy_count") > 1) & (pl.col("taker_sell_count") > 1)  # stays a bar with trades
    row = int(bars.with_row_index().filter(both_sides)["index"][0])
    assert validate_bars(bars) is bars
    seen: set[tuple[str | None, str]] = set()
    tried: set[tuple[str, str]] = set()
    for rule in bar_rules(ordered_in_time=False):
        columns = [rule.column] if rule.column else sorted(rule.passes.meta.root_names())
        for column, value in ((c, v) for c in columns if c != "time" for v in _candidates(bars[c][row])):
            if (rule.column, rule.check) in seen:
                break
            if (column, repr(value)) in tried:
                continue
            tried.add((column, repr(value)))
            tampered = bars.with_columns(bars[column].scatter([row], [value]))
            if not tampered.slice(row, 1).select(HAS_TRADES).item():
                continue  # no longer a bar with trades: the dense rules' business
            failed, report = _pandera_report(tampered)
            if not failed:
                continue
            seen |= failed
            with pytest.raises(InvalidBarsError) as raised:
                validate_bars(tampered)
            if value is None and column not in NULLABLE_FIELDS:  # the dense pass finds the null first, as before
                assert str(raised.value).startswith(f"flow bars: column '{column}' failed zero_when_empty")
            else:
                assert str(raised.value) == f"flow bars: {report}", (column, value)
    never = {(rule.column, rule.check) for rule in bar_rules(ordered_in_time=False)} - seen
    # What no bar that keeps its trades can break: a NaN in an integer column; what makes it no bar with trades
    # (a null time or count, the dense pass's to find).
    assert never == {(c, "not_nan") for c in FLOW_COLUMNS if c.endswith("_count")} | {
        ("time", "not_nullable"), ("taker_buy_count", "not_nullable"), ("taker_sell_count", "not_nullable"),
        (None, "empty_bar_has_no_volume"),
    }


def test_a_month_that_passes_never_imports_pandera() -> None:
    """pandera (with pandas, ~0.5 s of CPU) is for the report of a failure only."""
    code = (
        "import sys\n"
        "from aperiodic_pipelines.flow import compute_flow_bars, validate_month_bars\n"
        "from aperiodic_pipelines.synthetic import generate_tape\n"
        f"bars = compute_flow_bars(generate_tape({MONTH!r}, 500, seed=3), None, month={MONTH!r}, "
        "intervals=('1h', '1d'))\n"
        f"validate_month_bars(bars, month={MONTH!r})\n"
        "print('pandera' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


def test_pieces_checked_whole_give_the_same_verdicts(bars_1m, monkeypatch) -> None:
    """A piece where nearly every bar has trades (a busy 1s month) is checked without filtering; a broken bar
    with trades gets pandera's report, a broken empty bar the dense pass's, as when filtered."""
    from aperiodic_pipelines.flow import schema as schema_module

    with_trades = bars_1m.with_row_index().filter(HAS_TRADES)["index"]
    empty = bars_1m.with_row_index().filter(~HAS_TRADES)["index"]
    broken_bar = bars_1m.with_columns(bars_1m["flow_entropy"].scatter([int(with_trades[5])], [1.5]))
    broken_empty = bars_1m.with_columns(bars_1m["taker_buy_volume"].scatter([int(empty[5])], [0.5]))
    messages = {}
    for share in (schema_module.FILTER_BELOW_SHARE, 0.0):
        monkeypatch.setattr(schema_module, "FILTER_BELOW_SHARE", share)
        validate_month_bars({"1m": bars_1m}, month=MONTH)
        for name, frame in (("bar", broken_bar), ("empty", broken_empty)):
            with pytest.raises(InvalidBarsError) as raised:
                validate_month_bars({"1m": frame}, month=MONTH)
            messages.setdefault(name, set()).add(str(raised.value))
    assert len(messages["bar"]) == 1 and "flow_entropy" in next(iter(messages["bar"]))
    assert messages["empty"] == {"flow bars 1m: column 'taker_buy_volume' failed zero_when_empty: taker_buy_volume "
                                 "must be 0 in a bar without trades (and never null)"}
