"""The flow-bar table's contract (spec §2): dtypes, nulls, ranges and invariants.

The rules (`bar_rules`) are polars expressions; the pandera.polars schema (`flow_bars_schema`) is built from
them. Validation evaluates them all in one polars query and calls pandera only to report a failure.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING

import polars as pl

from aperiodic_pipelines.domain.errors import InvalidBarsError
from aperiodic_pipelines.domain.months import day_bounds_us
from aperiodic_pipelines.flow.grid import (
    BUCKETS,
    FLOW_COLUMNS,
    FLOW_SCHEMA,
    INTERVAL_SECONDS,
    NULL_WHEN_EMPTY,
    NULLABLE_FIELDS,
    SIDES,
    US_PER_SECOND,
    ZERO_WHEN_EMPTY,
    bars_in_month,
    month_start_us,
)
from aperiodic_pipelines.trades import summarise_schema_errors

if TYPE_CHECKING:  # pandera costs ~0.5 s of CPU to import; only the report of a failure needs it
    import pandera.polars as pa

# Float sums are not associative: invariants between sums hold to this relative tolerance.
RELATIVE_TOLERANCE = 1e-9

_FRACTIONS = {
    "flow_entropy",
    "taker_buy_sell_percentage",
    "taker_buy_sell_count_percentage",
    *(f"taker_{s}_{b}_order_{kind}" for s in SIDES for b in BUCKETS for kind in ("percentage", "count_percentage")),
}
_NON_NEGATIVE = {
    "taker_buy_volume",
    "taker_sell_volume",
    "taker_buy_sell_ratio",
    "taker_buy_sell_count_ratio",
    *(f"taker_{s}_{b}_order_{what}" for s in SIDES for b in BUCKETS for what in ("volume", "count")),
    "taker_buy_count",
    "taker_sell_count",
}
_SIGNED = {"volume_delta", "volume_delta_notional", "flow_toxicity_score"}


def _grid_of(period: str, interval: str) -> tuple[int, int, str]:
    """(first bar in µs, bar count, first day) of a month `YYYY-MM` or, for a daily file, a day `YYYY-MM-DD`."""
    if len(period) == len("YYYY-MM-DD"):
        start = day_bounds_us(period)[0]
        return start, 86_400 // INTERVAL_SECONDS[interval], period
    return month_start_us(period), bars_in_month(period, interval), f"{period}-01"


def _close(left: pl.Expr, right: pl.Expr) -> pl.Expr:
    scale = pl.max_horizontal(left.abs(), right.abs(), pl.lit(1.0))
    return (left - right).abs() <= RELATIVE_TOLERANCE * scale


def _side_notional(side: str) -> pl.Expr:
    return pl.sum_horizontal(*(pl.col(f"taker_{side}_{b}_order_volume") for b in BUCKETS))


def _ratio_matches(name: str, numerator: pl.Expr, denominator: pl.Expr) -> pl.Expr:
    """`name` is numerator/denominator where the denominator is non-zero, and null exactly where it is zero."""
    defined = denominator != 0
    value_ok = _close(pl.col(name), numerator.cast(pl.Float64) / denominator)
    return pl.when(defined).then(value_ok.fill_null(False)).otherwise(pl.col(name).is_null())


def _entropy_of(share: pl.Expr) -> pl.Expr:
    return pl.when(share > 0).then(-share * share.log(2)).otherwise(0.0)


def _invariants() -> dict[str, tuple[pl.Expr, str]]:
    col = pl.col
    volume = col("taker_buy_volume") + col("taker_sell_volume")
    rules: dict[str, tuple[pl.Expr, str]] = {
        "volume_delta_is_buy_minus_sell": (
            _close(col("volume_delta"), col("taker_buy_volume") - col("taker_sell_volume")),
            "volume_delta must equal taker_buy_volume − taker_sell_volume",
        ),
        "volume_delta_notional_is_bucket_notionals": (
            _close(col("volume_delta_notional"), _side_notional("buy") - _side_notional("sell")),
            "volume_delta_notional must equal Σ buy bucket notionals − Σ sell bucket notionals",
        ),
        "entropy_matches_buy_share": (
            pl.when(volume > 0)
            .then(
                _close(
                    col("flow_entropy"),
                    (_entropy_of(col("taker_buy_volume") / volume) + _entropy_of(col("taker_sell_volume") / volume))
                    .clip(0.0, 1.0),
                ).fill_null(False)
            )
            .otherwise(col("flow_entropy").is_null()),
            "flow_entropy must be the binary entropy of the buy volume share, null without volume",
        ),
        "buy_sell_ratio": (
            _ratio_matches("taker_buy_sell_ratio", col("taker_buy_volume"), col("taker_sell_volume")),
            "taker_buy_sell_ratio must be buy/sell volume, null where sell volume is 0",
        ),
        "buy_sell_count_ratio": (
            _ratio_matches("taker_buy_sell_count_ratio", col("taker_buy_count"), col("taker_sell_count")),
            "taker_buy_sell_count_ratio must be buy/sell count, null where sell count is 0",
        ),
        "buy_sell_percentage": (
            _ratio_matches("taker_buy_sell_percentage", col("taker_buy_volume"), volume),
            "taker_buy_sell_percentage must be buy/(buy+sell) volume, null without volume",
        ),
        "buy_sell_count_percentage": (
            _ratio_matches(
                "taker_buy_sell_count_percentage", col("taker_buy_count"), col("taker_buy_count") + col("taker_sell_count")
            ),
            "taker_buy_sell_count_percentage must be buy/(buy+sell) count, null without trades",
        ),
        "empty_bar_has_no_volume": (
            ((col("taker_buy_count") + col("taker_sell_count")) > 0) | (volume == 0),
            "a bar without trades must have zero volume",
        ),
    }
    for side in SIDES:
        count_total = pl.sum_horizontal(*(col(f"taker_{side}_{b}_order_count") for b in BUCKETS))
        rules[f"{side}_bucket_counts_add_up"] = (
            count_total == col(f"taker_{side}_count"),
            f"taker_{side}_{{small,medium,large}}_order_count must add up to taker_{side}_count",
        )
        pct = [col(f"taker_{side}_{b}_order_percentage") for b in BUCKETS]
        cpct = [col(f"taker_{side}_{b}_order_count_percentage") for b in BUCKETS]
        for kind, parts, denominator in (
            ("percentage", pct, _side_notional(side)),
            ("count_percentage", cpct, col(f"taker_{side}_count")),
        ):
            rules[f"{side}_bucket_{kind}s_sum_to_one"] = (
                pl.when(denominator != 0)
                .then(_close(pl.sum_horizontal(*parts), pl.lit(1.0)).fill_null(False))
                .otherwise(pl.all_horizontal(p.is_null() for p in parts)),
                f"taker_{side}_{{small,medium,large}}_order_{kind} must sum to 1, all null where the side is empty",
            )
        for b in BUCKETS:
            rules[f"{side}_{b}_order_percentage"] = (
                _ratio_matches(f"taker_{side}_{b}_order_percentage", col(f"taker_{side}_{b}_order_volume"),
                               _side_notional(side)),
                f"taker_{side}_{b}_order_percentage must be the bucket's share of {side} notional",
            )
            rules[f"{side}_{b}_order_count_percentage"] = (
                _ratio_matches(f"taker_{side}_{b}_order_count_percentage", col(f"taker_{side}_{b}_order_count"),
                               col(f"taker_{side}_count")),
                f"taker_{side}_{b}_order_count_percentage must be the bucket's share of {side} count",
            )
    return rules


@dataclass(frozen=True)
class BarRule:
    """One rule of the schema: the check named `check` of `column`, or with `column` None of the whole table.

    `passes` is true for each bar that keeps the rule (one value for a rule on the table), and a null is no
    failure (pandera's `ignore_na`). `error` is the message of a rule of ours; pandera's built-in checks
    (`in_range`, `greater_than_or_equal_to`) and `not_nullable` (the column's `nullable=False`) carry their own.
    """

    column: str | None
    check: str
    passes: pl.Expr
    error: str = ""


FRACTION_RANGE = (0.0, 1.0)


def _column_rules(name: str) -> list[BarRule]:
    column = pl.col(name)
    rules = []
    if name not in NULLABLE_FIELDS:  # pandera counts a NaN in a float column as a null
        present = column.is_not_null() & column.is_not_nan() if FLOW_SCHEMA[name].is_float() else column.is_not_null()
        rules.append(BarRule(name, "not_nullable", present))
    if name in _FRACTIONS:  # pandera's Check.in_range(*FRACTION_RANGE), its expression
        rules.append(BarRule(name, "in_range", column.ge(FRACTION_RANGE[0]) & column.le(FRACTION_RANGE[1])))
    elif name in _NON_NEGATIVE:  # pandera's Check.ge(0), its expression
        rules.append(BarRule(name, "greater_than_or_equal_to", column.ge(0)))
    if name in _SIGNED or name in _FRACTIONS or name in _NON_NEGATIVE:
        rules.append(BarRule(name, "not_nan", column.is_nan().not_(), f"{name} must not be NaN"))
    return rules


def _table_rules(interval: str | None, month: str | None, ordered_in_time: bool) -> list[BarRule]:
    rules = [BarRule(None, name, rule, error) for name, (rule, error) in _invariants().items()]
    if not ordered_in_time:
        return rules
    time_us = pl.col("time").cast(pl.Int64)
    rules.append(BarRule(None, "time_strictly_increasing", (time_us > time_us.shift(1)).fill_null(True),
                         "time must be strictly increasing"))
    if interval is not None:
        step = INTERVAL_SECONDS[interval] * US_PER_SECOND
        rules.append(BarRule(
            None, "time_on_dense_grid", (time_us - time_us.shift(1) == step).fill_null(True) & (time_us % step == 0),
            f"time must step by exactly {interval} on the UTC-aligned grid (empty bars included)",
        ))
        if month is not None:
            start, rows, first = _grid_of(month, interval)
            rules.append(BarRule(None, "covers_month", (pl.len() == rows) & (time_us.first() == start),
                                 f"a {month} {interval} file must hold {rows} bars starting at {first} 00:00 UTC"))
    return rules


@cache
def bar_rules(interval: str | None = None, month: str | None = None, *, ordered_in_time: bool = True
              ) -> tuple[BarRule, ...]:
    """Every rule of `flow_bars_schema(interval, month, ordered_in_time=...)` but the columns, their order and
    dtypes: the schema is built from these, and `broken_rule` evaluates them all in one pass."""
    columns = [rule for name in FLOW_COLUMNS for rule in _column_rules(name)]
    return (*columns, *_table_rules(interval, month, ordered_in_time))


def broken_rule(frame: pl.DataFrame, rules: tuple[BarRule, ...]) -> BarRule | None:
    """The first of `rules` some bar of `frame` breaks, or None: all rules in one query (pandera collects each
    check on its own, and needs ~0.5 s of CPU to import). The streaming engine evaluates them a morsel of rows
    at a time, so the rules' temporaries stay in cache: ~25% less CPU than one pass over 0.7 M bars."""
    kept = frame.lazy().select(
        rule.passes.fill_null(True).all().alias(str(index)) for index, rule in enumerate(rules)
    ).collect(engine="streaming").row(0)
    return next((rule for rule, ok in zip(rules, kept, strict=True) if not ok), None)


def _pandera_check(rule: BarRule) -> pa.Check:
    import pandera.polars as pa

    if rule.check == "in_range":
        return pa.Check.in_range(*FRACTION_RANGE)
    if rule.check == "greater_than_or_equal_to":
        return pa.Check.ge(0)
    return pa.Check(lambda data: data.lazyframe.select(rule.passes.alias(rule.check)), name=rule.check,
                    error=rule.error)


@cache
def flow_bars_schema(interval: str | None = None, month: str | None = None, *, ordered_in_time: bool = True
                     ) -> pa.DataFrameSchema:
    """The schema of a flow-bar table; with `interval` and `month`, also its dense grid (spec §2).

    `ordered_in_time=False` leaves out every rule between rows (for a table of bars picked from several
    intervals): what remains are the dtypes, nulls, ranges and the per-bar invariants. Built from `bar_rules`.
    """
    import pandera.polars as pa

    rules = bar_rules(interval, month, ordered_in_time=ordered_in_time)
    column_checks: dict[str, list[pa.Check]] = {name: [] for name in FLOW_COLUMNS}
    for rule in rules:
        if rule.column is not None and rule.check != "not_nullable":
            column_checks[rule.column].append(_pandera_check(rule))
    return pa.DataFrameSchema(
        columns={
            name: pa.Column(FLOW_SCHEMA[name], checks=checks, nullable=name in NULLABLE_FIELDS)
            for name, checks in column_checks.items()
        },
        checks=[_pandera_check(rule) for rule in rules if rule.column is None],
        strict=True,
        ordered=True,
        name=f"flow_bars[{interval or '*'}{', ' + month if month else ''}]",
    )


# An empty bar (no trades) is the same constant row everywhere (`ZERO_WHEN_EMPTY`, `NULL_WHEN_EMPTY`, a score
# null or 0). That row satisfies every per-bar rule, so on a dense table the rules need to see only the bars with
# trades; the empty ones are proven equal to the constant.
_HAS_TRADES = (pl.col("taker_buy_count") + pl.col("taker_sell_count")) > 0
# Dense rows per pass of the per-bar rules: bounds the filtered copy and the rules' temporaries.
RULES_PIECE_ROWS = 1 << 19
# A piece with at least this share of bars with trades (a busy 1s month) is checked whole: its empty bars keep
# every rule anyway, and filtering would copy nearly all of it.
FILTER_BELOW_SHARE = 0.75
# Pieces wait for the per-bar rules until this many bars have gathered, from any slice of any interval: the rules
# are one polars query with a fixed cost (~9 ms for ~100 rules), which a quiet 1s month paid once per slice (11 of
# them) and every month once per coarser table (7). A busy 1s slice (2^18 bars) is checked as it comes.
PENDING_ROWS = 1 << 17


def validate_bars(
    bars: pl.DataFrame, *, interval: str | None = None, month: str | None = None, name: str = "flow bars"
) -> pl.DataFrame:
    """Validate a flow-bar table; raise `InvalidBarsError` naming the field, the rule and a few failing rows.

    `month` (`YYYY-MM`), or a day (`YYYY-MM-DD`) for a daily file, adds the check that the table is its whole
    dense grid.

    The schema's per-bar rules see the bars that hold trades; one vectorised pass over the whole table proves
    the rest: the time grid, and that every empty bar is the constant empty row. A table whose columns or
    dtypes are not the contract's goes through the full pandera schema, which names what is wrong.
    """
    validate_month_bars({interval: bars}, month=month, name=name)
    return bars


def validate_month_bars(
    bars: Mapping[str | None, pl.DataFrame], *, month: str | None, name: str = "flow bars"
) -> None:
    """Validate the dense tables of one month, keyed by interval; the error names the interval.

    The same rules as `validate_bars` on each (`MonthBarsValidator` with each table in one piece).
    """
    validator = MonthBarsValidator(month=month, name=name)
    for interval, frame in bars.items():
        validator.add(interval, frame)
    validator.finish()


@dataclass(frozen=True)
class TimeFacts:
    """The `time` column of one slice, in µs: what the grid rules (and `defs.checks`' dense_grid) look at."""

    nulls: int
    first: int | None
    last: int | None
    increasing: bool  # strictly, within the slice
    evenly_spaced: bool  # one interval apart within the slice (True without an interval)


def time_facts(frame: pl.DataFrame, interval: str | None) -> TimeFacts:
    """One pass over a slice's `time` (a datetime column of any unit)."""
    time_us = pl.col("time").dt.epoch("us")
    spaced = pl.lit(True) if interval is None else (
        time_us.diff() == INTERVAL_SECONDS[interval] * US_PER_SECOND).all()
    return TimeFacts(*frame.select(
        nulls=time_us.null_count(), first=time_us.first(), last=time_us.last(), increasing=(time_us.diff() > 0).all(),
        evenly_spaced=spaced,
    ).row(0))


class MonthBarsValidator:
    """`validate_month_bars` for tables that arrive in consecutive slices (a busy 1s month is ~0.8 GB whole).

    `add` checks a slice's dense-table rules at once (the time grid continues where the interval's previous
    slice ended; empty bars are the constant row). The schema's per-bar rules (`bar_rules`) see its bars with
    trades, `RULES_PIECE_ROWS` dense rows at a time (whole where nearly all its bars have trades), all rules in
    one pass once `PENDING_ROWS` bars have gathered or at `finish`, so a bad bar may be reported by a later
    `add`; only a piece that breaks a rule goes through pandera, for its report, which names its interval.
    `finish` also checks that each table covered its month (or day). Each raises `InvalidBarsError`. `times` are the `time` facts of the slice last added, even of one that failed.
    """

    def __init__(self, *, month: str | None, name: str = "flow bars") -> None:
        self.month, self.name = month, name
        self.rows: dict[str | None, int] = {}
        self.times: TimeFacts | None = None
        self._last_time: dict[str | None, int] = {}  # µs of the interval's last bar so far
        self._pending: list[tuple[str, pl.DataFrame]] = []  # (label, filtered piece) awaiting the per-bar rules
        self._pending_rows = 0

    def label(self, interval: str | None) -> str:
        return f"{self.name} {interval}" if interval else self.name

    def add(self, interval: str | None, part: pl.DataFrame) -> None:
        """Check the next slice of `interval`'s table (its first slice starts the table)."""
        self.times = None
        label = self.label(interval)
        if part.schema != pl.Schema(FLOW_SCHEMA):  # columns, their order or dtypes: the full schema names it
            follows = self._last_time.get(interval)
            _pandera(part, flow_bars_schema(interval, self.month if follows is None else None), label)
        self.times = time_facts(part, interval)
        counted, pieces = _bars_with_trades(part)
        problem = _dense_problem(part, self.times, counted, interval, self.month, self._last_time.get(interval))
        if problem:
            raise InvalidBarsError(f"{label}: {problem}")
        self._pending += [(label, piece) for piece in pieces]
        self._pending_rows += sum(piece.height for piece in pieces)
        self.rows[interval] = self.rows.get(interval, 0) + part.height
        if part.height:
            self._last_time[interval] = self.times.last
        if self._pending_rows >= PENDING_ROWS:
            self._check_pending()

    def _check_pending(self) -> None:
        pending, self._pending, self._pending_rows = self._pending, [], 0
        _check_per_bar_rules(pending)

    def finish(self) -> None:
        """The bars still waiting for the per-bar rules keep them, and every table held its whole grid."""
        self._check_pending()
        if self.month is not None:
            for interval, rows in self.rows.items():
                if interval is not None and rows != _grid_of(self.month, interval)[1]:
                    raise InvalidBarsError(f"{self.label(interval)}: {_covers_month_problem(interval, self.month)}")


def _covers_month_problem(interval: str, month: str) -> str:
    _, rows, first = _grid_of(month, interval)
    return (f"column 'time' failed covers_month: a {month} {interval} table must hold {rows} bars starting at "
            f"{first} 00:00 UTC")


def _bars_with_trades(frame: pl.DataFrame) -> tuple[dict[str, int], list[pl.DataFrame]]:
    """What the bars with trades of a contract-typed table hold (`_dense_problem`'s counts), and its pieces of
    `RULES_PIECE_ROWS` dense rows that the per-bar rules must see: whole or filtered to their bars with trades.

    A piece is filtered unless nearly all its bars have trades (`FILTER_BELOW_SHARE`): its empty bars keep every
    per-bar rule once `_dense_problem` has proven them the constant row.
    """
    score = pl.col("flow_toxicity_score")

    def counts(among: pl.Expr) -> list[pl.Expr]:
        return [
            (among & (score.is_null() | (score == 0))).sum().alias("_null_or_zero"),
            *((among & (pl.col(f) != 0)).sum().alias(f) for f in ZERO_WHEN_EMPTY),
            *((among & pl.col(f).is_null()).sum().alias(f) for f in NULL_WHEN_EMPTY),
        ]

    counted = dict.fromkeys(("_with_trades", "_null_or_zero", *ZERO_WHEN_EMPTY, *NULL_WHEN_EMPTY), 0)
    pieces = []
    for start in range(0, frame.height, RULES_PIECE_ROWS):
        piece = frame.slice(start, RULES_PIECE_ROWS)
        with_trades = piece.select(_HAS_TRADES.sum()).item()
        if not with_trades:
            continue
        among = _HAS_TRADES
        if with_trades < FILTER_BELOW_SHARE * piece.height:
            piece, among = piece.filter(_HAS_TRADES), pl.lit(True)
        pieces.append(piece)
        counted["_with_trades"] += with_trades
        for key, value in piece.select(counts(among)).row(0, named=True).items():
            counted[key] += value
    return counted, pieces


def _check_per_bar_rules(pieces: list[tuple[str, pl.DataFrame]]) -> None:
    """The per-bar rules over (label, piece)s in one query; where one is broken, pandera's report on the first
    piece that breaks it, named by that piece's label."""
    if not pieces:
        return
    rules = bar_rules(ordered_in_time=False)
    together = pl.concat([piece for _, piece in pieces]) if len(pieces) > 1 else pieces[0][1]  # chunks, no copy
    if broken_rule(together, rules) is None:
        return
    for label, piece in pieces:
        if broken_rule(piece, rules) is not None:
            _report_broken(piece, label)


def _report_broken(piece: pl.DataFrame, label: str) -> None:
    """Raise pandera's report on the bars with trades of a piece that `broken_rule` found breaking a rule."""
    piece = piece.filter(_HAS_TRADES)
    _pandera(piece, flow_bars_schema(ordered_in_time=False), label)
    # Not reached: the rules are the schema's own. Should they ever disagree, the bars still fail.
    rule = broken_rule(piece, bar_rules(ordered_in_time=False)) or BarRule(None, "a per-bar rule", pl.lit(False))
    raise InvalidBarsError(f"{label}: {rule.column or 'the table'} failed {rule.check} (pandera did not report it)")


def _pandera(frame: pl.DataFrame, schema: pa.DataFrameSchema, name: str) -> None:
    import pandera.polars as pa

    try:
        schema.validate(frame, lazy=True)
    except pa.errors.SchemaErrors as exc:
        raise InvalidBarsError(f"{name}: {summarise_schema_errors(exc)}") from None


def _dense_problem(frame: pl.DataFrame, times: TimeFacts, counted: Mapping[str, int], interval: str | None,
                   month: str | None, follows: int | None = None) -> str | None:
    """What is wrong with the time grid or the empty bars of a contract-typed table, or None.

    With `follows` (the time in µs of the bar before the table's first), the table is a slice of a larger one:
    its grid must continue from that bar, and whether the whole table covers the month is `finish`'s to tell.

    Empty bars are proven the constant row by counting, not row by row: a field that must be null in an empty
    bar has exactly (its nulls among the bars with trades + the empty bars) nulls, which polars knows without a
    pass; one that must be 0 has no more non-zero values than the bars with trades hold. `counted` are those
    counts among the bars with trades (`_bars_with_trades`).
    """
    first = times.first
    rules: dict[str, tuple[bool | pl.Expr, str]] = {  # "column/rule" -> (passes, what it requires)
        "time/not_null": (times.nulls == 0, "time must never be null"),
        "time/strictly_increasing": (
            times.increasing and (follows is None or (first is not None and first > follows)),
            "time must be strictly increasing",
        ),
    }
    if interval is not None:
        step = INTERVAL_SECONDS[interval] * US_PER_SECOND
        rules["time/dense_grid"] = (
            times.evenly_spaced and first is not None and first % step == 0
            and (follows is None or first == follows + step),
            f"time must step by exactly {interval} on the UTC-aligned grid (empty bars included)",
        )
        if month is not None and follows is None:
            start, rows, first_day = _grid_of(month, interval)
            rules["time/covers_month"] = (
                first == start,
                f"a {month} {interval} table must hold {rows} bars starting at {first_day} 00:00 UTC",
            )
    empty_bars = frame.height - counted["_with_trades"]
    score = pl.col("flow_toxicity_score")
    rules["flow_toxicity_score/null_or_zero_when_empty"] = (
        (score.is_null() | (score == 0)).sum() == counted["_null_or_zero"] + empty_bars,
        "flow_toxicity_score must be null or 0 in a bar without trades (its flow and volatility are 0)",
    )
    for field in ZERO_WHEN_EMPTY:
        rules[f"{field}/zero_when_empty"] = (
            ((pl.col(field) != 0).sum() == counted[field]) & (pl.col(field).null_count() == 0),
            f"{field} must be 0 in a bar without trades (and never null)",
        )
    for field in NULL_WHEN_EMPTY:
        rules[f"{field}/null_when_empty"] = (
            pl.col(field).null_count() == counted[field] + empty_bars,
            f"{field} must be null in a bar without trades",
        )
    exprs = {key: rule for key, (rule, _) in rules.items() if isinstance(rule, pl.Expr)}
    passed = {key: rule for key, (rule, _) in rules.items() if not isinstance(rule, pl.Expr)}
    passed.update(frame.select(**exprs).row(0, named=True))
    failed = [key for key in rules if not passed[key]]
    if not failed:
        return None
    column, rule = failed[0].split("/")
    return f"column {column!r} failed {rule}: {rules[failed[0]][1]}"
