"""Shared last mile of every archive source: parsed upstream files → one canonical month file (spec §1).

Sources turn each upstream file into a `TradeFile` (a lazy polars frame with the canonical columns) and call
`build_canonical_month`, which streams everything to parquet with bounded memory:

1. stream all files (trimmed to the month where asked) into a staged parquet file, counting on the way (one
   pass): nulls, price/qty > 0 and finite, rows outside the month, sortedness, whether trade ids only increase,
   id gaps;
2. any rule broken → the error, naming the file and rows;
3. sorted with increasing ids (the common case) → the staged file is already the answer; otherwise split
   by UTC day (by hour in a busy month), sort and de-duplicate each span in memory (a span is small), and stream
   the spans back together.

Output bytes depend only on the trades: polars writes the same bytes for the same rows however they were
chunked, with fixed row groups and zstd.
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import polars as pl
import pyarrow.parquet as pq
from polars.io.plugins import register_io_source

from aperiodic_pipelines.atomic import atomic_replace
from aperiodic_pipelines.domain.errors import CorruptArchiveError, InvalidTradesError
from aperiodic_pipelines.domain.months import day_bounds_us
from aperiodic_pipelines.sources.base import SourceObject, SourceResult
from aperiodic_pipelines.sources.download import scratch_dir
from aperiodic_pipelines.trades import (
    CANONICAL_COLUMNS,
    CANONICAL_SCHEMA,
    ConflictingTradesError,
    check_duplicate_share,
)

DAY_US = 86_400_000_000
HOUR_US = 3_600_000_000
# Rows sorted in memory at once, on average, when the staged rows are out of order: a month sorts a UTC day at a
# time, a month busier than this per day an hour at a time (the memory of a sort stays flat in the month's size).
SORT_SPAN_ROWS = 1_000_000
ROW_GROUP_ROWS = 1 << 20
# zstd level 1: ~15% larger than the default level 3 but much cheaper to write (the month's biggest cost).
PARQUET_OPTIONS = {"compression": "zstd", "compression_level": 1, "row_group_size": ROW_GROUP_ROWS, "statistics": True}
_MONTH = re.compile(r"^(\d{4})-(\d{2})$")


@dataclass(frozen=True)
class TradeFile:
    """One parsed upstream file: `origin` names it in errors; `frame` has the canonical columns and types."""

    origin: str
    frame: pl.LazyFrame


@dataclass(frozen=True)
class CanonicalStats:
    trade_count: int
    duplicates_dropped: int
    id_gaps: int


def month_bounds_us(month: str) -> tuple[int, int]:
    """[start, end) of a `YYYY-MM` month in µs since the epoch, UTC."""
    year, mon = parse_month(month)
    start = datetime(year, mon, 1, tzinfo=UTC)
    end = datetime(year + (mon == 12), mon % 12 + 1, 1, tzinfo=UTC)
    return int(start.timestamp()) * 1_000_000, int(end.timestamp()) * 1_000_000


def parse_month(month: str) -> tuple[int, int]:
    match = _MONTH.match(month) if isinstance(month, str) else None
    if not match or not 1 <= int(match[2]) <= 12:
        raise ValueError(f"month must look like YYYY-MM, got {month!r}")
    return int(match[1]), int(match[2])


def days_of_month(month: str) -> list[str]:
    """`YYYY-MM-DD` for each day of the month."""
    year, mon = parse_month(month)
    return [f"{year:04d}-{mon:02d}-{day:02d}" for day in range(1, calendar.monthrange(year, mon)[1] + 1)]


def next_month(month: str) -> str:
    year, mon = parse_month(month)
    return f"{year + (mon == 12):04d}-{mon % 12 + 1:02d}"


def previous_month(month: str) -> str:
    year, mon = parse_month(month)
    return f"{year - (mon == 1):04d}-{(mon - 2) % 12 + 1:02d}"


def format_us(ts_us: int | None) -> str:
    if ts_us is None:
        return "null"
    return datetime.fromtimestamp(ts_us / 1e6, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def ms_or_us_to_us(column: pl.Expr) -> pl.Expr:
    """Exchange ms timestamps → µs; values already above 1e14 are taken as µs (defensive: a ms value of
    1e14 would be the year 5138)."""
    return pl.when(column > 100_000_000_000_000).then(column).otherwise(column * 1000)


def build_canonical_month(
    files: Sequence[TradeFile],
    month: str,
    dest: Path,
    *,
    outside_month: Literal["trim", "error"],
) -> CanonicalStats:
    """Write the month's canonical trades from `files` to `dest`; see `build_canonical_span`."""
    start_us, end_us = month_bounds_us(month)
    return build_canonical_span(files, start_us, end_us, month, dest, outside=outside_month)


def build_canonical_day(files: Sequence[TradeFile], day: str, dest: Path) -> CanonicalStats:
    """Write one UTC day's canonical trades from `files` (trimmed to the day) to `dest`.

    The same rules, in the same order, as `build_canonical_month`: duplicates and conflicts are decided within a
    UTC day there too (`_sort_by_span`: a repeat has the same time), so the day's rows are exactly the month file's
    rows of that day."""
    start_us, end_us = day_bounds_us(day)
    return build_canonical_span(files, start_us, end_us, day, dest, outside="trim")


@dataclass(frozen=True)
class SourceIdentity:
    """What every `SourceResult` of one request shares: whose trades they are and what kind of upstream file."""

    exchange: str
    symbol: str  # Atlas symbol
    native_symbol: str
    dataset: str
    has_arrival_times: bool = False


def write_source_result(
    identity: SourceIdentity,
    read_files: Callable[[], Sequence[TradeFile]],
    *,
    dest: Path,
    month: str,
    objects: list[SourceObject],
    evict: Callable[[], None],
    day: str | None = None,
    outside_month: Literal["trim", "error"] = "trim",
    missing_days: Sequence[str] = (),
) -> SourceResult:
    """Read the upstream files, write the canonical `month` (or, with `day`, that UTC day of it) to `dest`, and
    return the `SourceResult` describing it.

    A `CorruptArchiveError` while reading or writing calls `evict` before it propagates: the file matched its
    checksum (or was downloaded whole) yet does not decompress or parse, so nothing it fed may stay cached."""
    try:
        files = read_files()
        if day is None:
            stats = build_canonical_month(files, month, dest, outside_month=outside_month)
        else:
            stats = build_canonical_day(files, day, dest)
    except CorruptArchiveError:
        evict()
        raise
    return SourceResult(
        exchange=identity.exchange,
        symbol=identity.symbol,
        native_symbol=identity.native_symbol,
        month=month,
        day=day,
        path=dest,
        trade_count=stats.trade_count,
        duplicates_dropped=stats.duplicates_dropped,
        id_gaps=stats.id_gaps,
        has_arrival_times=identity.has_arrival_times,
        dataset=identity.dataset,
        objects=objects,
        missing_days=list(missing_days),
    )


def build_canonical_span(
    files: Sequence[TradeFile],
    start_us: int,
    end_us: int,
    label: str,
    dest: Path,
    *,
    outside: Literal["trim", "error"],
) -> CanonicalStats:
    """Write the month's canonical trades from `files` to `dest` (parquet, zstd) atomically.

    `outside_month="trim"` drops rows whose `ts_exchange` lies outside the month (daily files, UTC+8 files);
    `"error"` rejects them (a monthly file must only hold its month). Rows repeating another exactly (time, trade
    id, price, quantity, side; the arrival time of the first is kept) are dropped and counted, up to
    `trades.MAX_DUPLICATE_SHARE` of the rows (else `TooManyDuplicatesError`); one id with two different contents
    is a `ConflictingTradesError` naming both rows. Bad rows raise `InvalidTradesError` / `CorruptArchiveError`
    naming the file and the rows. `[start_us, end_us)` is a month or a day (whole UTC days); `label` names it."""
    dest = Path(dest)
    ts = pl.col("ts_exchange")
    # A null time is kept here so that the null rule below reports it instead of the trim hiding it.
    in_month_or_null = ((ts >= start_us) & (ts < end_us)) | ts.is_null()
    frames = [_conform(f.frame) for f in files]
    if outside == "trim":
        frames = [frame.filter(in_month_or_null) for frame in frames]
    with scratch_dir(dest.parent) as work:
        staged = work / "staged.parquet"
        combined = pl.concat(frames, how="vertical") if frames else pl.LazyFrame(schema=CANONICAL_SCHEMA)
        counter = _FactCounter(start_us, end_us)
        try:
            _sink_counted(combined, counter, staged)
        except pl.exceptions.PolarsError as exc:
            raise _parse_error(files, exc) from None
        facts, first_conflict = counter.totals, counter.first_conflict
        origins = [f.origin for f in files]
        _raise_on_bad_rows(origins, frames, facts, start_us, end_us)
        name = _month_name(label, origins)
        if first_conflict is not None:
            raise _conflict_error(name, *first_conflict)
        check_duplicate_share(int(facts["repeats"]), int(facts["n"]), name=name)  # adjacent repeats: a lower bound
        if facts["unsorted"] == 0 and facts["ids_not_increasing"] == 0:
            atomic_replace(staged, dest)
            return CanonicalStats(int(facts["n"]), 0, int(facts["gaps"]))
        span_us = DAY_US if facts["n"] * DAY_US <= SORT_SPAN_ROWS * (end_us - start_us) else HOUR_US
        stats = _sort_by_span(staged, work, start_us, end_us, span_us, name=name)
        check_duplicate_share(stats.duplicates_dropped, int(facts["n"]), name=name)
        atomic_replace(work / "sorted.parquet", dest)
        return stats


def _month_name(month: str, origins: list[str]) -> str:
    if len(origins) == 1:
        return f"{month} ({origins[0]})"
    shown = ", ".join(origins[:2]) + (f" … {origins[-1]}" if len(origins) > 2 else "")
    return f"{month} ({len(origins)} files: {shown})"


def _describe(row: dict) -> str:
    side = "buy" if row["is_buy"] else "sell"
    return f"trade_id={row['trade_id']} ts={format_us(row['ts_exchange'])} price={row['price']} qty={row['qty']} {side}"


def _conflict_error(name: str, first: dict, second: dict) -> ConflictingTradesError:
    return ConflictingTradesError(
        f"{name}: trade id {first['trade_id']} appears twice with different contents: {_describe(first)} and "
        f"{_describe(second)}; the upstream contradicts itself, so neither row can be published"
    )


def _conform(frame: pl.LazyFrame) -> pl.LazyFrame:
    return frame.select([pl.col(name).cast(dtype, strict=True) for name, dtype in CANONICAL_SCHEMA.items()])


def _checks(start_us: int, end_us: int) -> dict[str, pl.Expr]:
    ts, price, qty = pl.col("ts_exchange"), pl.col("price"), pl.col("qty")
    return {
        "null": pl.any_horizontal([pl.col(c).is_null() for c in CANONICAL_COLUMNS if c != "ts_arrival"]),
        "not_positive": (price <= 0) | (qty <= 0),
        "not_finite": ~(price.is_finite() & qty.is_finite()),
        "outside_month": (ts < start_us) | (ts >= end_us),
    }


_CONTENT = ["ts_exchange", "trade_id", "price", "qty", "is_buy"]


class _FactCounter:
    """Row count, per-row rule breaks, order breaks, id gaps and repeats of the previous row (same time and id:
    `repeats` when the contents agree, a conflict when not), counted batch by batch as the rows stream past:
    polars' `diff` is not a streaming operation, so the previous batch's last row is carried over. `totals` holds
    the counts; `first_conflict` the first conflicting pair of rows, if any."""

    def __init__(self, start_us: int, end_us: int) -> None:
        ts, tid = pl.col("ts_exchange"), pl.col("trade_id")
        ts_step, id_step = ts.diff(), tid.diff()
        same_key = (ts_step == 0) & (id_step == 0)
        differs = pl.any_horizontal([pl.col(c) != pl.col(c).shift(1) for c in ("price", "qty", "is_buy")])
        self._conflict = same_key & differs
        self._order = {
            "unsorted": ((ts_step < 0) | ((ts_step == 0) & (id_step <= 0))).sum(),
            "ids_not_increasing": (id_step <= 0).sum(),
            "gaps": (id_step > 1).sum(),
            "repeats": (same_key & ~differs).sum(),
            "conflicts": self._conflict.sum(),
        }
        self._rules = {name: rule.fill_null(True).sum() for name, rule in _checks(start_us, end_us).items()}
        self.totals = dict.fromkeys(["n", *self._rules, *self._order], 0)
        self.first_conflict: tuple[dict, dict] | None = None
        self._previous: pl.DataFrame | None = None

    def add(self, batch: pl.DataFrame) -> None:
        if not batch.height:
            return
        counted = batch.select(n=pl.len(), **self._rules, **self._order).row(0, named=True)
        first = batch.select(_CONTENT).head(1)
        if self._previous is not None:  # the seam: the batch's first row after the previous batch's last
            seam = pl.concat([self._previous, first])
            seam_counts = seam.select(**self._order).row(0, named=True)
            if seam_counts["conflicts"] and self.first_conflict is None:
                self.first_conflict = (seam.row(0, named=True), seam.row(1, named=True))
            for key, value in seam_counts.items():
                counted[key] += value or 0
        if counted["conflicts"] and self.first_conflict is None:
            keys = batch.select(_CONTENT)
            at = int(keys.select(self._conflict.fill_null(False).arg_true().first()).item())
            self.first_conflict = (keys.row(at - 1, named=True), keys.row(at, named=True))
        for key, value in counted.items():
            self.totals[key] += int(value or 0)
        self._previous = batch.select(_CONTENT).tail(1)


def _sink_counted(frame: pl.LazyFrame, counter: _FactCounter, path: Path) -> None:
    """Stream `frame` to parquet at `path`, counting each batch with `counter` on its way (one pass over the rows:
    reading the staged file back to count cost as much CPU as half the parse)."""

    def batches(
        with_columns: list[str] | None, predicate: pl.Expr | None, n_rows: int | None, _batch_size: int | None
    ) -> Iterator[pl.DataFrame]:
        if with_columns is not None or predicate is not None or n_rows is not None:  # never, for a sink
            raise AssertionError("the counted stream is only ever written whole")
        for batch in frame.collect_batches(maintain_order=True):
            counter.add(batch)
            yield batch

    register_io_source(batches, schema=CANONICAL_SCHEMA).sink_parquet(path, engine="streaming", **PARQUET_OPTIONS)


def _raise_on_bad_rows(
    origins: list[str], frames: list[pl.LazyFrame], facts: dict[str, int], start_us: int, end_us: int
) -> None:
    rules = {
        "null": "null values (a missing field, or a side that is neither buy nor sell)",
        "not_positive": "price or quantity <= 0",
        "not_finite": "non-finite price or quantity",
        "outside_month": f"timestamps outside the month [{format_us(start_us)}, {format_us(end_us)})",
    }
    checks = _checks(start_us, end_us)
    for name, rule in rules.items():
        if not facts[name]:
            continue
        # Find the file and rows at fault for the message (only on this error path).
        for origin, frame in zip(origins, frames, strict=True):
            sample = frame.filter(checks[name].fill_null(True)).head(3).collect(engine="streaming")
            if sample.height:
                shown = "; ".join(
                    f"trade_id={r['trade_id']} ts={format_us(r['ts_exchange'])} price={r['price']} qty={r['qty']}"
                    f" is_buy={r['is_buy']}"
                    for r in sample.iter_rows(named=True)
                )
                error = CorruptArchiveError if name == "outside_month" else InvalidTradesError
                raise error(f"{origin}: malformed rows ({facts[name]} with {rule}), e.g. {shown}")
        raise InvalidTradesError(f"{facts[name]} rows with {rule}")


def _parse_error(files: Sequence[TradeFile], exc: Exception) -> CorruptArchiveError:
    """Name the file whose rows could not be parsed (retry each alone to find it when there are several)."""
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if len(files) > 1:
        for trade_file in files:
            try:
                _conform(trade_file.frame).select(pl.all().null_count()).collect(engine="streaming")
            except pl.exceptions.PolarsError as inner:
                inner_line = str(inner).strip().splitlines()[0]
                return CorruptArchiveError(f"{trade_file.origin}: malformed row that cannot be parsed: {inner_line}")
    origin = files[0].origin if len(files) == 1 else "one of " + ", ".join(f.origin for f in files)
    return CorruptArchiveError(f"{origin}: malformed row that cannot be parsed: {first_line}")


def _sort_by_span(
    staged: Path, work: Path, start_us: int, end_us: int, span_us: int, *, name: str
) -> CanonicalStats:
    """Split into spans of `span_us` (a UTC day or hour: bounded memory), sort and de-duplicate each span, and stream
    the spans back together; the result does not depend on the span (a repeat has one time, so lies in one span).
    A repeated (time, id) whose price, quantity or side differ is a `ConflictingTradesError` naming both rows."""
    span_dir = work / "spans"
    span_key = ((pl.col("ts_exchange") - start_us) // span_us).alias("span")
    # One row group at a time, split by span into small Arrow files: memory stays at one row group
    # (polars' partitioned sink buffered nearly everything here).
    parquet = pq.ParquetFile(staged)
    for group in range(parquet.num_row_groups):
        batch = pl.from_arrow(parquet.read_row_group(group))
        assert isinstance(batch, pl.DataFrame)
        for (span,), part in batch.with_columns(span_key).partition_by("span", as_dict=True, include_key=False).items():
            target = span_dir / f"span={span}"
            target.mkdir(parents=True, exist_ok=True)
            part.write_ipc(target / f"{group:06d}.arrow")
        del batch
    staged.unlink()
    sorted_dir = work / "sorted-spans"
    sorted_dir.mkdir()
    span_count = -(-(end_us - start_us) // span_us)
    duplicates = gaps = 0
    last_id: int | None = None
    max_id_so_far: int | None = None
    ids_conflict = False
    sorted_files: list[Path] = []
    for span in range(span_count):
        parts = sorted((span_dir / f"span={span}").glob("*.arrow"))
        if not parts:
            continue
        # Input order breaks ties, so equal (time, id) rows keep the file order: deterministic for the same input.
        frame = pl.concat([pl.read_ipc(part) for part in parts]).sort(["ts_exchange", "trade_id"], maintain_order=True)
        ts, tid = pl.col("ts_exchange"), pl.col("trade_id")
        same_key = ((ts == ts.shift(1)) & (tid == tid.shift(1))).fill_null(False)
        differs = pl.any_horizontal([pl.col(c) != pl.col(c).shift(1) for c in ("price", "qty", "is_buy")])
        flags = frame.select(repeated=same_key, conflict=same_key & differs.fill_null(False))
        if flags.get_column("conflict").any():
            at = int(flags.get_column("conflict").arg_true()[0])
            raise _conflict_error(name, frame.row(at - 1, named=True), frame.row(at, named=True))
        unique = frame.filter(~flags.get_column("repeated"))  # an exact repeat: keep the first
        duplicates += frame.height - unique.height
        del frame, flags
        ids = unique.get_column("trade_id")
        id_steps = ids.diff()
        if last_id is not None:
            gaps += int(ids[0] - last_id > 1)
        gaps += int((id_steps > 1).sum())
        last_id = int(ids[-1])
        if (id_steps <= 0).any() and ids.n_unique() != ids.len():
            ids_conflict = True  # one id at two different times within the span
        if max_id_so_far is not None and int(ids.min()) <= max_id_so_far:
            ids_conflict = True  # maybe: the exact check below decides
        max_id_so_far = int(ids.max()) if max_id_so_far is None else max(max_id_so_far, int(ids.max()))
        path = sorted_dir / f"{span:04d}.arrow"
        unique.write_ipc(path)
        sorted_files.append(path)
    out = work / "sorted.parquet"
    source = pl.scan_ipc(sorted_files) if sorted_files else pl.LazyFrame(schema=CANONICAL_SCHEMA)
    source.sink_parquet(out, **PARQUET_OPTIONS)
    count = pl.scan_parquet(out).select(pl.len()).collect().item()
    if ids_conflict:
        _raise_on_conflicting_ids(out, name)
    return CanonicalStats(int(count), duplicates, gaps)


def _raise_on_conflicting_ids(path: Path, name: str) -> None:
    """The same trade id at two different times is a conflict, not a duplicate row: refuse it, naming both rows."""
    repeated = (
        pl.scan_parquet(path)
        .group_by("trade_id")
        .agg(pl.len().alias("times"))
        .filter(pl.col("times") > 1)
        .sort("trade_id")
        .head(1)
        .collect(engine="streaming")
    )
    if repeated.height:
        trade_id = repeated.item(0, "trade_id")
        rows = pl.scan_parquet(path).filter(pl.col("trade_id") == trade_id).head(2).collect(engine="streaming")
        raise _conflict_error(name, rows.row(0, named=True), rows.row(1, named=True))
