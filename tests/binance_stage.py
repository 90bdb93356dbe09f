"""One Binance instrument's months through the asset graph: the mirror, the store and the helpers the Dagster
tests share (the local and S3 asset tests, the schedule and alert tests, the GraphQL backfill test).

Archives are Binance-format zips served by the real HTTP mirror on 127.0.0.1; Dagster runs in an ephemeral
instance. The `stage` fixture reaches every test through `tests/conftest.py`'s `pytest_plugins`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pytest
from dagster import AssetKey, DagsterInstance, materialize

from aperiodic_pipelines.defs.definitions import GRAPHS
from aperiodic_pipelines.defs.partitions import flow_partition_key
from aperiodic_pipelines.defs.raw import raw_sources_key
from aperiodic_pipelines.defs.resources import SourcesResource, StoreResource
from aperiodic_pipelines.domain.exchanges import EXCHANGES_BY_NAME
from aperiodic_pipelines.flow import FLOW_SCHEMA, INTERVALS, bars_in_month
from aperiodic_pipelines.mirror.http import ArchiveMirror
from aperiodic_pipelines.storage import ObjectStore, flow_key, raw_key, read_parquet_metadata, seconds_key
from aperiodic_pipelines.storage.index import index_key, read_published_month
from aperiodic_pipelines.storage.publication import version_key
from aperiodic_pipelines.synthetic import generate_tape

EXCHANGE = "binance-futures"
SYMBOL = "perpetual-BTC-USDT:USDT"
NATIVE = "BTCUSDT"
MONTHS = ("2024-01", "2024-02")
TRADES_PER_MONTH = 2_000
ASSETS = GRAPHS[EXCHANGE].assets
PREFIX = EXCHANGES_BY_NAME[EXCHANGE].slug


def write_binance_months(root: Path, months: tuple[str, ...] = MONTHS, n_trades: int = TRADES_PER_MONTH) -> dict:
    """Binance aggTrades monthly archives and the 1m klines Binance computes from the same trades (+ CHECKSUMs)
    of seeded synthetic tapes; returns month → trade count."""
    from aperiodic_pipelines.mirror.archives import write_binance_month
    from aperiodic_pipelines.mirror.klines import write_binance_klines_month

    counts = {}
    first_id = 1
    for index, month in enumerate(months):
        tape = generate_tape(month, n_trades, seed=11 + index, with_arrival=False, first_trade_id=first_id)
        first_id += tape.height
        write_binance_month(root, NATIVE, month, tape)
        write_binance_klines_month(root, NATIVE, month, tape)
        counts[month] = tape.height
    return counts


@dataclass
class Stage:
    """A mirror serving archives, an empty local store and the environment pointing at both."""

    mirror: ArchiveMirror
    store_dir: Path
    trade_counts: dict

    def resources(self) -> dict:
        return {"store": StoreResource(uri=str(self.store_dir)), "sources": SourcesResource()}

    def store(self) -> ObjectStore:
        return self.resources()["store"].get_store()


def point_sources_at(monkeypatch: pytest.MonkeyPatch, mirror_url: str, cache_dir: Path) -> None:
    monkeypatch.setenv("APERIODIC_BINANCE_URL", mirror_url)
    monkeypatch.setenv("APERIODIC_CACHE_DIR", str(cache_dir))
    monkeypatch.setenv("APERIODIC_HTTP_BACKOFF", "0.01")
    monkeypatch.delenv("APERIODIC_BINANCE_DATASET", raising=False)


@pytest.fixture
def stage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Stage]:
    archive_root = tmp_path / "archives"
    counts = write_binance_months(archive_root)
    with ArchiveMirror(archive_root) as mirror:
        point_sources_at(monkeypatch, mirror.url, tmp_path / "cache")
        yield Stage(mirror=mirror, store_dir=tmp_path / "store", trade_counts=counts)


def new_instance() -> DagsterInstance:
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(EXCHANGES_BY_NAME[EXCHANGE].instruments_name, [NATIVE])
    return instance


def run_month(instance: DagsterInstance, resources: dict, month: str, assets=ASSETS, raise_on_error: bool = True):
    return materialize(
        assets,
        instance=instance,
        partition_key=flow_partition_key(EXCHANGE, NATIVE, month),
        resources=resources,
        raise_on_error=raise_on_error,
    )


def expected_keys(store: ObjectStore, months: tuple[str, ...] = MONTHS) -> list[str]:
    keys = []
    for month in months:
        keys += [raw_key(EXCHANGE, NATIVE, month), raw_sources_key(EXCHANGE, NATIVE, month)]  # no staging left
        keys.append(seconds_key("exchange", EXCHANGE, NATIVE, month))
        keys += [flow_key("exchange", EXCHANGE, interval, NATIVE, month) for interval in INTERVALS]
        keys.append(index_key(EXCHANGE, NATIVE, month))
        # The immutable versions the index names (storage.publication): one per interval, each under its sha256.
        published = read_published_month(store, EXCHANGE, NATIVE, month)
        assert published is not None and len(published.files) == len(INTERVALS)
        for f in published.files:
            assert f.key == version_key(EXCHANGE, NATIVE, month, "exchange", f.interval, f.sha256)
            assert hashlib.sha256(store.read_bytes(f.key)).hexdigest() == f.sha256
            assert store.read_bytes(f.key) == store.read_bytes(flow_key("exchange", EXCHANGE, f.interval, NATIVE, month))
            keys.append(f.key)
    return sorted(keys)


def digests(store: ObjectStore) -> dict[str, str]:
    return {key: hashlib.sha256(store.read_bytes(key)).hexdigest() for key in store.list("")}


def materialization_metadata(result, asset: str, prefix: str = PREFIX) -> dict:
    """Metadata of the run's one materialization of `{prefix}/{asset}`, values unwrapped, in recorded order."""
    (event,) = [
        e.event_specific_data.materialization for e in result.get_asset_materialization_events()
        if e.asset_key == AssetKey([prefix, asset])
    ]
    return {key: getattr(value, "value", value) for key, value in event.metadata.items()}


def assert_published_months(store: ObjectStore, trade_counts: dict, months: tuple[str, ...] = MONTHS) -> None:
    """Exactly the expected objects; every flow file has the spec schema, a dense grid and spec §4 metadata."""
    assert store.list("") == expected_keys(store, months)
    for month in months:
        source_sets = []
        for interval in INTERVALS:
            key = flow_key("exchange", EXCHANGE, interval, NATIVE, month)
            data = store.read_bytes(key)
            frame = pl.read_parquet(data)
            assert dict(frame.schema) == FLOW_SCHEMA
            assert frame.height == bars_in_month(month, interval)
            assert frame["taker_buy_count"].sum() + frame["taker_sell_count"].sum() == trade_counts[month]
            meta = read_parquet_metadata(data)
            assert meta["aperiodic.exchange"] == EXCHANGE
            assert meta["aperiodic.symbol"] == SYMBOL
            assert meta["aperiodic.interval"] == interval
            assert meta["aperiodic.timestamp"] == "exchange"
            assert meta["aperiodic.month"] == month
            assert meta["aperiodic.row_count"] == str(frame.height)
            assert meta["aperiodic.missing_days"] == "[]"
            source_sets.append(meta["aperiodic.sources"])
        assert len(set(source_sets)) == 1  # every interval names the same inputs
        sources = json.loads(source_sets[0])
        # A month is computed from its own archive and the previous month's (the first month has none).
        expected_archives = MONTHS[: MONTHS.index(month) + 1][-2:]
        assert [s["location"].rsplit("/", 1)[-1] for s in sources] == [
            f"{NATIVE}-aggTrades-{m}.zip" for m in expected_archives
        ]
        assert all(len(s["sha256"]) == 64 for s in sources)
