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

from aperiodic_pipelines.defs.definitions import GRAPHS
from aperiodic_pipelines.defs.metadata import FLOW_COLUMN_DESCRIPTIONS
from aperiodic_pipelines.defs.partitions import EXCHANGES_BY_NAME, flow_partition_key
from aperiodic_pipelines.defs.raw import raw_sources_key
from aperiodic_pipelines.defs.resources import SourcesResource, StoreResource
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


def test_two_months_published_with_metadata_and_rerun_is_byte_identical(stage: Stage) -> None:
    instance = new_instance()
    results = {month: run_month(instance, stage.resources(), month) for month in MONTHS}
    store = stage.store()
    assert_published_months(store, stage.trade_counts)

    # Materialisation metadata that is true: every uri names an object that exists after the run.
    raw = materialization_metadata(results["2024-02"], "raw_trades")
    assert raw["dagster/row_count"] == stage.trade_counts["2024-02"]
    assert raw["dataset"] == "aggTrades"
    assert raw["duplicates_dropped"] == 0 and raw["missing_days"] == 0
    assert raw["dagster/uri"] == store.uri(raw_key(EXCHANGE, NATIVE, "2024-02"))
    # Lineage: a count, a digest and a link to the sidecar listing the objects, not the objects inline.
    sidecar = json.loads(store.read_bytes(raw_sources_key(EXCHANGE, NATIVE, "2024-02")))
    assert raw["source_objects"] == len(sidecar["objects"]) == 1
    assert raw["source_digest"] == hashlib.sha256(
        json.dumps(sidecar["objects"], sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()
    assert raw["source_lineage"] == store.uri(raw_sources_key(EXCHANGE, NATIVE, "2024-02"))
    assert [c.description for c in raw["dagster/column_schema"].columns if not c.description] == []

    bars = materialization_metadata(results["2024-02"], "flow_bars_exchange")
    columns = bars["dagster/column_schema"].columns
    assert [c.name for c in columns] == list(FLOW_SCHEMA) and len(columns) == 37
    assert [c.description for c in columns] == [FLOW_COLUMN_DESCRIPTIONS[c.name] for c in columns]
    assert all(c.description for c in columns)
    # Row counts per interval, and dagster/row_count = the 1m rows of the month.
    assert {k: v for k, v in bars.items() if k.startswith("rows/")} == {
        f"rows/{i}": bars_in_month("2024-02", i) for i in INTERVALS
    }
    assert bars["dagster/row_count"] == bars_in_month("2024-02", "1m")
    assert bars["trades"] == stage.trade_counts["2024-02"]

    published = materialization_metadata(results["2024-02"], "published_flow_bars")
    assert list(published)[0] == "month_picture" and "data:image/png;base64," in published["month_picture"]
    assert published["files"] == len(INTERVALS) and published["variants"] == "exchange"
    assert published["dagster/uri"] == store.uri(index_key(EXCHANGE, NATIVE, "2024-02"))
    assert published["dagster/row_count"] == bars_in_month("2024-02", "1m")
    assert published["source_objects"] == 1

    stats = materialization_metadata(results["2024-02"], "second_stats")
    assert "from the store" in stats["previous_month"] and "from the store" in stats["this_month"]
    assert stats["dagster/uri"] == store.uri(seconds_key("exchange", EXCHANGE, NATIVE, "2024-02"))
    first = materialization_metadata(results["2024-01"], "second_stats")
    assert "first month" in first["previous_month"]
    for result in results.values():  # every uri of every asset names an object in the store after the run
        for event in result.get_asset_materialization_events():
            uri = event.event_specific_data.materialization.metadata["dagster/uri"].value
            assert Path(uri).is_file(), uri

    # Every check ran per partition and passed: where data enters (raw), in the middle (bars), where it leaves.
    records = instance.get_records_for_run(
        results["2024-02"].run_id, of_type={DagsterEventType.ASSET_CHECK_EVALUATION}
    ).records
    evaluations = [r.event_log_entry.dagster_event.event_specific_data for r in records]
    assert {(e.asset_key.to_user_string(), e.check_name) for e in evaluations} == {
        *((f"{PREFIX}/raw_trades", c) for c in ("canonical_schema", "nonempty_month", "duplicates_and_gaps",
                                                  "complete_month")),
        *((f"{PREFIX}/flow_bars_exchange", c) for c in ("schema_and_invariants", "dense_grid", "nonempty_month",
                                                         "reconciles_with_exchange_klines")),
        (f"{PREFIX}/published_flow_bars", "matches_staged_and_index"),
    }
    assert all(e.passed for e in evaluations)
    (klines,) = [e for e in evaluations if e.check_name == "reconciles_with_exchange_klines"]
    assert klines.metadata["bars_compared"].value == 29 * 24 * 60 and klines.metadata["bars_differing"].value == 0
    partition = MultiPartitionKey({"instrument": NATIVE, "month": "2024-02-01"})
    assert {e.partition for e in evaluations} == {partition}

    # Rerunning both months (cache hits, same inputs) rewrites every object with identical bytes.
    before = digests(store)
    for month in MONTHS:
        run_month(instance, stage.resources(), month)
    assert digests(store) == before

    # Republishing alone (staging was cleared) re-verifies against the index: succeeds, same bytes.
    (published_asset,) = [a for a in ASSETS if a.key == AssetKey([PREFIX, "published_flow_bars"])]
    again = run_month(instance, stage.resources(), "2024-02", assets=[published_asset])
    assert materialization_metadata(again, "published_flow_bars")["published_now"] == "none (re-verified)"
    assert digests(store) == before
    # ... repairs a stable layout key that no longer holds its version's bytes (written in place, unlinked) ...
    stable = flow_key("exchange", EXCHANGE, "1h", NATIVE, "2024-02")
    store.path(stable).unlink()
    store.path(stable).write_bytes(store.read_bytes(flow_key("exchange", EXCHANGE, "1h", NATIVE, "2024-01")))
    run_month(instance, stage.resources(), "2024-02", assets=[published_asset])
    assert digests(store) == before
    # ... and refuses when a published object no longer matches the index, naming it.
    (entry,) = [f for f in read_published_month(store, EXCHANGE, NATIVE, "2024-02").files if f.interval == "1h"]
    damaged = entry.key
    store.path(damaged).unlink()  # the stable key is a hard link to it: damage the version alone
    store.path(damaged).write_bytes(store.read_bytes(flow_key("exchange", EXCHANGE, "1h", NATIVE, "2024-01")))
    failed = run_month(instance, stage.resources(), "2024-02", assets=[published_asset], raise_on_error=False)
    assert not failed.success
    (failure,) = [e for e in failed.all_events if e.is_step_failure]
    assert f"{damaged} does not match the index" in failure.step_failure_data.error.message


def test_a_run_that_loses_the_partition_fails_clearly_and_records_nothing(stage: Stage) -> None:
    """Another writer holds the month's publication lease (here: this test process, as a concurrent run would):
    the run's publishing step fails at once, not retried, naming the partition; no materialization of the
    published asset is recorded and the index is untouched. The staged bars stay, and publish once it is free."""
    from aperiodic_pipelines.storage.publication import partition_lease

    instance = new_instance()
    store = stage.store()
    with partition_lease(store, EXCHANGE, NATIVE, "2024-01"):
        failed = run_month(instance, stage.resources(), "2024-01", raise_on_error=False)
    assert not failed.success
    (failure,) = [e for e in failed.all_events if e.is_step_failure]
    assert failure.step_key == f"{PREFIX}__published_flow_bars"
    message = failure.step_failure_data.error.message
    assert f"PublicationConflictError: {EXCHANGE} {NATIVE} 2024-01 is being published by another writer" in message
    assert not [e for e in failed.all_events if e.event_type_value in ("STEP_UP_FOR_RETRY", "STEP_RESTARTED")]
    assert [e.asset_key for e in failed.get_asset_materialization_events()
            if e.asset_key == AssetKey([PREFIX, "published_flow_bars"])] == []
    assert read_published_month(store, EXCHANGE, NATIVE, "2024-01") is None
    assert store.list("flow/") == []

    (published_asset,) = [a for a in ASSETS if a.key == AssetKey([PREFIX, "published_flow_bars"])]
    again = run_month(instance, stage.resources(), "2024-01", assets=[published_asset])
    assert materialization_metadata(again, "published_flow_bars")["published_now"] == "exchange"
    assert len(read_published_month(store, EXCHANGE, NATIVE, "2024-01").files) == len(INTERVALS)
