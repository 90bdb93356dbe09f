"""One backfill over many instruments: the operator's submission registers them in one request and launches one
backfill of every instrument x month (what a universe-wide backfill of thousands of partitions needs).

A real `dagster-webserver` (and daemon) on 127.0.0.1 with the project's `dagster.yaml` (SQLite), its run limit set
to 0 so that no run starts: the test is about what is submitted, not executed.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from aperiodic_pipelines.defs.partitions import flow_partition_key
from aperiodic_pipelines.demo import patched_environ
from aperiodic_pipelines.operator.backfill import graphql, submit_backfill
from tests.postgres_fixtures import create_instance_storage, running_dagster_services

REPO = Path(__file__).resolve().parents[1]
EXCHANGE = "binance-futures"
MONTHS = ["2024-01", "2024-02"]
BACKFILL = """
query($id: String!) {
  partitionBackfillOrError(backfillId: $id) { ... on PartitionBackfill { partitionNames title tags { key value } } }
}"""


def test_one_backfill_registers_and_covers_every_instrument_and_month(tmp_path: Path) -> None:
    home = tmp_path / "dagster_home"
    home.mkdir()
    config = yaml.safe_load((REPO / "dagster.yaml").read_text())
    config["concurrency"]["runs"]["max_concurrent_runs"] = 0  # nothing starts
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))
    env = {"DAGSTER_HOME": str(home), "APERIODIC_STORE": str(tmp_path / "store")}
    create_instance_storage(env)
    said: list[str] = []
    with (
        patched_environ(env),
        running_dagster_services(env, tmp_path, workspace=REPO / "workspace.yaml") as (url, _processes),
    ):
        first = submit_backfill(url, EXCHANGE, ["BTCUSDT"], MONTHS[:1], say=said.append)
        second = submit_backfill(url, EXCHANGE, ["BTCUSDT", "ETHUSDT", "SOLUSDT"], MONTHS, say=said.append)
        backfill = graphql(url, BACKFILL, {"id": second})["partitionBackfillOrError"]

        from dagster import DagsterInstance

        with DagsterInstance.get() as instance:
            registered = set(instance.get_dynamic_partitions("binance_futures_instruments"))

    assert first != second
    expected = {str(flow_partition_key(EXCHANGE, native, month))
                for native in ("BTCUSDT", "ETHUSDT", "SOLUSDT") for month in MONTHS}
    assert set(backfill["partitionNames"]) == expected and len(backfill["partitionNames"]) == 6
    assert backfill["title"] == f"{EXCHANGE} 3 instruments 2024-01..2024-02"
    assert {"key": "aperiodic/exchange", "value": EXCHANGE} in backfill["tags"]
    assert registered == {"BTCUSDT", "ETHUSDT", "SOLUSDT"}
    # Each instrument is said to be new exactly once: BTCUSDT by the first submission, the others by the second.
    assert [line.split()[3] for line in said] == ["BTCUSDT", "ETHUSDT", "SOLUSDT"], said
