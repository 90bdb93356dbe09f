"""The index of what is published: one small JSON manifest per instrument-month.

The publishing step writes `index/flow/{exchange}/{native_symbol}/{YYYY-MM}.json` right after the month's
files are in place, replacing it whole (the store's atomic publish). A manifest therefore never names a file
that is not published yet, and readers (the API, checks, the Dagster metadata) learn what exists from one
small object per month instead of listing the `flow/` tree. One object per month, not per instrument, so
months of one instrument published side by side by a backfill never overwrite each other's entries.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aperiodic_pipelines.domain.layout import _segment, flow_key
from aperiodic_pipelines.domain.months import check_month
from aperiodic_pipelines.storage.base import ObjectStore, PublishedObject
from aperiodic_pipelines.storage.json_objects import publish_json

if TYPE_CHECKING:
    import polars as pl

INDEX_PREFIX = "index/flow/"


@dataclass(frozen=True)
class PublishedFile:
    """One published parquet object of a month: which variant and interval, where, and what it holds."""

    timestamp: str
    interval: str
    key: str
    sha256: str
    rows: int
    size: int


@dataclass(frozen=True)
class PublishedMonth:
    """Everything published for one instrument-month, as the index records it."""

    exchange: str
    symbol: str
    native_symbol: str
    month: str
    files: tuple[PublishedFile, ...]

    def to_dict(self) -> dict[str, Any]:
        value = asdict(self)
        value["files"] = sorted(value["files"], key=lambda f: (f["timestamp"], f["interval"]))
        return value

    @classmethod
    def from_json(cls, text: str | bytes) -> PublishedMonth:
        value = json.loads(text)
        files = tuple(PublishedFile(**entry) for entry in value.pop("files"))
        return cls(files=files, **value)


def index_key(exchange: str, native_symbol: str, month: str) -> str:
    """`index/flow/{exchange}/{native_symbol}/{YYYY-MM}.json`."""
    return (
        f"{INDEX_PREFIX}{_segment('exchange', exchange)}/{_segment('native symbol', native_symbol)}/"
        f"{check_month(month)}.json"
    )


def record_published_month(store: ObjectStore, month: PublishedMonth) -> PublishedObject:
    """Replace the month's manifest whole (call after every file it names is published)."""
    return publish_json(store, month.to_dict(), index_key(month.exchange, month.native_symbol, month.month))


def read_published_month(store: ObjectStore, exchange: str, native_symbol: str, month: str) -> PublishedMonth | None:
    """The month's manifest, or None when nothing of that month is published."""
    key = index_key(exchange, native_symbol, month)
    return PublishedMonth.from_json(store.read_bytes(key)) if store.exists(key) else None


def list_published_months(store: ObjectStore, exchange: str, native_symbol: str) -> list[PublishedMonth]:
    """Every published month of one instrument, oldest first."""
    prefix = f"{INDEX_PREFIX}{_segment('exchange', exchange)}/{_segment('native symbol', native_symbol)}/"
    keys = sorted(k for k in store.list(prefix) if k.endswith(".json"))
    return [PublishedMonth.from_json(store.read_bytes(k)) for k in keys]


def list_indexed_symbols(store: ObjectStore, exchange: str) -> list[str]:
    """Native symbols of `exchange` with at least one month manifest in the index, sorted."""
    prefix = f"{INDEX_PREFIX}{_segment('exchange', exchange)}/"
    natives = {k[len(prefix) :].split("/", 1)[0] for k in store.list(prefix) if k.endswith(".json")}
    return sorted(natives)


def publish_month_bars(
    store: ObjectStore,
    *,
    exchange: str,
    symbol: str,
    native_symbol: str,
    month: str,
    bars: Mapping[tuple[str, str], pl.DataFrame],
    sources: Iterable[Mapping[str, object]] = (),
) -> PublishedMonth:
    """Publish one instrument-month of bars, `{(timestamp, interval): frame}`, then index it.

    The same steps as the Dagster publishing asset, without Dagster: deterministic parquet with spec §4
    metadata, the store's atomic publish per file, and the month's manifest last. For tools, tests and
    benchmarks that publish bars computed outside the asset graph.
    """
    from aperiodic_pipelines.storage.parquet import bars_metadata, write_parquet_deterministic

    files = []
    sources = [dict(s) for s in sources]
    with tempfile.TemporaryDirectory(prefix="aperiodic-publish-") as tmp:
        for (timestamp, interval), frame in sorted(bars.items()):
            key = flow_key(timestamp, exchange, interval, native_symbol, month)
            local = Path(tmp) / f"{timestamp}-{interval}.parquet"
            metadata = bars_metadata(
                exchange=exchange, symbol=symbol, native_symbol=native_symbol, interval=interval,
                timestamp=timestamp, month=month, row_count=frame.height, sources=sources,
            )
            write_parquet_deterministic(frame, local, metadata=metadata)
            published = store.publish_file(local, key)
            files.append(PublishedFile(timestamp, interval, key, published.sha256, frame.height, published.size))
    entry = PublishedMonth(exchange, symbol, native_symbol, month, tuple(files))
    record_published_month(store, entry)
    return entry
