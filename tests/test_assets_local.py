"""Two consecutive months of one instrument through the whole asset graph, against a local store.

Archives are Binance-format zips served by the real HTTP mirror on 127.0.0.1; Dagster runs in an ephemeral
instance. Helpers here are reused by the S3, schedule/alert and GraphQL tests.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pytest
from dagster import AssetKey, DagsterEventType, DagsterInstance, MultiPartitionKey, materialize

from aperiodic_pipelines.defs.assets import ASSETS, raw_sources_key
from aperiodic_pipelines.defs.partitions import (
    INSTRUMENTS_PARTITIONS_NAME,
    flow_partition_key,
    instrument_key,
)
from aperiodic_pipelines.defs.resources import SourcesResource, StoreResource
from aperiodic_pipelines.flow import FLOW_SCHEMA, INTERVALS, bars_in_month
from aperiodic_pipelines.mirror.http import ArchiveMirror
from aperiodic_pipelines.storage import ObjectStore, flow_key, raw_key, read_parquet_metadata, seconds_key
from aperiodic_pipelines.storage.index import index_key
from aperiodic_pipelines.synthetic import generate_tape

EXCHANGE = "binance-futures"
SYMBOL = "perpetual-BTC-USDT:USDT"
NATIVE = "BTCUSDT"
MONTHS = ("2024-01", "2024-02")
TRADES_PER_MONTH = 2_000


def write_binance_months(root: Path, months: tuple[str, ...] = MONTHS, n_trades: int = TRADES_PER_MONTH) -> dict:
    """Binance aggTrades monthly archives (+ CHECKSUM) of seeded synthetic tapes; returns month → trade count."""
    from aperiodic_pipelines.mirror.archives import write_binance_month

    counts = {}
    first_id = 1
    for index, month in enumerate(months):
        tape = generate_tape(month, n_trades, seed=11 + index, with_arrival=False, first_trade_id=first_id)
        first_id += tape.height
        write_binance_month(root, NATIVE, month, tape)
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
    instance.add_dynamic_partitions(INSTRUMENTS_PARTITIONS_NAME, [instrument_key(EXCHANGE, SYMBOL)])
    return instance


def run_month(instance: DagsterInstance, resources: dict, month: str, assets=ASSETS, raise_on_error: bool = True):
    return materialize(
        assets,
        instance=instance,
        partition_key=flow_partition_key(EXCHANGE, SYMBOL, month),
        resources=resources,
        raise_on_error=raise_on_error,
    )


def expected_keys(months: tuple[str, ...] = MONTHS) -> list[str]:
    keys = []
    for month in months:
        keys += [raw_key(EXCHANGE, NATIVE, month), raw_sources_key(EXCHANGE, NATIVE, month)]
        keys.append(seconds_key("exchange", EXCHANGE, NATIVE, month))
        keys += [flow_key("exchange", EXCHANGE, interval, NATIVE, month) for interval in INTERVALS]
        keys.append(index_key(EXCHANGE, NATIVE, month))
    return sorted(keys)


def digests(store: ObjectStore) -> dict[str, str]:
    return {key: hashlib.sha256(store.read_bytes(key)).hexdigest() for key in store.list("")}


def materialization_metadata(result, asset: str) -> dict:
    (event,) = result.asset_materializations_for_node(asset)
    return {key: getattr(value, "value", value) for key, value in event.metadata.items()}


def assert_published_months(store: ObjectStore, trade_counts: dict, months: tuple[str, ...] = MONTHS) -> None:
    """Exactly the expected objects; every flow file has the spec schema, a dense grid and spec §4 metadata."""
    assert store.list("") == expected_keys(months)
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
            source_sets.append(meta["aperiodic.sources"])
        assert len(set(source_sets)) == 1  # every interval names the same inputs
        sources = json.loads(source_sets[0])
        # A month is computed from its own archive and the previous month's (the first month has none).
        expected_archives = MONTHS[: MONTHS.index(month) + 1][-2:]
        assert [s["location"].rsplit("/", 1)[-1] for s in sources] == [
            f"{NATIVE}-aggTrades-{m}.zip" for m in expected_archives
        ]
        assert all(len(s["sha256"]) == 64 for s in sources)


def test_two_months_published_with_metadata_and_rerun_is_byte_identical(stage: Stage) -> None:
    instance = new_instance()
    results = {month: run_month(instance, stage.resources(), month) for month in MONTHS}
    store = stage.store()
    assert_published_months(store, stage.trade_counts)

    # Materialisation metadata: lineage of the raw month, schema/row count/uri of bars, the month picture.
    raw = materialization_metadata(results["2024-02"], "raw_trades")
    assert raw["trade_count"] == stage.trade_counts["2024-02"]
    assert raw["dagster/row_count"] == stage.trade_counts["2024-02"]
    assert raw["dataset"] == "aggTrades"
    assert raw["duplicates_dropped"] == 0
    assert raw["source_objects"][0]["location"].endswith(f"{NATIVE}-aggTrades-2024-02.zip")
    assert raw["dagster/uri"] == store.uri(raw_key(EXCHANGE, NATIVE, "2024-02"))

    bars = materialization_metadata(results["2024-02"], "flow_bars_exchange")
    assert [c.name for c in bars["dagster/column_schema"].columns] == list(FLOW_SCHEMA)
    assert bars["dagster/row_count"] == sum(bars_in_month("2024-02", i) for i in INTERVALS)
    assert bars["trades"] == stage.trade_counts["2024-02"]
    assert bars["month_picture"].startswith("![") and "data:image/png;base64," in bars["month_picture"]

    true_bars = materialization_metadata(results["2024-02"], "flow_bars_true")
    assert true_bars["produced"] is False and "no arrival times" in true_bars["note"]
    assert true_bars["dagster/row_count"] == 0 and "dagster/column_schema" in true_bars

    published = materialization_metadata(results["2024-02"], "published_flow_bars")
    assert published["files"] == len(INTERVALS)
    assert published["dagster/uri"] == store.uri(flow_key("exchange", EXCHANGE, "1m", NATIVE, "2024-02"))
    assert "no arrival times" in published["true_variant"]

    stats = materialization_metadata(results["2024-02"], "second_stats")
    assert "from the store" in stats["previous_month"] and "from the store" in stats["this_month"]
    assert stats["dagster/uri"] == store.uri(seconds_key("exchange", EXCHANGE, NATIVE, "2024-02"))
    assert "second" in [c.name for c in stats["dagster/column_schema"].columns]
    assert "not produced" in stats["true_variant"]
    first = materialization_metadata(results["2024-01"], "second_stats")
    assert "first month" in first["previous_month"]

    # Every check ran per partition and passed.
    records = instance.get_records_for_run(
        results["2024-02"].run_id, of_type={DagsterEventType.ASSET_CHECK_EVALUATION}
    ).records
    evaluations = [r.event_log_entry.dagster_event.event_specific_data for r in records]
    assert {(e.asset_key, e.check_name) for e in evaluations} == {
        (AssetKey(f"flow_bars_{t}"), c) for t in ("exchange", "true")
        for c in ("schema_and_invariants", "dense_grid", "nonempty_month")
    }
    assert all(e.passed for e in evaluations)
    partition = MultiPartitionKey({"instrument": instrument_key(EXCHANGE, SYMBOL), "month": "2024-02-01"})
    assert {e.partition for e in evaluations} == {partition}

    # Rerunning both months (cache hits, same inputs) rewrites every object with identical bytes.
    before = digests(store)
    for month in MONTHS:
        run_month(instance, stage.resources(), month)
    assert digests(store) == before
