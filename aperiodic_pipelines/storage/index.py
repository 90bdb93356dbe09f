"""The index of what is published: one small JSON manifest per instrument-month, the month's commit point.

`index/flow/{exchange}/{native_symbol}/{YYYY-MM}.json` names every file of the month (each variant and
interval) by its immutable version key and sha256; `storage.publication` replaces it in one conditional write
after every file it names is in place, so a reader of the index sees the whole old month or the whole new one,
and every sha256 it shows is that of the bytes under the key it names. Readers (the API, checks, the Dagster
metadata) learn what exists from one small object per month instead of listing the `flow/` tree. One object per
month, not per instrument, so months of one instrument published side by side never overwrite each other.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aperiodic_pipelines.domain.layout import _segment, flow_key
from aperiodic_pipelines.domain.months import check_month, days_of_month
from aperiodic_pipelines.storage.base import ObjectStore, PublishedObject
from aperiodic_pipelines.storage.json_objects import publish_json

if TYPE_CHECKING:
    import polars as pl

INDEX_PREFIX = "index/flow/"


@dataclass(frozen=True)
class PublishedFile:
    """One published parquet object of a month: which variant and interval, where, and what it holds.

    `day` is set for a daily file of the open month (`YYYY-MM-DD`), None for the monthly file.
    """

    timestamp: str
    interval: str
    key: str
    sha256: str
    rows: int
    size: int
    day: str | None = None


@dataclass(frozen=True)
class PublishedCarry:
    """The flow carry published with a day (`flow.FlowCarry`): what `for_day`'s bars of one variant start from.

    It lives in the entry of the month of the day it was published with (`for_day` - 1), so the carry for the
    first day of the next month is in the last day's month.
    """

    for_day: str
    timestamp: str
    key: str
    sha256: str
    size: int


@dataclass(frozen=True)
class RetiringObject:
    """A version a newer publication superseded, kept until `retire_after` (epoch seconds): URLs may name it."""

    key: str
    retire_after: float


@dataclass(frozen=True)
class PublishedMonth:
    """Everything published for one instrument-month, as the index records it."""

    exchange: str
    symbol: str
    native_symbol: str
    month: str
    files: tuple[PublishedFile, ...]
    retiring: tuple[RetiringObject, ...] = ()
    carries: tuple[PublishedCarry, ...] = ()

    @property
    def days(self) -> list[str]:
        """The published days of the open month (`YYYY-MM-DD`), in order; empty once the month is closed."""
        return sorted({f.day for f in self.files if f.day is not None})

    def monthly_files(self) -> list[PublishedFile]:
        return [f for f in self.files if f.day is None]

    @property
    def only_days(self) -> bool:
        """Whether the entry holds daily files of the open month and no monthly file yet (the month is not
        published as a month)."""
        return bool(self.files) and not self.monthly_files()

    def day_files(self, day: str) -> list[PublishedFile]:
        return [f for f in self.files if f.day == day]

    def named_keys(self) -> set[str]:
        """Every object the entry names: its files and its carries (not what it is retiring)."""
        return {f.key for f in self.files} | {c.key for c in self.carries}

    def to_dict(self) -> dict[str, Any]:
        value = asdict(self)
        value["files"] = sorted(value["files"], key=lambda f: (f["timestamp"], f["interval"], f["day"] or ""))
        for entry in value["files"]:
            if entry["day"] is None:  # monthly entries keep the shape they had before daily files
                del entry["day"]
        value["retiring"] = sorted(value["retiring"], key=lambda r: r["key"])
        if value["carries"]:
            value["carries"] = sorted(value["carries"], key=lambda c: (c["for_day"], c["timestamp"]))
        else:
            del value["carries"]
        return value

    @classmethod
    def from_json(cls, text: str | bytes) -> PublishedMonth:
        value = json.loads(text)
        files = tuple(PublishedFile(**entry) for entry in value.pop("files"))
        retiring = tuple(RetiringObject(**entry) for entry in value.pop("retiring", ()))  # older entries have none
        carries = tuple(PublishedCarry(**entry) for entry in value.pop("carries", ()))
        return cls(files=files, retiring=retiring, carries=carries, **value)


def complete_through(entries: Iterable[PublishedMonth], timestamp: str, interval: str) -> str | None:
    """The last day whose bars of (timestamp, interval) are published (`YYYY-MM-DD`), or None: the last day of
    the latest month with a monthly file, or the latest published day after it. Days are published in order
    (`storage.daily.publish_day` refuses a gap), so every day before it within those months is published."""
    last: str | None = None
    for entry in entries:
        for f in entry.files:
            if (f.timestamp, f.interval) != (timestamp, interval):
                continue
            through = f.day if f.day is not None else days_of_month(entry.month)[-1]
            if last is None or through > last:
                last = through
    return last


def index_key(exchange: str, native_symbol: str, month: str) -> str:
    """`index/flow/{exchange}/{native_symbol}/{YYYY-MM}.json`."""
    return (
        f"{INDEX_PREFIX}{_segment('exchange', exchange)}/{_segment('native symbol', native_symbol)}/"
        f"{check_month(month)}.json"
    )


def record_published_month(store: ObjectStore, month: PublishedMonth) -> PublishedObject:
    """Replace the month's manifest whole, unconditionally (tests and tools). Publishing goes through
    `storage.publication`, which holds the partition's lease and commits conditionally."""
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
    retain_seconds: float | None = None,
    lease_seconds: float | None = None,
    on_step: Callable[[str], None] | None = None,
) -> PublishedMonth:
    """Publish one instrument-month of bars, `{(timestamp, interval): frame}`, as a whole (`storage.publication`).

    The same steps as the Dagster publishing asset, without Dagster: deterministic parquet with spec §4
    metadata (a lineage sidecar when there are more than 32 sources), each file to its immutable version key,
    the month's index entry as the one commit point, then the stable layout keys. For tools, tests and
    benchmarks that publish bars computed outside the asset graph. The new entry names exactly the files of `bars`.
    """
    from aperiodic_pipelines.storage.lineage import publish_sources_lineage
    from aperiodic_pipelines.storage.parquet import bars_metadata, write_parquet_deterministic
    from aperiodic_pipelines.storage.publication import LEASE_SECONDS, month_publication

    sources = [dict(s) for s in sources]
    publish_sources_lineage(store, sources)
    with (
        tempfile.TemporaryDirectory(prefix="aperiodic-publish-") as tmp,
        month_publication(
            store, exchange, native_symbol, month, retain_seconds=retain_seconds, on_step=on_step,
            lease_seconds=LEASE_SECONDS if lease_seconds is None else lease_seconds,
        ) as publication,
    ):
        for (timestamp, interval), frame in sorted(bars.items()):
            flow_key(timestamp, exchange, interval, native_symbol, month)  # checks every part before any write
            local = Path(tmp) / f"{timestamp}-{interval}.parquet"
            metadata = bars_metadata(
                exchange=exchange, symbol=symbol, native_symbol=native_symbol, interval=interval,
                timestamp=timestamp, month=month, row_count=frame.height, sources=sources,
            )
            write_parquet_deterministic(frame, local, metadata=metadata)
            publication.add_file(timestamp, interval, local, frame.height)
        return publication.commit(symbol).month
