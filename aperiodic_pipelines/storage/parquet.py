"""Deterministic parquet: identical frames and metadata give byte-identical files (per pyarrow version)."""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl

from aperiodic_pipelines import SCHEMA_VERSION, __version__
from aperiodic_pipelines.atomic import atomic_path
from aperiodic_pipelines.domain.contract import FLOW_COLUMNS, NULLABLE_FIELDS
from aperiodic_pipelines.domain.months import check_day
from aperiodic_pipelines.storage.json_objects import canonical_json

if TYPE_CHECKING:  # pyarrow is imported where a file is written or read, not when the definitions load
    import pyarrow as pa
    import pyarrow.parquet as pq

# Fixed, so row-group boundaries never depend on how the frame was chunked. A busy month's 1s table is derived,
# checked and written a row group at a time: this size bounds that step's memory (at 50 M trades, 2^20 rows held
# ~0.2 GB more, for files 0.1% smaller).
ROW_GROUP_SIZE = 1 << 18
ZSTD_LEVEL = 3
ARROW_SCHEMA_KEY = "ARROW:schema"  # pyarrow's own entry; not part of our metadata
INLINE_SOURCES_MAX = 32  # spec §4: more source objects than this go to a lineage sidecar, not the footer
LINEAGE_PREFIX = "lineage/sources/"


def write_parquet_deterministic(df: pl.DataFrame, path: Path | str, *, metadata: Mapping[str, str]) -> None:
    """Write `df` as zstd parquet with `metadata` as key-value metadata, atomically, reproducibly.

    Columns keep the frame's order; metadata keys are sorted; the row-group size is fixed and the frame is
    rechunked so the bytes do not depend on how the frame was built. pyarrow stamps its own version in
    `created_by`, so identity holds for one pyarrow version (pinned by the lock file), not across versions.
    Like every file written here, a scratch file (see `RowGroupWriter`).
    """
    slices = (df.slice(offset, ROW_GROUP_SIZE) for offset in range(0, max(df.height, 1), ROW_GROUP_SIZE))
    write_parquet_row_groups(slices, path, metadata=metadata)


def write_parquet_row_groups(
    slices: Iterable[pl.DataFrame], path: Path | str, *,
    metadata: Mapping[str, str] | Callable[[int], Mapping[str, str]], row_group_size: int = ROW_GROUP_SIZE,
) -> int:
    """`write_parquet_deterministic` of the concatenation of `slices`, holding one slice at a time; returns
    the row count. The slices are `RowGroupWriter`'s; `metadata` may be a function of the row count."""
    with RowGroupWriter(path, row_group_size=row_group_size) as writer:
        for frame in slices:
            writer.write(frame)
        return writer.finish(metadata(writer.rows) if callable(metadata) else metadata)


class RowGroupWriter:
    """`write_parquet_deterministic` a row group at a time: the file is byte for byte the one the whole table
    would give, and only the slice being written is in memory.

    Each `write` is one row group, so every slice but the last must hold exactly `row_group_size` rows (the
    last at most that, and at least one row unless it is the only slice). `finish(metadata)` writes the
    footer (the row count is known by then); the file replaces `path` when the `with` block ends without an
    error, and never appears otherwise.

    The file is scratch: atomic but not fsynced (`atomic_path(durable=False)`). Files reach the store only
    through `ObjectStore.publish_file` (or a publication's upload), which makes its own copy durable; a crash
    loses nothing that is not written again.
    """

    def __init__(self, path: Path | str, *, row_group_size: int = ROW_GROUP_SIZE) -> None:
        self.path, self.row_group_size = Path(path), row_group_size
        self.rows = 0
        self._last_height = row_group_size
        self._writer: pq.ParquetWriter | None = None
        self._finished = False

    def __enter__(self) -> RowGroupWriter:
        self._atomic = atomic_path(self.path, suffix=".parquet", durable=False)
        self._tmp = self._atomic.__enter__()
        return self

    def write(self, frame: pl.DataFrame) -> None:
        """Append `frame` as the next row group."""
        if (self._last_height != self.row_group_size or frame.height > self.row_group_size
                or (self._writer is not None and not frame.height)):
            raise ValueError(f"{self.path}: every slice but the last must hold {self.row_group_size} rows, the "
                             f"last 1 to {self.row_group_size} (got {frame.height} after {self.rows} rows)")
        table, layout_options = _arrow_layout(frame)
        if self._writer is None:
            self._writer = _deterministic_writer(self._tmp, table.schema, layout_options)
        self._writer.write_table(table, row_group_size=self.row_group_size)
        self.rows, self._last_height = self.rows + frame.height, frame.height

    def finish(self, metadata: Mapping[str, str]) -> int:
        """Write the footer with `metadata` (keys sorted); returns the row count."""
        if self._writer is None:
            raise ValueError(f"{self.path}: no rows to write, not even an empty slice")
        self._writer.add_key_value_metadata({k: metadata[k] for k in sorted(_check_metadata(metadata))})
        self._finished = True
        return self.rows

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: object) -> None:
        try:
            if self._writer is not None:
                self._writer.close()
            if kind is None and not self._finished:
                raise ValueError(f"{self.path}: the file was not finished (no footer metadata)")
        except BaseException:
            if kind is None:
                self._atomic.__exit__(*sys.exc_info())
                raise
        self._atomic.__exit__(kind, error, trace)


def _check_metadata(metadata: Mapping[str, str]) -> Mapping[str, str]:
    bad = [k for k, v in metadata.items() if not isinstance(k, str) or not isinstance(v, str)]
    if bad:
        raise TypeError(f"parquet metadata must be str -> str; offending keys: {bad}")
    return metadata


def _arrow_layout(frame: pl.DataFrame) -> tuple[pa.Table, dict[str, object]]:
    """The frame as one contiguous Arrow table in its parquet layout, and the writer options that go with it."""
    table = frame.rechunk().to_arrow()
    options: dict[str, object] = {"write_statistics": True}
    if tuple(frame.columns) == FLOW_COLUMNS:
        table, options = _flow_bars_layout(table)
    # The key-value metadata goes into the footer once. Left on the Arrow schema it would be serialized a second
    # time inside pyarrow's `ARROW:schema` entry (a 1,460-object source list cost 343 KB there, issue 14).
    return table.replace_schema_metadata(None), options


def _deterministic_writer(path: Path, schema: pa.Schema, layout_options: Mapping[str, object]) -> pq.ParquetWriter:
    import pyarrow.parquet as pq

    return pq.ParquetWriter(
        path,
        schema,
        compression="zstd",
        compression_level=ZSTD_LEVEL,
        # Bars are mostly distinct floats: dictionary pages cost ~45% more CPU and end up larger (measured on a
        # 1s month, 2.7 M rows x 37 columns: 2.3 s vs 3.3 s CPU, 42.6 vs 47.8 MB).
        use_dictionary=False,
        store_schema=True,
        # Pages are cut by size (1 MB) only, not also every 20,000 rows (pyarrow's default): each page is one
        # zstd call with its own context, and a quiet month's 1s row group held 14 pages per column, mostly
        # zeros. One invocation: the 1s file's CPU 0.72 -> 0.63 s, its size 8.43 -> 7.48 MB.
        max_rows_per_page=ROW_GROUP_SIZE,
        **layout_options,
    )


def _flow_bars_layout(table: pa.Table) -> tuple[pa.Table, dict[str, object]]:
    """A flow-bar table's parquet layout: fields that are never null (spec §2) are REQUIRED, `time` is
    delta-encoded and the only column with min/max statistics.

    The first two only change how the same values are stored, and both are fixed by the contract, never by the
    data, so every month has the same parquet schema. They halve the writer's CPU on a 1s month (2.7 M rows): an
    OPTIONAL column costs a definition level per value, and the evenly spaced `time` column delta-encodes to a
    few bytes instead of 20 MB for zstd to compress. Min/max of a field prune nothing (every row group of a
    dense grid spans quiet and busy bars) and cost ~10% of the writer's CPU on a quiet month's 1s file; `time`'s
    prune reads by time.
    """
    import pyarrow as pa


    nulls = [name for name in FLOW_COLUMNS if name not in NULLABLE_FIELDS and table.column(name).null_count]
    if nulls:
        raise ValueError(f"flow bars: columns {nulls} must never be null (spec §2)")
    schema = pa.schema([field.with_nullable(field.name in NULLABLE_FIELDS) for field in table.schema])
    return table.cast(schema), {"column_encoding": {"time": "DELTA_BINARY_PACKED"}, "write_statistics": ["time"]}


def read_parquet_metadata(source: Path | str | bytes) -> dict[str, str]:
    """Key-value metadata of a parquet file (a path or its bytes), without pyarrow's schema entry."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    handle = pa.BufferReader(source) if isinstance(source, bytes | bytearray) else source
    raw = pq.read_metadata(handle).metadata or {}
    out = {k.decode(): v.decode() for k, v in raw.items()}
    out.pop(ARROW_SCHEMA_KEY, None)
    return out


def sources_digest(sources: Iterable[Mapping[str, object]]) -> str:
    """sha256 of the canonical JSON of the source list: the digest the footer and the Dagster metadata record."""
    return hashlib.sha256(canonical_json([dict(s) for s in sources]).encode()).hexdigest()


def lineage_key(digest: str) -> str:
    """`lineage/sources/{sha256}.json`: the sidecar holding a source list, named by the list's digest.

    Content-addressed, so it never changes once written (a footer naming it stays true), reruns write the same
    key, and its bytes (the canonical JSON, no trailing newline) hash to the digest in its name.
    """
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise ValueError(f"lineage digest must be 64 lowercase hex digits, got {digest!r}")
    return f"{LINEAGE_PREFIX}{digest}.json"


def sources_metadata(sources: Iterable[Mapping[str, object]]) -> dict[str, str]:
    """The footer's source entries (spec §4): the list inline when it has at most 32 objects; otherwise its
    count, its sha256 digest and the key of the lineage sidecar that holds it (`lineage_key`)."""
    objects = [dict(s) for s in sources]
    if len(objects) <= INLINE_SOURCES_MAX:
        return {"aperiodic.sources": canonical_json(objects), "aperiodic.sources_count": str(len(objects))}
    digest = sources_digest(objects)
    return {
        "aperiodic.sources_count": str(len(objects)),
        "aperiodic.sources_sha256": digest,
        "aperiodic.sources_key": lineage_key(digest),
    }


def bars_metadata(
    *,
    exchange: str,
    symbol: str,
    native_symbol: str,
    interval: str,
    timestamp: str,
    month: str,
    row_count: int,
    sources: Iterable[Mapping[str, object]] = (),
    missing_days: Iterable[str] = (),
    code_version: str = __version__,
    schema_version: str = SCHEMA_VERSION,
    day: str | None = None,
) -> dict[str, str]:
    """Spec §4 key-value metadata of one published flow-bar file (a month's, or with `day` a daily file's).

    `sources` are the upstream objects (e.g. `dataclasses.asdict(SourceObject)`: location, size, sha256), in
    the order given, as canonical JSON (sorted keys) so the file stays reproducible: inline up to 32 of them,
    else count + digest + lineage sidecar key (`sources_metadata`; publish the sidecar with
    `storage.lineage.publish_sources_lineage`). `missing_days` are the days (`YYYY-MM-DD`) the source lacked
    for the month, stored sorted as a JSON list (`[]`: complete).
    """
    metadata = {
        "aperiodic.schema_version": schema_version,
        "aperiodic.exchange": exchange,
        "aperiodic.symbol": symbol,
        "aperiodic.native_symbol": native_symbol,
        "aperiodic.interval": interval,
        "aperiodic.timestamp": timestamp,
        "aperiodic.month": month,
        "aperiodic.code_version": code_version,
        **sources_metadata(sources),
        "aperiodic.row_count": str(int(row_count)),
        "aperiodic.missing_days": canonical_json(sorted(missing_days)),
    }
    if day is not None:
        if not check_day(day).startswith(f"{month}-"):
            raise ValueError(f"day {day!r} is not in month {month!r}")
        metadata["aperiodic.day"] = day
    return metadata
