"""S3 through the asset graph (moto servers on 127.0.0.1): the store on S3, and a source on S3 with arrival times."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from dagster import DagsterInstance, materialize

from aperiodic_pipelines.defs.definitions import GRAPHS
from aperiodic_pipelines.defs.partitions import flow_partition_key, partitioned_exchange
from aperiodic_pipelines.defs.resources import SourcesResource, StoreResource, store_resource
from aperiodic_pipelines.domain.exchanges import EXCHANGES_BY_NAME
from aperiodic_pipelines.domain.settings import Settings
from aperiodic_pipelines.mirror.http import ArchiveMirror
from aperiodic_pipelines.mirror.s3 import hyperliquid_mirror
from aperiodic_pipelines.storage import LocalStore, S3Store, flow_key, raw_key, read_parquet_metadata
from aperiodic_pipelines.synthetic import generate_tape
from tests.binance_stage import (
    MONTHS,
    assert_published_months,
    digests,
    materialization_metadata,
    new_instance,
    point_sources_at,
    run_month,
    write_binance_months,
)

FAKE_SECRET = "fake-secret-0123456789abcdef"  # moto accepts any credentials; this one must never show up


@pytest.mark.slow
def test_two_months_on_s3_store_exact_objects_metadata_and_identical_rerun(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, s3_bucket: str, s3_client, aws_env: str  # noqa: F811
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", FAKE_SECRET)
    monkeypatch.setenv("APERIODIC_STORE", f"s3://{s3_bucket}/aperiodic")
    counts = write_binance_months(tmp_path / "archives")
    with ArchiveMirror(tmp_path / "archives") as mirror:
        point_sources_at(monkeypatch, mirror.url, tmp_path / "cache")
        # The production wiring: the store from the settings, credentials as EnvVars, endpoint from
        # AWS_ENDPOINT_URL_S3.
        store = store_resource(Settings.from_env().store)
        resources = {"store": store, "sources": SourcesResource()}
        instance = new_instance()
        results = [run_month(instance, resources, month) for month in MONTHS]

        store = resources["store"].get_store()
        assert isinstance(store, S3Store) and store.bucket == s3_bucket and store.prefix == "aperiodic"
        assert_published_months(store, counts)
        listed = s3_client.list_objects_v2(Bucket=s3_bucket)["Contents"]
        assert all(obj["Key"].startswith("aperiodic/") for obj in listed)
        uri = materialization_metadata(results[1], "published_flow_bars")["dagster/uri"]
        assert uri == f"s3://{s3_bucket}/aperiodic/index/flow/binance-futures/BTCUSDT/2024-02.json"
        bars_uri = materialization_metadata(results[1], "flow_bars_exchange")["dagster/uri"]
        assert bars_uri == f"s3://{s3_bucket}/aperiodic/flow/exchange/binance-futures/1m/BTCUSDT/2024-02.parquet"

        # Credentials never reach run metadata or logs.
        for result in results:
            for event in instance.all_logs(result.run_id):
                text = json.dumps(str(event.dagster_event.event_specific_data if event.dagster_event else ""))
                assert FAKE_SECRET not in text and FAKE_SECRET not in (event.user_message or "")

        # Rerun the second month (it reads the first from the store): every object keeps its bytes.
        before = digests(store)
        run_month(instance, resources, MONTHS[1])
        assert digests(store) == before


@pytest.mark.slow
def test_hyperliquid_month_publishes_both_timestamp_variants(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A source with arrival times (node_fills_by_block on a moto S3 bucket) gets `true` bars as well."""
    month, coin = "2025-08", "BTC"
    tape = generate_tape(month, 1_500, seed=5, start_price=60_000.0, with_arrival=True)
    with hyperliquid_mirror() as mirror:
        mirror.write_month(coin, month, tape)
        for name, value in mirror.environment().items():
            monkeypatch.setenv(name, value)
        monkeypatch.setenv("APERIODIC_CACHE_DIR", str(tmp_path / "cache"))
        instance = DagsterInstance.ephemeral()
        instance.add_dynamic_partitions(EXCHANGES_BY_NAME["hyperliquid-perps"].instruments_name, [coin])
        resources = {"store": StoreResource(uri=str(tmp_path / "store")), "sources": SourcesResource()}
        # The venue month first (each hourly object read once for every coin), then the coin's partition.
        exchange = partitioned_exchange("hyperliquid-perps")
        venue = [a for a in GRAPHS["hyperliquid-perps"].assets if a.partitions_def == exchange.month_partitions]
        assert len(venue) == 1
        materialize(venue, instance=instance, resources=resources, partition_key=f"{month}-01")
        result = materialize(
            [a for a in GRAPHS["hyperliquid-perps"].assets if a not in venue], instance=instance,
            resources=resources, partition_key=flow_partition_key("hyperliquid-perps", coin, month),
        )
    store = LocalStore(tmp_path / "store")
    raw = pl.read_parquet(store.read_bytes(raw_key("hyperliquid-perps", coin, month)))
    start = pl.datetime(2025, 8, 1, time_zone="UTC").dt.epoch("us")
    end = pl.datetime(2025, 9, 1, time_zone="UTC").dt.epoch("us")
    arrived_in_month = raw.filter((pl.col("ts_arrival") >= start) & (pl.col("ts_arrival") < end)).height
    assert raw["ts_arrival"].null_count() == 0 and arrived_in_month > 0
    for timestamp, expected in (("exchange", raw.height), ("true", arrived_in_month)):
        for interval in ("1s", "1h", "1d"):
            data = store.read_bytes(flow_key(timestamp, "hyperliquid-perps", interval, coin, month))
            bars = pl.read_parquet(data)
            assert bars["taker_buy_count"].sum() + bars["taker_sell_count"].sum() == expected
            assert read_parquet_metadata(data)["aperiodic.timestamp"] == timestamp
    true_meta = materialization_metadata(result, "flow_bars_true", prefix="hyperliquid_perps")
    assert true_meta["trades"] == arrived_in_month and true_meta["rows/1s"] == 31 * 86_400
    published = materialization_metadata(result, "published_flow_bars", prefix="hyperliquid_perps")
    assert published["files"] == 16 and published["variants"] == "exchange, true"
    # One lineage count, however many hourly node objects fed the month (not one metadata entry per object).
    assert published["source_objects"] > 1 and len(published["source_digest"]) == 64
