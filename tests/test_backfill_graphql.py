"""A backfill submitted through Dagster's GraphQL API to a running webserver + daemon publishes every partition.

Everything is real and local: `dagster-webserver` and `dagster-daemon` subprocesses on 127.0.0.1 with a temporary
DAGSTER_HOME configured by `dagster.yaml` (SQLite) or `dagster.postgres.yaml` (a real PostgreSQL server started by
the test), the archive mirror on 127.0.0.1, a local store. Two partitions.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from aperiodic_pipelines.defs.partitions import EXCHANGES_BY_NAME, flow_partition_key
from aperiodic_pipelines.defs.raw import raw_sources_key
from aperiodic_pipelines.mirror.archives import write_okx_month
from aperiodic_pipelines.mirror.http import ArchiveMirror
from aperiodic_pipelines.storage import LocalStore, raw_key
from aperiodic_pipelines.synthetic import generate_tape
from tests.binance_stage import (
    EXCHANGE,
    MONTHS,
    NATIVE,
    PREFIX,
    assert_published_months,
    write_binance_months,
)
from tests.postgres_fixtures import (
    INSTANCE_KINDS,
    instance_environment,
    running_dagster_services,
    stored_run_ids,
)

REPO = Path(__file__).resolve().parents[1]
STARTUP_TIMEOUT_S = 180
BACKFILL_TIMEOUT_S = 600
FINAL_STATUSES = {"COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "CANCELED"}
FINAL_RUN_STATUSES = {"SUCCESS", "FAILURE", "CANCELED"}
OKX_NATIVE = "BTC-USDT-SWAP"
REPOSITORY = {"repositoryLocationName": "aperiodic_pipelines", "repositoryName": "__repository__"}

ADD_PARTITION = """
mutation($repo: RepositorySelector!, $name: String!, $key: String!) {
  addDynamicPartition(repositorySelector: $repo, partitionsDefName: $name, partitionKey: $key) {
    __typename
    ... on PythonError { message }
  }
}"""
LAUNCH_BACKFILL = """
mutation($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message stack }
  }
}"""
BACKFILL_STATUS = """
query($id: String!) {
  partitionBackfillOrError(backfillId: $id) {
    __typename
    ... on PartitionBackfill { status numCancelable }
    ... on PythonError { message }
  }
}"""
BACKFILL_RUNS = """
query($id: String!) {
  runsOrError(filter: {tags: [{key: "dagster/backfill", value: $id}]}) {
    ... on Runs { results { runId status tags { key value } } }
  }
}"""


def _graphql(url: str, query: str, variables: dict) -> dict:
    response = requests.post(f"{url}/graphql", json={"query": query, "variables": variables}, timeout=60)
    response.raise_for_status()
    body = response.json()
    assert "errors" not in body, body
    return body["data"]


def _wait_for(predicate, timeout_s: float, what: str, processes: list[subprocess.Popen]) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for process in processes:
            assert process.poll() is None, f"{process.args[2:4]} exited with {process.returncode} while {what}"
        if predicate():
            return
        time.sleep(2)
    raise AssertionError(f"timed out after {timeout_s}s {what}")


@pytest.fixture(params=INSTANCE_KINDS)
def dagster_services(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict]:
    """Webserver + daemon with a fresh instance (SQLite or Postgres), pointed at a local mirror and store;
    stopped afterwards."""
    counts = write_binance_months(tmp_path / "archives")
    # One OKX month (contracts of 0.01 BTC) for the UI-style asset backfill of another exchange.
    okx_tape = generate_tape(MONTHS[0], 500, seed=21, start_price=40_000.0, lot=0.01)
    write_okx_month(tmp_path / "archives" / "okx", OKX_NATIVE, MONTHS[0], okx_tape)
    with (
        instance_environment(request.param, tmp_path / "dagster_home") as instance_env,
        ArchiveMirror(tmp_path / "archives") as mirror,
    ):
        env = {
            **os.environ,
            **instance_env,
            "APERIODIC_STORE": str(tmp_path / "store"),
            "APERIODIC_BINANCE_URL": mirror.url,
            "APERIODIC_OKX_URL": f"{mirror.url}/okx",
            "APERIODIC_CACHE_DIR": str(tmp_path / "cache"),
            "APERIODIC_HTTP_BACKOFF": "0.01",
        }
        env.pop("APERIODIC_ALERT_WEBHOOK_URL", None)
        with running_dagster_services(env, tmp_path, workspace=REPO / "workspace.yaml",
                              startup_timeout_s=STARTUP_TIMEOUT_S) as (url, processes):
            yield {"url": url, "store": LocalStore(tmp_path / "store"), "counts": counts,
                   "processes": processes, "logs": tmp_path,
                   "instance_kind": request.param, "instance_env": instance_env}


def _launch(url: str, params: dict) -> str:
    launched = _graphql(url, LAUNCH_BACKFILL, {"params": params})["launchPartitionBackfill"]
    assert launched["__typename"] == "LaunchBackfillSuccess", launched
    return launched["backfillId"]


def _wait_for_backfill(services: dict, backfill_id: str, expected_runs: int, *, until_completed: bool = True) -> list[dict]:
    """The backfill's runs once they have finished (and, with `until_completed`, the backfill is marked done)."""
    url, status, runs = services["url"], {}, []

    def finished() -> bool:
        status.update(_graphql(url, BACKFILL_STATUS, {"id": backfill_id})["partitionBackfillOrError"])
        runs[:] = _graphql(url, BACKFILL_RUNS, {"id": backfill_id})["runsOrError"]["results"]
        runs_done = len(runs) >= expected_runs and all(r["status"] in FINAL_RUN_STATUSES for r in runs)
        return runs_done and (not until_completed or status.get("status") in FINAL_STATUSES)

    try:
        _wait_for(finished, BACKFILL_TIMEOUT_S, "waiting for the backfill", services["processes"])
    except AssertionError:
        print((services["logs"] / "daemon.log").read_text()[-5000:])
        raise
    assert not until_completed or status["status"] in ("COMPLETED", "COMPLETED_SUCCESS"), (status, runs)
    assert runs and all(run["status"] == "SUCCESS" for run in runs), runs
    return runs


@pytest.mark.slow
def test_backfills_through_graphql_publish_every_partition_and_carry_the_exchange_tag(dagster_services: dict) -> None:
    url = dagster_services["url"]
    for exchange, native in ((EXCHANGE, NATIVE), ("okx-perps", OKX_NATIVE)):
        added = _graphql(url, ADD_PARTITION, {
            "repo": REPOSITORY, "name": EXCHANGES_BY_NAME[exchange].instruments_name, "key": native,
        })["addDynamicPartition"]
        assert added["__typename"] == "AddDynamicPartitionSuccess", added

    partitions = [str(flow_partition_key(EXCHANGE, NATIVE, month)) for month in MONTHS]
    # Two backfills side by side, neither given tags. What the UI's asset-graph "Materialize → backfill" sends
    # (an asset selection and partitions; here OKX's raw trades, so it does not queue behind the binance runs),
    # and a backfill of binance-futures' job: exactly these partitions.
    asset_backfill = _launch(url, {
        "assetSelection": [{"path": ["okx_perps", "raw_trades"]}],
        "partitionNames": [str(flow_partition_key("okx-perps", OKX_NATIVE, MONTHS[0]))],
        "title": "UI asset backfill",
    })
    job_backfill = _launch(url, {
        "selector": {"partitionSetName": f"{PREFIX}_flow_bars_job_partition_set", "repositorySelector": REPOSITORY},
        "partitionNames": partitions,
        "title": "test backfill",
    })
    # Its run, not the daemon's next pass marking it complete, is what this test is about.
    asset_runs = _wait_for_backfill(dagster_services, asset_backfill, expected_runs=1, until_completed=False)
    runs = _wait_for_backfill(dagster_services, job_backfill, expected_runs=len(partitions))
    # The per-exchange run limit applies to both: every run carries its exchange's tag (the run coordinator's).
    assert all({"key": "aperiodic/exchange", "value": "okx-perps"} in run["tags"] for run in asset_runs)
    assert all({"key": "aperiodic/exchange", "value": EXCHANGE} in run["tags"] for run in runs)
    # One run per partition (no backfill policy), each tagged with its partition.
    run_partitions = {tag["value"] for run in runs for tag in run["tags"] if tag["key"] == "dagster/partition"}
    assert run_partitions == set(partitions)
    # The runs are recorded in the configured storage (the Postgres server, or SQLite under DAGSTER_HOME).
    stored = stored_run_ids(dagster_services["instance_kind"], dagster_services["instance_env"])
    assert {run["runId"] for run in runs + asset_runs} <= stored
    store = dagster_services["store"]
    okx_raw = [raw_key("okx-perps", OKX_NATIVE, MONTHS[0]), raw_sources_key("okx-perps", OKX_NATIVE, MONTHS[0])]
    assert all(store.exists(key) for key in okx_raw)
    for key in okx_raw:  # the binance graph's objects, exactly
        store.delete(key)
    assert_published_months(store, dagster_services["counts"])
