"""The code location loads, holds every asset/check/job/schedule/sensor, and its policies are in place."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from dagster import (
    AssetKey,
    Backoff,
    DagsterInstance,
    DefaultScheduleStatus,
    DefaultSensorStatus,
    Definitions,
    EnvVar,
    Jitter,
    MultiPartitionKey,
)

from aperiodic_pipelines.defs.assets import DOWNLOAD_OPS, MONTH_AND_PREVIOUS, NETWORK_RETRY
from aperiodic_pipelines.defs.definitions import defs
from aperiodic_pipelines.defs.partitions import (
    EXCHANGES,
    flow_partitions,
    instrument_key,
    month_of,
    parse_instrument_key,
    previous_month,
    split_partition_key,
)
from aperiodic_pipelines.defs.resources import StoreResource, store_is_s3, store_resource_from_env
from aperiodic_pipelines.errors import SymbolError

REPO = Path(__file__).resolve().parents[1]
ASSET_NAMES = {"raw_trades", "second_stats", "flow_bars_exchange", "flow_bars_true", "published_flow_bars"}
CHECK_NAMES = {"schema_and_invariants", "dense_grid", "nonempty_month"}


def test_definitions_load_with_every_asset_check_job_schedule_and_sensor() -> None:
    Definitions.validate_loadable(defs)
    graph = defs.resolve_asset_graph()
    assert {key.to_user_string() for key in graph.get_all_asset_keys()} == ASSET_NAMES
    assert {(key.asset_key.to_user_string(), key.name) for key in graph.asset_check_keys} == {
        (f"flow_bars_{t}", name) for t in ("exchange", "true") for name in CHECK_NAMES
    }
    job = defs.resolve_job_def("flow_bars_job")
    assert job.partitions_def == flow_partitions
    assert job.executor_def.name == "in_process"  # a partition's steps are a chain; runs give parallelism
    assert defs.get_schedule_def("monthly_flow_bars_schedule").default_status == DefaultScheduleStatus.RUNNING
    sensors = {name: defs.get_sensor_def(name) for name in (
        "check_failure_alert_on_success", "check_failure_alert_on_failure", "run_failure_alert"
    )}
    assert all(s.default_status == DefaultSensorStatus.RUNNING for s in sensors.values())


def test_lineage_groups_kinds_code_versions_and_blocking_checks() -> None:
    graph = defs.resolve_asset_graph()
    parents = {key.to_user_string(): {p.to_user_string() for p in graph.get(key).parent_keys}
               for key in graph.get_all_asset_keys()}
    assert parents == {
        "raw_trades": set(),
        "second_stats": {"raw_trades"},
        "flow_bars_exchange": {"second_stats"},
        "flow_bars_true": {"second_stats"},
        "published_flow_bars": {"flow_bars_exchange", "flow_bars_true"},
    }
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        assert node.code_version, key
        assert node.partitions_def == flow_partitions
        assert {"polars", "parquet"} <= set(node.kinds), key
        assert node.group_name in ("raw", "flow_bars")
    for spec in defs.resolve_assets_def("flow_bars_exchange").check_specs:
        assert spec.blocking and spec.partitions_def == flow_partitions


def test_downloads_have_a_pool_per_exchange_and_exponential_jittered_retries() -> None:
    assert set(DOWNLOAD_OPS) == set(EXCHANGES)
    for exchange, op_def in DOWNLOAD_OPS.items():
        assert op_def.pool == f"download_{exchange.replace('-', '_')}"
        assert op_def.retry_policy == NETWORK_RETRY
    assert NETWORK_RETRY.max_retries == 3
    assert NETWORK_RETRY.backoff == Backoff.EXPONENTIAL and NETWORK_RETRY.jitter == Jitter.PLUS_MINUS


def test_instrument_keys_round_trip_and_reject_bad_input() -> None:
    key = instrument_key("binance-futures", "perpetual-BTC-USDT:USDT")
    assert key == "binance-futures:perpetual-BTC-USDT:USDT"
    assert parse_instrument_key(key) == ("binance-futures", "perpetual-BTC-USDT:USDT")
    hip3 = instrument_key("hyperliquid-perps", "perpetual-XYZ:AAPL-USDC:USDC")
    assert parse_instrument_key(hip3) == ("hyperliquid-perps", "perpetual-XYZ:AAPL-USDC:USDC")
    multi = MultiPartitionKey({"instrument": key, "month": "2024-02-01"})
    assert str(multi) == f"{key}|2024-02-01"
    assert split_partition_key(multi) == split_partition_key(str(multi)) == (
        "binance-futures", "perpetual-BTC-USDT:USDT", "2024-02"
    )
    with pytest.raises(SymbolError, match="unknown exchange 'kraken'"):
        instrument_key("kraken", "perpetual-BTC-USD:BTC")
    for bad in ("perpetual-BTC|USDT", "a,b", "x[1]", ""):
        with pytest.raises(SymbolError, match="cannot be part of a partition key"):
            instrument_key("okx-perps", bad)
    with pytest.raises(SymbolError, match="is not '{exchange}:{atlas_symbol}'"):
        parse_instrument_key("binance-futures")
    assert month_of("2024-02-01") == "2024-02" and previous_month("2024-01") == "2023-12"
    with pytest.raises(ValueError, match="2024-13"):
        month_of("2024-13")


def test_second_stats_reads_this_and_the_previous_raw_month() -> None:
    graph = defs.resolve_asset_graph()
    raw = graph.get(AssetKey("raw_trades")).partitions_def
    stats = graph.get(AssetKey("second_stats")).partitions_def
    instrument = "binance-futures:perpetual-BTC-USDT:USDT"

    def upstream(month_key: str) -> list[str]:
        child = MultiPartitionKey({"instrument": instrument, "month": month_key})
        with DagsterInstance.ephemeral() as instance:
            instance.add_dynamic_partitions("instruments", [instrument])
            result = MONTH_AND_PREVIOUS.get_upstream_mapped_partitions_result_for_partitions(
                stats.subset_with_partition_keys([child]), stats, raw, dynamic_partitions_store=instance
            )
        return sorted(str(k) for k in result.partitions_subset.get_partition_keys())

    assert upstream("2024-02-01") == [f"{instrument}|2024-01-01", f"{instrument}|2024-02-01"]
    assert upstream("2019-09-01") == [f"{instrument}|2019-09-01"]  # first month: no previous partition


def test_store_resource_reads_the_environment_and_keeps_credentials_as_env_vars(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("APERIODIC_STORE", str(tmp_path / "store"))
    assert StoreResource().resolved_uri() == str(tmp_path / "store")
    monkeypatch.delenv("APERIODIC_STORE")
    assert StoreResource().resolved_uri() == "./data"
    secret = "wJalrXUtnFEMI-not-a-real-secret"
    env = {"APERIODIC_STORE": "s3://bucket/prefix", "AWS_ACCESS_KEY_ID": "AKIAEXAMPLE",
           "AWS_SECRET_ACCESS_KEY": secret, "AWS_ENDPOINT_URL_S3": "http://127.0.0.1:9"}
    resource = store_resource_from_env(env)
    assert resource.uri == EnvVar("APERIODIC_STORE")
    assert resource.s3 is not None and resource.s3.endpoint_url == "http://127.0.0.1:9"
    assert resource.s3.aws_secret_access_key == EnvVar("AWS_SECRET_ACCESS_KEY")
    assert secret not in repr(resource) and "AKIAEXAMPLE" not in repr(resource)
    # Assets carry the `s3` kind when the deployment's store is S3.
    assert store_is_s3(env) and not store_is_s3({"APERIODIC_STORE": "/srv/data"}) and not store_is_s3({})


def test_deploy_files_configure_the_instance(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    (home / "dagster.yaml").write_text((REPO / "dagster.yaml").read_text())
    instance = DagsterInstance.from_config(str(home))
    try:
        assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
        assert instance.run_retries_enabled and instance.run_retries_max_retries == 2
        assert instance.run_monitoring_enabled
        config = instance.get_concurrency_config()
        assert config.run_queue_config.max_concurrent_runs == 4
        assert config.run_queue_config.tag_concurrency_limits[0]["key"] == "aperiodic/exchange"
        assert config.pool_config.default_pool_limit == 2
        assert instance.get_settings("telemetry")["enabled"] is False
        assert str(instance.run_storage._conn_string).find(str(home)) >= 0  # SQLite under DAGSTER_HOME
    finally:
        instance.dispose()
    workspace = yaml.safe_load((REPO / "workspace.yaml").read_text())
    module = workspace["load_from"][0]["python_module"]
    assert module["module_name"] == "aperiodic_pipelines.defs.definitions" and module["attribute"] == "defs"


def test_definitions_load_through_the_dagster_cli(tmp_path: Path) -> None:
    """What the webserver and daemon do: load the workspace file in a fresh process."""
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path)}
    (tmp_path / "dagster.yaml").write_text((REPO / "dagster.yaml").read_text())
    done = subprocess.run(
        [sys.executable, "-m", "dagster", "definitions", "validate", "-w", str(REPO / "workspace.yaml")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=180,
    )
    assert done.returncode == 0, done.stdout + done.stderr
