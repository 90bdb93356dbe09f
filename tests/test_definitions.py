"""The code location loads, holds every asset/check/job/schedule/sensor, and its policies are in place."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime
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
from dagster._core.definitions.partitions.context import partition_loading_context
from dagster._core.run_coordinator import QueuedRunCoordinator

from aperiodic_pipelines.defs.definitions import GRAPHS, SETTINGS, build_code_location, defs
from aperiodic_pipelines.defs.partitions import (
    MAX_PARTITIONS_PER_ASSET,
    flow_partition_key,
    instrument_key,
    month_of,
    partitioned_exchange,
    split_partition_key,
)
from aperiodic_pipelines.defs.policies import NETWORK_RETRY, OWNERS
from aperiodic_pipelines.defs.resources import SourcesResource, StoreResource, store_resource
from aperiodic_pipelines.defs.seconds import MONTH_AND_PREVIOUS
from aperiodic_pipelines.domain.errors import SymbolError
from aperiodic_pipelines.domain.exchanges import EXCHANGES, EXCHANGES_BY_NAME
from aperiodic_pipelines.domain.months import previous_month
from aperiodic_pipelines.domain.settings import Settings, StoreSettings

REPO = Path(__file__).resolve().parents[1]
STAGES = ("raw_trades", "second_stats", "flow_bars_exchange", "published_flow_bars")
# The graphs' exchanges (domain exchange + source kind + partitions), as the code location built them.
GRAPH_EXCHANGES = [graph.exchange for graph in GRAPHS.values()]
BAR_CHECKS = {"schema_and_invariants", "dense_grid", "nonempty_month"}
RAW_CHECKS = {"canonical_schema", "nonempty_month", "duplicates_and_gaps", "complete_month"}


def _expected_assets(slug: str, with_true: bool) -> set[str]:
    # + the open month, day by day (defs/daily.py, tests/test_daily_definitions.py)
    return ({f"{slug}/{stage}" for stage in (*STAGES, "open_month_flow_bars")}
            | ({f"{slug}/flow_bars_true"} if with_true else set()))


def test_one_graph_per_exchange_with_its_checks_job_schedule_and_sensors() -> None:
    Definitions.validate_loadable(defs)
    graph = defs.resolve_asset_graph()
    # Only Hyperliquid's node data carries arrival times (with the archive sources): only it has `true` bars.
    assert {key.to_user_string() for key in graph.get_all_asset_keys()} == (
        _expected_assets("binance_futures", False) | _expected_assets("okx_perps", False)
        | _expected_assets("hyperliquid_perps", True) | {"hyperliquid_perps/venue_hours"}
    )
    checks = {(key.asset_key.to_user_string(), key.name) for key in graph.asset_check_keys}
    assert SETTINGS.sources.source == "archive"  # the test environment reads the exchanges' own archives
    for exchange in GRAPH_EXCHANGES:
        slug = exchange.slug
        variants = exchange.variants
        assert variants == (("exchange", "true") if exchange.name == "hyperliquid-perps" else ("exchange",))
        assert {c for c in checks if c[0].startswith(f"{slug}/")} == {
            *((f"{slug}/raw_trades", name) for name in RAW_CHECKS),
            *((f"{slug}/flow_bars_{t}", name) for t in variants for name in BAR_CHECKS),
            (f"{slug}/published_flow_bars", "matches_staged_and_index"),
            (f"{slug}/open_month_flow_bars", "days_on_time"),
            # Only Binance publishes its own klines to reconcile with, for exchange-time bars.
            *([(f"{slug}/flow_bars_exchange", "reconciles_with_exchange_klines")] if slug == "binance_futures" else []),
        }
        job = defs.resolve_job_def(f"{slug}_flow_bars_job")
        assert job.partitions_def == exchange.partitions
        assert job.tags["aperiodic/exchange"] == exchange.name
        assert job.executor_def.name == "in_process"  # a partition's steps are a chain; runs give parallelism
        schedule = defs.get_schedule_def(f"{slug}_monthly_schedule")
        assert schedule.default_status == DefaultScheduleStatus.RUNNING and schedule.cron_schedule == "0 6 8 * *"
    sensors = {name: defs.get_sensor_def(name) for name in (
        "check_failure_alert_on_success", "check_failure_alert_on_failure", "run_failure_alert", "overdue_months",
    )}
    assert all(s.default_status == DefaultSensorStatus.RUNNING for s in sensors.values())


def test_every_graph_stays_under_dagsters_partition_limit_for_500_instruments_over_8_years() -> None:
    instruments = [f"SYM{i:03d}USDT" for i in range(500)]
    with DagsterInstance.ephemeral() as instance:
        for exchange in GRAPH_EXCHANGES:
            instance.add_dynamic_partitions(exchange.instruments_name, instruments)
            year, mon = (int(p) for p in exchange.first_month.split("-"))
            eight_years_on = datetime(year + 8, mon, 2, tzinfo=UTC)
            with partition_loading_context(effective_dt=eight_years_on, dynamic_partitions_store=instance):
                count = exchange.partitions.get_num_partitions()
                first_month = exchange.month_partitions.get_first_partition_key()
            assert count == 500 * 8 * 12 < MAX_PARTITIONS_PER_ASSET, (exchange.name, count)
            # Months start at the exchange's first archive month, not at a global first month.
            assert first_month == f"{exchange.first_month}-01"
    assert {e.first_month for e in EXCHANGES_BY_NAME.values()} == {"2019-09", "2019-12", "2025-03"}


def test_lineage_groups_kinds_owners_tags_code_versions_and_freshness() -> None:
    graph = defs.resolve_asset_graph()
    parents = {key.to_user_string(): {p.to_user_string() for p in graph.get(key).parent_keys}
               for key in graph.get_all_asset_keys()}
    slug = "hyperliquid_perps"
    assert {k: v for k, v in parents.items() if k.startswith(slug)} == {
        f"{slug}/venue_hours": set(),  # every hourly object of a month, parsed once for all coins
        f"{slug}/raw_trades": {f"{slug}/venue_hours"},
        f"{slug}/second_stats": {f"{slug}/raw_trades"},
        f"{slug}/flow_bars_exchange": {f"{slug}/second_stats"},
        f"{slug}/flow_bars_true": {f"{slug}/second_stats"},
        f"{slug}/published_flow_bars": {f"{slug}/flow_bars_exchange", f"{slug}/flow_bars_true"},
        f"{slug}/open_month_flow_bars": set(),  # reads the exchange's daily files itself (defs/daily.py)
    }
    assert parents["binance_futures/published_flow_bars"] == {"binance_futures/flow_bars_exchange"}
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        exchange = next(e for e in GRAPH_EXCHANGES if e.slug == key.path[0])
        assert node.code_version, key
        venue_wide = key.path[-1] == "venue_hours"  # monthly: one partition per venue month
        open_month = key.path[-1] == "open_month_flow_bars"  # per instrument only (defs/daily.py)
        assert node.partitions_def == (exchange.month_partitions if venue_wide else
                                       exchange.instrument_partitions if open_month else exchange.partitions)
        assert {"polars", "parquet"} <= set(node.kinds), key
        assert node.group_name in ("raw", "flow_bars", "open_month")
        assert list(node.owners) == OWNERS and node.tags["aperiodic/exchange"] == exchange.name
        assert (node.freshness_policy is not None) == (key.path[-1] == "published_flow_bars")
    for spec in defs.resolve_assets_def(AssetKey(["okx_perps", "flow_bars_exchange"])).check_specs:
        assert spec.blocking and spec.partitions_def == GRAPHS["okx-perps"].exchange.partitions


def test_downloads_have_a_pool_per_exchange_and_exponential_jittered_retries() -> None:
    for exchange in EXCHANGES:
        raw = defs.resolve_assets_def(AssetKey([exchange.replace("-", "_"), "raw_trades"]))
        (op_def,) = [raw.op]
        assert op_def.pool == f"download_{exchange.replace('-', '_')}"
        assert op_def.retry_policy == NETWORK_RETRY
    assert NETWORK_RETRY.max_retries == 3
    assert NETWORK_RETRY.backoff == Backoff.EXPONENTIAL and NETWORK_RETRY.jitter == Jitter.PLUS_MINUS


def test_instrument_keys_are_native_ids_and_reject_bad_input() -> None:
    multi = flow_partition_key("binance-futures", "BTCUSDT", "2024-02")
    assert str(multi) == "BTCUSDT|2024-02-01"
    assert multi == MultiPartitionKey({"instrument": "BTCUSDT", "month": "2024-02-01"})
    assert split_partition_key(multi) == split_partition_key(str(multi)) == ("BTCUSDT", "2024-02")
    assert instrument_key("hyperliquid-perps", "xyz:AAPL") == "xyz:AAPL"
    with pytest.raises(SymbolError, match="unknown exchange 'kraken'"):
        instrument_key("kraken", "XBTUSD")
    for bad in ("BTC|USDT", "a,b", "x[1]", ""):
        with pytest.raises(SymbolError, match="cannot be part of a partition key"):
            instrument_key("okx-perps", bad)
    assert month_of("2024-02-01") == "2024-02" and previous_month("2024-01") == "2023-12"
    with pytest.raises(ValueError, match="2024-13"):
        month_of("2024-13")
    assert set(GRAPHS) == set(EXCHANGES)


def test_second_stats_reads_this_and_the_previous_raw_month() -> None:
    exchange = partitioned_exchange("binance-futures")
    partitions = exchange.partitions

    def upstream(month_key: str) -> list[str]:
        child = MultiPartitionKey({"instrument": "BTCUSDT", "month": month_key})
        with DagsterInstance.ephemeral() as instance:
            instance.add_dynamic_partitions(exchange.instruments_name, ["BTCUSDT"])
            result = MONTH_AND_PREVIOUS.get_upstream_mapped_partitions_result_for_partitions(
                partitions.subset_with_partition_keys([child]), partitions, partitions, dynamic_partitions_store=instance
            )
        return sorted(str(k) for k in result.partitions_subset.get_partition_keys())

    assert upstream("2024-02-01") == ["BTCUSDT|2024-01-01", "BTCUSDT|2024-02-01"]
    assert upstream("2019-09-01") == ["BTCUSDT|2019-09-01"]  # first month: no previous partition


def test_store_resource_reads_the_settings_and_keeps_credentials_as_env_vars(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # A bare resource (tests, scripts) reads the settings when the run starts.
    monkeypatch.setenv("APERIODIC_STORE", str(tmp_path / "store"))
    assert StoreResource().resolved_uri() == str(tmp_path / "store")
    monkeypatch.delenv("APERIODIC_STORE")
    assert StoreResource().resolved_uri() == "./data"
    secret = "wJalrXUtnFEMI-not-a-real-secret"
    for name, value in {"AWS_ACCESS_KEY_ID": "AKIAEXAMPLE", "AWS_SECRET_ACCESS_KEY": secret,
                        "AWS_ENDPOINT_URL_S3": "http://127.0.0.1:9"}.items():
        monkeypatch.setenv(name, value)
    resource = store_resource(StoreSettings(uri="s3://bucket/prefix"))
    assert resource.uri == "s3://bucket/prefix" and resource.is_s3()
    assert resource.s3 is not None and resource.s3.endpoint_url == "http://127.0.0.1:9"
    assert resource.s3.aws_secret_access_key == EnvVar("AWS_SECRET_ACCESS_KEY")
    assert secret not in repr(resource) and "AKIAEXAMPLE" not in repr(resource)
    local = store_resource(StoreSettings(uri=str(tmp_path)))
    assert local.s3 is None and not local.is_s3()


def test_the_code_location_follows_one_settings_object() -> None:
    """Variants, resources, kinds and alerts come from the Settings passed in, not from import-time reads."""
    key = "tardis-key-not-a-real-secret"
    settings = Settings.from_env({
        "APERIODIC_SOURCE": "tardis", "APERIODIC_TARDIS_URL": "/srv/tardis", "APERIODIC_TARDIS_API_KEY": key,
        "APERIODIC_STORE": "s3://bucket/prefix", "APERIODIC_CACHE_DIR": "/srv/cache",
        "APERIODIC_DAGSTER_URL": "http://dagster.example:3000/",
    })
    location = build_code_location(settings)
    keys = {k.to_user_string() for k in location.defs.resolve_asset_graph().get_all_asset_keys()}
    # Tardis-format files carry arrival times for every exchange, and are per symbol (no venue-wide step).
    assert keys == {f"{slug}/{stage}" for slug in ("binance_futures", "okx_perps", "hyperliquid_perps")
                    for stage in (*STAGES, "flow_bars_true", "open_month_flow_bars")}
    assert all(graph.exchange.variants == ("exchange", "true") for graph in location.graphs.values())
    assert "s3" in location.defs.resolve_assets_def(AssetKey(["okx_perps", "raw_trades"])).specs_by_key[
        AssetKey(["okx_perps", "raw_trades"])].kinds
    sources = location.defs.resources["sources"]
    assert isinstance(sources, SourcesResource) and sources.source == "tardis" and sources.cache_dir == "/srv/cache"
    assert sources.tardis_api_key == EnvVar("APERIODIC_TARDIS_API_KEY") and key not in repr(sources)
    assert location.defs.resources["store"].uri == "s3://bucket/prefix"
    assert key not in repr(settings)
    # The graphs of the default settings are untouched: nothing was decided at import time.
    assert "binance_futures/flow_bars_true" not in {
        k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()
    }


def test_deploy_files_configure_the_instance(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    (home / "dagster.yaml").write_text((REPO / "dagster.yaml").read_text())
    instance = DagsterInstance.from_config(str(home))
    try:
        # Dagster's queued coordinator, adding the exchange tag to every run (aperiodic_pipelines.operator.coordinator).
        assert type(instance.run_coordinator).__name__ == "ExchangeTaggingRunCoordinator"
        assert isinstance(instance.run_coordinator, QueuedRunCoordinator)
        assert instance.run_retries_enabled and instance.run_retries_max_retries == 2
        assert instance.run_monitoring_enabled
        config = instance.get_concurrency_config()
        assert config.run_queue_config.max_concurrent_runs == 4
        assert config.run_queue_config.tag_concurrency_limits[0]["key"] == "aperiodic/exchange"
        assert config.pool_config.default_pool_limit == 3  # >= the per-exchange run limit: never holds a run back
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
