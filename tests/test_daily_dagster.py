"""The open month in Dagster (issue 15): the daily asset on a real instance publishes each complete day whose raw
inputs are out, every row equal bit for bit to the monthly computation (both variants, all 8 intervals); a second
run has nothing new; a day missing upstream makes later days wait and, after the deadline, the overdue sensor
alerts and records the failing `days_on_time` check of that instrument's partition.

Read from Tardis-format daily files (the true variant needs arrival times): files dated by arrival day, so raw day
d is complete once file d+1 is out, and the true variant of d once raw day d+1 is.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import polars as pl
import pytest
from dagster import DagsterInstance, SkipReason, build_sensor_context, materialize

from aperiodic_pipelines.defs.daily import (
    build_daily_graph,
    daily_asset_key,
    latest_due_day,
)
from aperiodic_pipelines.defs.freshness import evaluate_overdue_days
from aperiodic_pipelines.defs.partitions import partitioned_exchange
from aperiodic_pipelines.defs.resources import SourcesResource, StoreResource
from aperiodic_pipelines.domain.intervals import INTERVAL_SECONDS, INTERVALS
from aperiodic_pipelines.domain.layout import daily_flow_key
from aperiodic_pipelines.domain.months import day_bounds_us, days_of_month
from aperiodic_pipelines.domain.settings import AlertSettings, DailySettings
from aperiodic_pipelines.flow import compute_flow_bars
from aperiodic_pipelines.mirror.archives import write_tardis_days
from aperiodic_pipelines.storage import LocalStore
from aperiodic_pipelines.storage.daily import last_complete_day, published_days
from aperiodic_pipelines.synthetic import generate_tape
from tests.test_flow_daily import assert_same_bits

pytestmark = pytest.mark.slow  # real Dagster runs

EXCHANGE, NATIVE = "binance-futures", "BTCUSDT"
PREVIOUS, MONTH = "2023-12", "2024-01"
AS_OF = "2024-01-08"  # "today": arrival-day files 2024-01-01..07 are out
FILES_OUT = {f"2024-01-{d:02d}" for d in range(1, 8)}
DAILY = DailySettings()


@pytest.fixture(scope="module")
def tapes() -> tuple[pl.DataFrame, pl.DataFrame]:
    previous = generate_tape(PREVIOUS, 2_500, seed=31, with_arrival=True)
    current = generate_tape(MONTH, 2_500, seed=32, with_arrival=True,
                            start_price=float(previous["price"][-1]), first_trade_id=int(previous["trade_id"].max()) + 1)
    return previous, current


def _write_files(root: Path, tapes: tuple[pl.DataFrame, pl.DataFrame], days: set[str]) -> None:
    whole = pl.concat(tapes)
    write_tardis_days(root, EXCHANGE, NATIVE, PREVIOUS, whole, days=set(days_of_month(PREVIOUS)) | {"2023-11-30"})
    write_tardis_days(root, EXCHANGE, NATIVE, MONTH, whole, days=days)


def _run(instance: DagsterInstance, store_dir: Path, root: Path, tmp: Path, as_of: str = AS_OF):
    exchange = partitioned_exchange(EXCHANGE, "tardis")
    graph = build_daily_graph(exchange, {"parquet"}, DAILY)
    op = "__".join(daily_asset_key(exchange.slug).path)
    result = materialize(
        [graph.asset], instance=instance, partition_key=NATIVE,
        resources={"store": StoreResource(uri=str(store_dir)),
                   "sources": SourcesResource(source="tardis", tardis_url=str(root), cache_dir=str(tmp / "cache"))},
        run_config={"ops": {op: {"config": {"as_of": as_of}}}},
    )
    assert result.success
    (materialization,) = result.asset_materializations_for_node(op)
    metadata = {k: getattr(v, "value", v) for k, v in materialization.metadata.items()}
    (check,) = result.get_asset_check_evaluations()
    return metadata, check


@pytest.fixture
def instance() -> Iterator[DagsterInstance]:
    with DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions("binance_futures_instruments", [NATIVE])
        yield instance


def test_daily_runs_publish_complete_days_equal_to_the_monthly_rows(tmp_path, tapes, instance) -> None:
    root, store_dir = tmp_path / "tardis", tmp_path / "store"
    _write_files(root, tapes, FILES_OUT)
    metadata, check = _run(instance, store_dir, root, tmp_path)
    # exchange time: day d needs files d and d+1 (through the 6th); true: raw day d+1 too (through the 5th)
    expected_days = [f"2024-01-{d:02d}" for d in range(1, 6)]
    store = LocalStore(store_dir)
    assert published_days(store, EXCHANGE, NATIVE, MONTH) == expected_days
    assert metadata["published_now"] == ", ".join(expected_days)
    assert metadata["complete_through"] == "2024-01-05" and metadata["days_published"] == 5
    assert metadata["waiting_for"] == "2024-01-06" and metadata["skipped_upstream"] is False
    assert check.passed  # as of the 8th 00:00, days through the 5th are due (36 h after each ends): on time

    previous, current = tapes
    for timestamp in ("exchange", "true"):
        monthly = compute_flow_bars(current, previous, month=MONTH, timestamp=timestamp, intervals=INTERVALS)
        for interval in INTERVALS:
            for day in expected_days:
                got = pl.read_parquet(store.path(daily_flow_key(timestamp, EXCHANGE, interval, NATIVE, day)))
                start, end = (pl.lit(us, pl.Int64).cast(pl.Datetime("us")) for us in day_bounds_us(day))
                want = monthly[interval].filter((pl.col("time") >= start) & (pl.col("time") < end))
                assert got.height == 86_400 // INTERVAL_SECONDS[interval]  # dense for the day
                assert_same_bits(got, want, f"{timestamp} {interval} {day}")

    again, check = _run(instance, store_dir, root, tmp_path)
    assert again["published_now"] == "nothing new" and again["complete_through"] == "2024-01-05"
    assert check.passed


def _serve_webhook() -> tuple[ThreadingHTTPServer, list[dict]]:
    received: list[dict] = []

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server naming
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, received


def test_a_day_missing_upstream_makes_later_days_wait_and_is_reported_after_the_deadline(
    tmp_path, tapes, instance
) -> None:
    root, store_dir = tmp_path / "tardis", tmp_path / "store"
    _write_files(root, tapes, FILES_OUT - {"2024-01-04"})  # upstream skipped the 4th; later files are out
    metadata, check = _run(instance, store_dir, root, tmp_path)
    store = LocalStore(store_dir)
    # the true variant of the 2nd needs raw day 3, which needs file 4: the 2nd and every later day wait, although
    # files 5..7 are out
    assert published_days(store, EXCHANGE, NATIVE, MONTH) == ["2024-01-01"]
    assert metadata["waiting_for"] == "2024-01-02" and metadata["skipped_upstream"] is True
    assert "2024-01-04" in metadata["upstream_missing"]
    assert not store.exists(daily_flow_key("exchange", EXCHANGE, "1d", NATIVE, "2024-01-02"))
    assert not check.passed  # as of the 8th the 2nd..5th are due

    server, received = _serve_webhook()
    try:
        alerts = AlertSettings(webhook_url=f"http://127.0.0.1:{server.server_port}/hook")
        before_deadline = datetime(2024, 1, 3, 11, tzinfo=UTC)  # the 1st is due at the 3rd 12:00
        assert latest_due_day(before_deadline, DAILY) == "2023-12-31"
        context = build_sensor_context(instance=instance)
        assert isinstance(evaluate_overdue_days(context, store, before_deadline, DAILY, alerts), SkipReason)
        assert received == []
        after = datetime(2024, 1, 4, 13, tzinfo=UTC)  # the 2nd was due at the 4th 12:00
        result = evaluate_overdue_days(context, store, after, DAILY, alerts)
        assert len(received) == 1
        text = received[0]["text"]
        assert "binance-futures BTCUSDT: published through 2024-01-01; due through 2024-01-02" in text
        assert "2024-01-02 skipped upstream" in text and "2024-01-04" in text
        (request,) = result.run_requests
        assert (request.partition_key, request.job_name) == (NATIVE, "binance_futures_daily_flow_bars_job")
        again = evaluate_overdue_days(build_sensor_context(instance=instance, cursor=result.cursor), store, after,
                                      DAILY, alerts)
        assert isinstance(again, SkipReason) and len(received) == 1  # once per instrument and due day
    finally:
        server.shutdown()
    # the requested run: upstream still lacks the file, so its check fails with the alert's words in the UI
    metadata, check = _run(instance, store_dir, root, tmp_path, as_of="2024-01-05")
    assert metadata["published_now"] == "nothing new"
    assert check.partition == NATIVE and not check.passed
    assert "published through 2024-01-01; due through 2024-01-02" in str(check.metadata["state"].value)
    assert last_complete_day(store, EXCHANGE, NATIVE, "exchange", "1d") == "2024-01-01"
