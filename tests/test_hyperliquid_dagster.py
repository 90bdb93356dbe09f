"""Hyperliquid in the Dagster graph: `hyperliquid_perps/venue_hours` reads each hourly object once for every coin,
and each coin's `raw_trades` builds its month from the prepared hours.

Real parts: a moto S3 server on 127.0.0.1 holding a month of `node_fills_by_block` objects (three coins sharing
them, as upstream), the code location's own jobs executed on a real Dagster instance, a local store and cache.
Parses and downloads are counted by wrapping the source's own functions (they still run).
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import requests
from dagster import (
    AssetKey,
    DagsterEventType,
    DagsterInstance,
    Definitions,
    MultiToSingleDimensionPartitionMapping,
    RunRequest,
    RunsFilter,
    SkipReason,
    build_run_status_sensor_context,
    build_schedule_context,
)

from aperiodic_pipelines.defs.definitions import build_code_location, defs
from aperiodic_pipelines.defs.partitions import flow_partition_key, partitioned_exchange
from aperiodic_pipelines.defs.venue import FAN_OUT_ALL, FAN_OUT_TAG
from aperiodic_pipelines.domain.settings import Settings
from aperiodic_pipelines.mirror.s3 import corrupt_object, create_bucket, make_client, write_hyperliquid_month
from aperiodic_pipelines.operator import backfill as runs
from aperiodic_pipelines.sources import hyperliquid
from aperiodic_pipelines.sources.config import SourceConfig
from aperiodic_pipelines.sources.hyperliquid import NODE_FILLS_BY_BLOCK, fetch_month, hour_key
from aperiodic_pipelines.sources.hyperliquid.bucket import BucketReader
from aperiodic_pipelines.storage import LocalStore, raw_key
from aperiodic_pipelines.synthetic import generate_tape
from tests.postgres_fixtures import instance_environment, running_dagster_services
from tests.s3_fixtures import MOTO_REGION

pytestmark = pytest.mark.slow

BUCKET = "hl-dagster-test"
MONTH = "2025-09"
COINS = ("BTC", "ETH", "SOL")
EXCHANGE = partitioned_exchange("hyperliquid-perps")
VENUE = AssetKey(["hyperliquid_perps", "venue_hours"])
RAW = AssetKey(["hyperliquid_perps", "raw_trades"])
REPO = Path(__file__).resolve().parents[1]
OBJECTS_IN_MONTH = 722  # 720 hours of September and the hour on each side (records filed late or early)


@pytest.fixture(scope="module")
def bucket(moto_endpoint: str) -> Any:  # noqa: F811
    """A month of three coins' trades in the bucket's real hourly format; the client that wrote it."""
    client = make_client(moto_endpoint, region=MOTO_REGION)
    create_bucket(client, BUCKET, region=MOTO_REGION)
    tape = pl.concat([
        generate_tape(MONTH, n_trades=800, seed=40 + index, start_price=10.0 + 100 * index,
                      first_trade_id=1 + index * 10**6).with_columns(coin=pl.lit(coin))
        for index, coin in enumerate(COINS)
    ]).sort("ts_exchange", "trade_id")
    write_hyperliquid_month(client, BUCKET, "", MONTH, tape, seed=5)
    return client


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> Counter:
    """How many objects were downloaded and parsed (the real functions run; they are only counted)."""
    counts: Counter = Counter()
    parse, download = hyperliquid.source.parse_object, BucketReader._download

    def counting_parse(*args: Any, **kwargs: Any) -> Any:
        counts["parses"] += 1
        return parse(*args, **kwargs)

    def counting_download(self: BucketReader, *args: Any, **kwargs: Any) -> Any:
        counts["downloads"] += 1
        return download(self, *args, **kwargs)

    monkeypatch.setattr(hyperliquid.source, "parse_object", counting_parse)
    monkeypatch.setattr(BucketReader, "_download", counting_download)
    return counts


@pytest.fixture
def stage(bucket: Any, aws_env: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:  # noqa: F811
    """The deployment's environment: the bucket, a fresh cache and store; yields the tmp dir."""
    monkeypatch.setenv("APERIODIC_HYPERLIQUID_URL", f"s3://{BUCKET}")
    monkeypatch.setenv("APERIODIC_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("APERIODIC_STORE", str(tmp_path / "store"))
    monkeypatch.delenv("APERIODIC_SOURCE", raising=False)
    yield tmp_path


@pytest.fixture
def instance() -> Iterator[DagsterInstance]:
    with DagsterInstance.ephemeral() as ephemeral:
        ephemeral.add_dynamic_partitions(EXCHANGE.instruments_name, list(COINS))
        yield ephemeral


@cache
def _definitions_for(settings: Settings) -> Definitions:
    return build_code_location(settings).defs


def current_defs() -> Definitions:
    """The code location as a process started now builds it: from the stage's environment (the module's `defs`
    was built from the environment the test session started with)."""
    return _definitions_for(Settings.from_env())


def run_venue(instance: DagsterInstance, *, tags: dict[str, str] | None = None) -> Any:
    job = current_defs().resolve_job_def("hyperliquid_perps_venue_job")
    return job.execute_in_process(partition_key=f"{MONTH}-01", instance=instance, raise_on_error=False, tags=tags)


def run_raw(instance: DagsterInstance, coin: str) -> Any:
    job = current_defs().resolve_job_def("hyperliquid_perps_flow_bars_job")
    return job.execute_in_process(
        partition_key=str(flow_partition_key(EXCHANGE.name, coin, MONTH)), instance=instance, asset_selection=[RAW],
        raise_on_error=False,
    )


def materialization(result: Any, key: AssetKey) -> dict[str, Any]:
    (event,) = [e for e in result.get_asset_materialization_events() if e.asset_key == key]
    return {name: value.value for name, value in event.step_materialization_data.materialization.metadata.items()}


def step_failures(result: Any) -> list[str]:
    return [e.step_failure_data.error.message for e in result.all_events if e.event_type == DagsterEventType.STEP_FAILURE]


def retries(result: Any) -> int:
    return sum(e.event_type == DagsterEventType.STEP_UP_FOR_RETRY for e in result.all_events)


def test_venue_month_is_parsed_once_for_every_coin_and_each_coin_equals_fetch_month(
    stage: Path, instance: DagsterInstance, counted: Counter, bucket: Any, aws_env: str  # noqa: F811
) -> None:
    venue = run_venue(instance)
    assert venue.success, step_failures(venue)
    assert counted == {"parses": OBJECTS_IN_MONTH, "downloads": OBJECTS_IN_MONTH}
    meta = materialization(venue, VENUE)
    assert (meta["objects"], meta["hours"], meta["parsed_now"], meta["cache_hits"]) == (
        OBJECTS_IN_MONTH, OBJECTS_IN_MONTH, OBJECTS_IN_MONTH, 0
    )
    assert meta["ndjson_bytes_parsed"] > meta["compressed_bytes"] > 0 and meta["parse_mb_per_s"] > 0
    assert (meta["first_hour"], meta["partial_month"]) == ("2025-09-01T00:00:00Z", False)
    assert meta["datasets"] == NODE_FILLS_BY_BLOCK

    for coin in COINS:  # each coin's step reads its rows of the parsed hours: no download, no parse
        result = run_raw(instance, coin)
        assert result.success, step_failures(result)
    assert counted == {"parses": OBJECTS_IN_MONTH, "downloads": OBJECTS_IN_MONTH}

    # The coins' months are what the source alone gives, from a cache of its own.
    store = LocalStore(stage / "store")
    alone = SourceConfig(hyperliquid_url=f"s3://{BUCKET}", cache_dir=stage / "alone-cache")
    client = make_client(aws_env, region=MOTO_REGION)
    for coin in COINS:
        expected = fetch_month(coin, MONTH, dest=stage / "alone" / coin, config=alone, s3_client=client)
        published = pl.read_parquet(store.path(raw_key(EXCHANGE.name, coin, MONTH)))
        assert expected.trade_count > 700 and published.equals(pl.read_parquet(expected.path)), coin

    # Preparing the month again reads it from the cache (nothing downloaded or parsed).
    again = run_venue(instance)
    assert again.success and materialization(again, VENUE)["cache_hits"] == OBJECTS_IN_MONTH
    assert counted["parses"] == 2 * OBJECTS_IN_MONTH  # the `alone` fetch parsed its own copy once


def test_a_coin_before_its_venue_month_fails_once_naming_the_step_to_run(
    stage: Path, instance: DagsterInstance, counted: Counter
) -> None:
    result = run_raw(instance, "BTC")
    assert not result.success and retries(result) == 0
    (message,) = step_failures(result)
    assert "hyperliquid_perps/venue_hours partition 2025-09-01" in message and "has not been prepared" in message
    assert counted == {}  # the coin's step touched no object
    assert not (stage / "store").exists() or not LocalStore(stage / "store").list("raw/")


def test_a_corrupt_hour_fails_the_venue_step_once_naming_the_object(
    stage: Path, instance: DagsterInstance, counted: Counter, bucket: Any
) -> None:
    key = hour_key(NODE_FILLS_BY_BLOCK, hyperliquid.month_bounds(MONTH)[0].replace(day=12, hour=7))
    original = bucket.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    try:
        corrupt_object(bucket, BUCKET, key, mode="truncate")
        result = run_venue(instance)
    finally:
        bucket.put_object(Bucket=BUCKET, Key=key, Body=original)
    assert not result.success and retries(result) == 0
    (message,) = step_failures(result)
    assert f"CorruptArchiveError: s3://{BUCKET}/{key}" in message and "LZ4 frame" in message
    # Nothing half-done for the coins to build from: they fail, naming the venue step.
    coin = run_raw(instance, "ETH")
    assert not coin.success and "has not been prepared" in step_failures(coin)[0]


def test_lineage_jobs_schedule_and_fan_out_are_as_documented(
    stage: Path, instance: DagsterInstance, counted: Counter
) -> None:
    graph = defs.resolve_asset_graph()
    assert {p.to_user_string() for p in graph.get(RAW).parent_keys} == {VENUE.to_user_string()}
    assert set(graph.get(VENUE).parent_keys) == set()
    venue_node = graph.get(VENUE)
    assert venue_node.partitions_def == EXCHANGE.month_partitions
    assert EXCHANGE.month_partitions.get_first_partition_key() == "2025-03-01"
    assert venue_node.group_name == "raw" and venue_node.tags["aperiodic/exchange"] == EXCHANGE.name
    mapping = defs.resolve_assets_def(RAW).get_partition_mapping(VENUE)
    assert isinstance(mapping, MultiToSingleDimensionPartitionMapping)
    assert mapping.partition_dimension_name == "month"
    # Only Hyperliquid's archive holds the whole venue in each object.
    for slug in ("binance_futures", "okx_perps"):
        assert set(graph.get(AssetKey([slug, "raw_trades"])).parent_keys) == set()

    venue_job = defs.resolve_job_def("hyperliquid_perps_venue_job")
    assert venue_job.partitions_def == EXCHANGE.month_partitions
    assert venue_job.tags["aperiodic/exchange"] == EXCHANGE.name
    flow_job = defs.resolve_job_def("hyperliquid_perps_flow_bars_job")
    assert VENUE not in flow_job.asset_layer.executable_asset_keys
    schedule = defs.get_schedule_def("hyperliquid_perps_monthly_schedule")
    assert schedule.job_name == "hyperliquid_perps_venue_job"
    tick = schedule.evaluate_tick(build_schedule_context(instance, scheduled_execution_time=datetime(2025, 10, 8, 6,
                                                                                                     tzinfo=UTC)))
    (venue_request,) = tick.run_requests
    assert venue_request.partition_key == f"{MONTH}-01" and venue_request.tags[FAN_OUT_TAG] == FAN_OUT_ALL

    # The schedule's venue run fans out to every registered coin of its month once it succeeded.
    sensor = defs.get_sensor_def("hyperliquid_perps_instruments_after_venue")
    scheduled = run_venue(instance, tags={FAN_OUT_TAG: FAN_OUT_ALL})
    assert scheduled.success
    requests = sensor(build_run_status_sensor_context(
        sensor_name=sensor.name, dagster_instance=instance, dagster_run=scheduled.dagster_run,
        dagster_event=scheduled.get_run_success_event(),
    ))
    assert all(isinstance(r, RunRequest) for r in requests)
    assert sorted(r.partition_key for r in requests) == sorted(
        str(flow_partition_key(EXCHANGE.name, coin, MONTH)) for coin in COINS
    )
    assert all(r.tags["aperiodic/exchange"] == EXCHANGE.name for r in requests)
    # A venue run someone started by hand (or `materialize`, which submits its coins itself) does not fan out.
    by_hand = run_venue(instance)
    skipped = sensor(build_run_status_sensor_context(
        sensor_name=sensor.name, dagster_instance=instance, dagster_run=by_hand.dagster_run,
        dagster_event=by_hand.get_run_success_event(),
    ))
    assert isinstance(skipped, SkipReason)


# --- the CLI's backfill, executed by a real webserver + daemon -----------------------------------------------------

DAEMON_TIMEOUT_S = 900


@pytest.fixture
def services(bucket: Any, aws_env: str, tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:  # noqa: F811
    """`dagster-webserver` and `dagster-daemon` on 127.0.0.1 with the project's instance config (SQLite, its
    storage created first: two processes creating it at once race on the migrations) and the environment pointing
    at the bucket, a fresh cache and a local store: (url, environment)."""
    with instance_environment("sqlite", tmp_path / "dagster_home") as instance_env:
        yield from _services(instance_env, tmp_path)


def _services(instance_env: dict[str, str], tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    env = {**os.environ, **instance_env,
           "APERIODIC_HYPERLIQUID_URL": f"s3://{BUCKET}", "APERIODIC_CACHE_DIR": str(tmp_path / "cache"),
           "APERIODIC_STORE": str(tmp_path / "store")}
    for name in ("APERIODIC_SOURCE", "APERIODIC_ALERT_WEBHOOK_URL"):
        env.pop(name, None)
    with running_dagster_services(env, tmp_path, workspace=REPO / "workspace.yaml") as (url, _processes):
        deadline = time.monotonic() + 180
        while True:  # the webserver answers before it has loaded the code location
            assert time.monotonic() < deadline, "the webserver did not load the code location"
            try:
                runs.find_repository(url, "aperiodic_pipelines")
                break
            except (runs.RunSetupError, requests.RequestException):
                time.sleep(1)
        yield url, env


def test_cli_backfill_runs_the_venue_month_before_the_coins_partitions(
    services: tuple[str, dict[str, str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, env = services
    monkeypatch.setenv("DAGSTER_HOME", env["DAGSTER_HOME"])  # the instance's config reads it
    backfill_id = runs.submit_backfill(url, EXCHANGE.name, "BTC", [MONTH])
    instance = DagsterInstance.from_config(env["DAGSTER_HOME"])
    try:
        deadline = time.monotonic() + DAEMON_TIMEOUT_S
        while (backfill := instance.get_backfill(backfill_id)).status.value == "REQUESTED":
            assert time.monotonic() < deadline, (tmp_path / "daemon.log").read_text()[-5000:]
            time.sleep(2)
        records = instance.get_run_records(RunsFilter(tags={"dagster/backfill": backfill_id}))
        assert backfill.status.value == "COMPLETED_SUCCESS", [(r.dagster_run.job_name, r.dagster_run.status)
                                                               for r in records]
        venue = [r for r in records if VENUE in (r.dagster_run.asset_selection or ())]
        coin = [r for r in records if RAW in (r.dagster_run.asset_selection or ())]
        assert len(venue) == 1 and len(coin) == 1, records
        assert venue[0].end_time <= coin[0].start_time  # the daemon waited for the venue month
        assert all(r.dagster_run.status.value == "SUCCESS" for r in records)
        assert all(r.dagster_run.tags["aperiodic/exchange"] == EXCHANGE.name for r in records)
        published = LocalStore(tmp_path / "store").list("flow/")
        assert {k.split("/")[1] for k in published if "/BTC/" in k} == {"exchange", "true"}
    finally:
        instance.dispose()
