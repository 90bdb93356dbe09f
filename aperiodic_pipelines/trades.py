"""Canonical trades (spec §1): the one table every source produces and the flow engine consumes.

pandera (with the pandas it imports, ~1 s) is imported when something is validated, not when this module is:
every process that loads the definitions imports this module, and most never validate trades.
"""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING, Any

import polars as pl

from aperiodic_pipelines.domain.errors import CorruptArchiveError, InvalidTradesError

CANONICAL_SCHEMA: dict[str, pl.DataType] = {
    "ts_exchange": pl.Int64(),
    "ts_arrival": pl.Int64(),
    "trade_id": pl.Int64(),
    "price": pl.Float64(),
    "qty": pl.Float64(),
    "is_buy": pl.Boolean(),
}
CANONICAL_COLUMNS: list[str] = list(CANONICAL_SCHEMA)

# Identical repeated rows (same time, id, price, quantity, side) are dropped and counted; more than this share of
# a month's rows, and at least ALLOWED_DUPLICATE_ROWS, blocks the month: no real archive repeats that much
# (Binance's known repeats are a handful per month), a broken export or a hostile file does.
MAX_DUPLICATE_SHARE = 0.001
ALLOWED_DUPLICATE_ROWS = 100


class ConflictingTradesError(InvalidTradesError, CorruptArchiveError):
    """One trade id with two different contents (time, price, quantity or side): the upstream contradicts itself.
    Also a `CorruptArchiveError`, so the files that fed it are evicted from the cache like any damaged archive."""


class TooManyDuplicatesError(InvalidTradesError):
    """More identical repeated rows than `MAX_DUPLICATE_SHARE` of the month allows."""


def duplicates_allowed(rows: int) -> int:
    """The most identical repeats a month of `rows` input rows may hold before it is refused."""
    return max(ALLOWED_DUPLICATE_ROWS, int(rows * MAX_DUPLICATE_SHARE))


def check_duplicate_share(duplicates: int, rows: int, *, name: str) -> None:
    """Raise `TooManyDuplicatesError` when `duplicates` of `rows` input rows is beyond the documented share."""
    if duplicates > duplicates_allowed(rows):
        raise TooManyDuplicatesError(
            f"{name}: {duplicates} of {rows} rows repeat another row exactly; at most {duplicates_allowed(rows)} "
            f"({MAX_DUPLICATE_SHARE:.1%} of the rows, at least {ALLOWED_DUPLICATE_ROWS}) may be dropped as duplicates "
            "before a month is refused: the upstream file is broken, not a month of trades"
        )

if TYPE_CHECKING:
    import pandera.polars as pa


@cache
def _canonical_trades_model() -> type[pa.DataFrameModel]:
    import pandera.polars as pa

    class CanonicalTrades(pa.DataFrameModel):
        """Spec §1. Times are µs since the epoch, UTC; `ts_arrival` is null where the source has none."""

        ts_exchange: pl.Int64 = pa.Field(nullable=False)
        ts_arrival: pl.Int64 = pa.Field(nullable=True)
        trade_id: pl.Int64 = pa.Field(nullable=False, unique=True)
        price: pl.Float64 = pa.Field(nullable=False, gt=0)
        qty: pl.Float64 = pa.Field(nullable=False, gt=0)
        is_buy: pl.Boolean = pa.Field(nullable=False)

        class Config:
            strict = True
            ordered = True
            coerce = False

        @pa.dataframe_check(error="rows must be sorted by (ts_exchange, trade_id)")
        def sorted_by_time_then_id(cls, data: pa.PolarsData) -> pl.LazyFrame:  # noqa: N805
            ts, tid = pl.col("ts_exchange"), pl.col("trade_id")
            in_order = (ts > ts.shift(1)) | ((ts == ts.shift(1)) & (tid > tid.shift(1)))
            return data.lazyframe.select(in_order.fill_null(True).alias("sorted_by_time_then_id"))

        @pa.dataframe_check(error="prices and quantities must be finite")
        def finite_numbers(cls, data: pa.PolarsData) -> pl.LazyFrame:  # noqa: N805
            return data.lazyframe.select(
                (pl.col("price").is_finite() & pl.col("qty").is_finite()).alias("finite_numbers")
            )

    return CanonicalTrades


def __getattr__(name: str) -> Any:
    """`CanonicalTrades` (the pandera model of spec §1) is built on first use."""
    if name == "CanonicalTrades":
        return _canonical_trades_model()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def empty_trades() -> pl.DataFrame:
    """A canonical trade table with no rows."""
    return pl.DataFrame(schema=CANONICAL_SCHEMA)


def validate_trades(trades: pl.DataFrame, *, name: str = "trades", sample: int = 5) -> pl.DataFrame:
    """Validate canonical trades; raise `InvalidTradesError` naming the column, the rule and a few failing rows."""
    import pandera.polars as pa

    try:
        return _canonical_trades_model().validate(trades, lazy=True)
    except pa.errors.SchemaErrors as exc:
        raise InvalidTradesError(f"{name}: {summarise_schema_errors(exc, sample=sample)}") from None
    except pa.errors.SchemaError as exc:  # pragma: no cover - lazy=True reports SchemaErrors
        raise InvalidTradesError(f"{name}: {exc}") from None


def summarise_schema_errors(exc: pa.errors.SchemaErrors, *, sample: int = 3) -> str:
    """One readable paragraph per failed rule: column, rule, and a few failing values."""
    cases = exc.failure_cases
    if not isinstance(cases, pl.DataFrame):
        cases = pl.from_pandas(cases) if hasattr(cases, "to_dict") else pl.DataFrame(cases)
    lines = []
    group_cols = [c for c in ("column", "check") if c in cases.columns]
    for key, group in cases.group_by(group_cols, maintain_order=True):
        column, check = (list(key) + ["?", "?"])[:2]
        shown = group.head(sample)
        detail = ", ".join(
            f"row {idx}: {_shorten(val)}"
            for idx, val in zip(
                shown.get_column("index").to_list() if "index" in shown.columns else [None] * shown.height,
                shown.get_column("failure_case").to_list() if "failure_case" in shown.columns else [],
                strict=False,
            )
        )
        lines.append(f"column {column!r} failed {check} ({group.height} failing): {detail}")
    return "; ".join(lines) if lines else str(exc)


def _shorten(value: object, limit: int = 240) -> str:
    """A failing row can be a whole record: keep messages readable."""
    text = str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"
