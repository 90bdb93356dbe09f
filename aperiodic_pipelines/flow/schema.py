"""The flow-bar table's contract (spec §2) as a pandera.polars schema: dtypes, nulls, ranges and invariants."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
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
    NULLABLE_FIELDS,
    SIDES,
    US_PER_SECOND,
    bars_in_month,
    month_start_us,
)
from aperiodic_pipelines.trades import summarise_schema_errors

if TYPE_CHECKING:  # pandera costs ~1 s to import; only validation needs it
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


def _row_check(name: str, rule: pl.Expr, error: str) -> pa.Check:
    import pandera.polars as pa

    return pa.Check(lambda data: data.lazyframe.select(rule.alias(name)), name=name, error=error)


def _column(name: str) -> pa.Column:
    import pandera.polars as pa

    checks = []
    if name in _FRACTIONS:
        checks.append(pa.Check.in_range(0.0, 1.0))
    elif name in _NON_NEGATIVE:
        checks.append(pa.Check.ge(0))
    if name in _SIGNED or name in _FRACTIONS or name in _NON_NEGATIVE:
        checks.append(pa.Check(lambda data, c=name: data.lazyframe.select(pl.col(c).is_nan().not_()),
                               name="not_nan", error=f"{name} must not be NaN"))
    return pa.Column(FLOW_SCHEMA[name], checks=checks, nullable=name in NULLABLE_FIELDS)


@cache
def flow_bars_schema(interval: str | None = None, month: str | None = None, *, ordered_in_time: bool = True
                     ) -> pa.DataFrameSchema:
    """The schema of a flow-bar table; with `interval` and `month`, also its dense grid (spec §2).

    `ordered_in_time=False` leaves out every rule between rows (for a table of bars picked from several
    intervals): what remains are the dtypes, nulls, ranges and the per-bar invariants.
    """
    import pandera.polars as pa

    checks = [_row_check(name, rule, error) for name, (rule, error) in _invariants().items()]
    time_us = pl.col("time").cast(pl.Int64)
    if ordered_in_time:
        checks.append(
            _row_check(
                "time_strictly_increasing",
                (time_us > time_us.shift(1)).fill_null(True),
                "time must be strictly increasing",
            )
        )
    if interval is not None and ordered_in_time:
        step = INTERVAL_SECONDS[interval] * US_PER_SECOND
        checks.append(
            _row_check(
                "time_on_dense_grid",
                (time_us - time_us.shift(1) == step).fill_null(True) & (time_us % step == 0),
                f"time must step by exactly {interval} on the UTC-aligned grid (empty bars included)",
            )
        )
    if interval is not None and month is not None and ordered_in_time:
        start, rows, first = _grid_of(month, interval)
        checks.append(
            pa.Check(
                lambda data: data.lazyframe.select(
                    ((pl.len() == rows) & (time_us.first() == start)).alias("covers_month")
                ),
                name="covers_month",
                error=f"a {month} {interval} file must hold {rows} bars starting at {first} 00:00 UTC",
            )
        )
    return pa.DataFrameSchema(
        columns={name: _column(name) for name in FLOW_COLUMNS},
        checks=checks,
        strict=True,
        ordered=True,
        name=f"flow_bars[{interval or '*'}{', ' + month if month else ''}]",
    )


# An empty bar (no trades) is the same constant row everywhere: sums 0, every ratio, share and entropy null,
# and a score that is null or 0 (its flow and volatility are 0). That row satisfies every per-bar rule, so on a
# dense table pandera needs to see only the bars with trades; the empty ones are proven equal to the constant.
_ZERO_WHEN_EMPTY = tuple(f for f in FLOW_COLUMNS[1:] if f not in NULLABLE_FIELDS)
_NULL_WHEN_EMPTY = tuple(f for f in FLOW_COLUMNS[1:] if f in NULLABLE_FIELDS and f != "flow_toxicity_score")
_HAS_TRADES = (pl.col("taker_buy_count") + pl.col("taker_sell_count")) > 0
# Bars per pandera pass: big enough that pandera's per-call cost is small, small enough to bound its temporaries.
PANDERA_ROWS = 1 << 19


def validate_bars(
    bars: pl.DataFrame, *, interval: str | None = None, month: str | None = None, name: str = "flow bars"
) -> pl.DataFrame:
    """Validate a flow-bar table; raise `InvalidBarsError` naming the field, the rule and a few failing rows.

    `month` (`YYYY-MM`), or a day (`YYYY-MM-DD`) for a daily file, adds the check that the table is its whole
    dense grid.

    The pandera schema sees the bars that hold trades; one vectorised pass over the whole table proves the
    rest: the time grid, and that every empty bar is the constant empty row. A table whose columns or dtypes
    are not the contract's goes through the full schema, which names what is wrong.
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


class MonthBarsValidator:
    """`validate_month_bars` for tables that arrive in consecutive slices (a busy 1s month is ~0.8 GB whole).

    `add` checks a slice's dense-table rules at once (the time grid continues where the interval's previous
    slice ended; empty bars are the constant row); pandera sees the bars with trades, gathered across slices
    and intervals into batches of at most `PANDERA_ROWS` rows (a busy 1s month holds ~2.6 M of them: one
    filtered copy plus pandera's temporaries would be more than the table itself). `finish` checks that each
    table covered its month (or day) and validates the last batch. Each raises `InvalidBarsError`.
    """

    def __init__(self, *, month: str | None, name: str = "flow bars") -> None:
        self.month, self.name = month, name
        self.rows: dict[str | None, int] = {}
        self._last_time: dict[str | None, int] = {}  # µs of the interval's last bar so far
        self._batch: list[tuple[str | None, pl.DataFrame]] = []
        self._batch_rows = 0

    def label(self, interval: str | None) -> str:
        return f"{self.name} {interval}" if interval else self.name

    def add(self, interval: str | None, part: pl.DataFrame) -> None:
        """Check the next slice of `interval`'s table (its first slice starts the table)."""
        with_trades = _validate_dense(part, interval, self.month, self.label(interval), self._last_time.get(interval))
        self.rows[interval] = self.rows.get(interval, 0) + part.height
        if part.height:
            self._last_time[interval] = part.get_column("time").dt.epoch("us")[-1]
        for piece in with_trades:
            self._batch.append((interval, piece))
            self._batch_rows += piece.height
            if self._batch_rows >= PANDERA_ROWS:
                self._flush()

    def finish(self) -> None:
        """Every table held its whole grid; the bars with trades not yet seen by pandera pass it."""
        if self.month is not None:
            for interval, rows in self.rows.items():
                if interval is not None and rows != _grid_of(self.month, interval)[1]:
                    raise InvalidBarsError(f"{self.label(interval)}: {_covers_month_problem(interval, self.month)}")
        self._flush()

    def _flush(self) -> None:
        if self._batch:
            batch, self._batch, self._batch_rows = self._batch, [], 0
            _pandera_batch(batch, {interval: self.label(interval) for interval, _ in batch}, self.name)


def _covers_month_problem(interval: str, month: str) -> str:
    _, rows, first = _grid_of(month, interval)
    return (f"column 'time' failed covers_month: a {month} {interval} table must hold {rows} bars starting at "
            f"{first} 00:00 UTC")


def _parts_with_trades(frame: pl.DataFrame) -> Iterator[pl.DataFrame]:
    """The bars with trades of a table, `PANDERA_ROWS` dense rows at a time."""
    for start in range(0, frame.height, PANDERA_ROWS):
        part = frame.slice(start, PANDERA_ROWS).filter(_HAS_TRADES)
        if part.height:
            yield part


def _pandera_batch(batch: list[tuple[str | None, pl.DataFrame]], labels: Mapping[str | None, str], name: str) -> None:
    try:
        _pandera(pl.concat([part for _, part in batch]), flow_bars_schema(ordered_in_time=False), name)
    except InvalidBarsError:
        for interval, part in batch:  # name the failing interval
            _pandera(part, flow_bars_schema(ordered_in_time=False), labels[interval])
        raise


def _validate_dense(
    frame: pl.DataFrame, interval: str | None, month: str | None, name: str, follows: int | None = None
) -> list[pl.DataFrame]:
    """The dense-table rules of one table, or of a slice of it after a bar at `follows` µs: columns and dtypes,
    the time grid, the empty bars. Returns the bars with trades (`_parts_with_trades`), for pandera."""
    if frame.schema != pl.Schema(FLOW_SCHEMA):  # columns, their order or dtypes: the full schema names it
        _pandera(frame, flow_bars_schema(interval, month if follows is None else None), name)
    with_trades = list(_parts_with_trades(frame))
    problem = _dense_problem(frame, with_trades, interval, month, follows)
    if problem:
        raise InvalidBarsError(f"{name}: {problem}")
    return with_trades


def _pandera(frame: pl.DataFrame, schema: pa.DataFrameSchema, name: str) -> None:
    import pandera.polars as pa

    try:
        schema.validate(frame, lazy=True)
    except pa.errors.SchemaErrors as exc:
        raise InvalidBarsError(f"{name}: {summarise_schema_errors(exc)}") from None


def _dense_problem(frame: pl.DataFrame, with_trades: list[pl.DataFrame], interval: str | None, month: str | None,
                   follows: int | None = None) -> str | None:
    """What is wrong with the time grid or the empty bars of a contract-typed table, or None.

    With `follows` (the time in µs of the bar before the table's first), the table is a slice of a larger one:
    its grid must continue from that bar, and whether the whole table covers the month is `finish`'s to tell.

    Empty bars are proven the constant row by counting, not row by row: a field that must be null in an empty
    bar has exactly (its nulls among the bars with trades + the empty bars) nulls, which polars knows without a
    pass; one that must be 0 has no more non-zero values than the bars with trades hold. `with_trades` are
    the table's bars with trades (in parts), on which those counts are taken.
    """
    time_us = pl.col("time").cast(pl.Int64)
    first_after = pl.lit(True) if follows is None else time_us.first() > follows
    score = pl.col("flow_toxicity_score")
    null_or_zero = score.is_null() | (score == 0)
    # What the bars with trades hold, counted on them (`with_trades`: pandera validates the same copies).
    counted = dict.fromkeys(("_null_or_zero", *_ZERO_WHEN_EMPTY, *_NULL_WHEN_EMPTY), 0)
    counted["_with_trades"] = sum(part.height for part in with_trades)
    for part in with_trades:
        for key, value in part.select(
            null_or_zero.sum().alias("_null_or_zero"),
            *((pl.col(f) != 0).sum().alias(f) for f in _ZERO_WHEN_EMPTY),
            *(pl.col(f).null_count().alias(f) for f in _NULL_WHEN_EMPTY),
        ).row(0, named=True).items():
            counted[key] += value
    empty_bars = frame.height - counted["_with_trades"]
    rules: dict[str, tuple[pl.Expr, str]] = {  # "column/rule" -> (passes, what it requires)
        "time/not_null": (time_us.null_count() == 0, "time must never be null"),
        "time/strictly_increasing": (
            (time_us.diff() > 0).all() & first_after,
            "time must be strictly increasing",
        ),
        "flow_toxicity_score/null_or_zero_when_empty": (
            null_or_zero.sum() == counted["_null_or_zero"] + empty_bars,
            "flow_toxicity_score must be null or 0 in a bar without trades (its flow and volatility are 0)",
        ),
    }
    if interval is not None:
        step = INTERVAL_SECONDS[interval] * US_PER_SECOND
        rules["time/dense_grid"] = (
            (time_us.diff() == step).all() & (time_us.first() % step == 0)
            & (pl.lit(True) if follows is None else time_us.first() == follows + step),
            f"time must step by exactly {interval} on the UTC-aligned grid (empty bars included)",
        )
        if month is not None and follows is None:
            start, rows, first = _grid_of(month, interval)
            rules["time/covers_month"] = (
                time_us.first() == start,
                f"a {month} {interval} table must hold {rows} bars starting at {first} 00:00 UTC",
            )
    for field in _ZERO_WHEN_EMPTY:
        rules[f"{field}/zero_when_empty"] = (
            ((pl.col(field) != 0).sum() == counted[field]) & (pl.col(field).null_count() == 0),
            f"{field} must be 0 in a bar without trades (and never null)",
        )
    for field in _NULL_WHEN_EMPTY:
        rules[f"{field}/null_when_empty"] = (
            pl.col(field).null_count() == counted[field] + empty_bars,
            f"{field} must be null in a bar without trades",
        )
    passed = frame.select(**{key: rule for key, (rule, _) in rules.items()}).row(0, named=True)
    failed = [key for key, ok in passed.items() if not ok]
    if not failed:
        return None
    column, rule = failed[0].split("/")
    return f"column {column!r} failed {rule}: {rules[failed[0]][1]}"
