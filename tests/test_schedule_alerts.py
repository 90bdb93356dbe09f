"""The monthly schedule's tick, and a failing check: publishing blocked, previous file kept, alert delivered."""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from dagster import (
    DagsterInstance,
    RetryPolicy,
    build_run_status_sensor_context,
    build_schedule_context,
    build_sensor_context,
    instance_for_test,
    job,
    op,
)

from aperiodic_pipelines.defs import raw as raw_module
from aperiodic_pipelines.defs.bars import BarCheck
from aperiodic_pipelines.defs.checks import CheckOutcome
from aperiodic_pipelines.defs.definitions import GRAPHS, defs
from aperiodic_pipelines.defs.factory import build_exchange_graph
from aperiodic_pipelines.defs.freshness import (
    build_overdue_sensor,
    due_at,
    latest_due_month,
    overdue_months_at,
)
from aperiodic_pipelines.defs.partitions import partitioned_exchange
from aperiodic_pipelines.defs.raw import raw_sources_key
from aperiodic_pipelines.defs.resources import StoreResource
from aperiodic_pipelines.defs.sensors import (
    MAX_RULE_CHARS,
    build_alert_sensors,
    error_cause,
    redact,
    run_failure_message,
    send_alert,
)
from aperiodic_pipelines.domain.errors import NotPublishedError
from aperiodic_pipelines.domain.exchanges import EXCHANGES_BY_NAME
from aperiodic_pipelines.domain.settings import AlertSettings
from aperiodic_pipelines.storage import (
    LocalStore,
    flow_key,
    raw_key,
    read_parquet_metadata,
    write_parquet_deterministic,
)
from aperiodic_pipelines.storage.index import PublishedFile, PublishedMonth, record_published_month
from aperiodic_pipelines.storage.staging import manifest_key, staged_key
from aperiodic_pipelines.trades import empty_trades
from tests.binance_stage import EXCHANGE, NATIVE, PREFIX, Stage, new_instance, run_month

BINANCE = partitioned_exchange(EXCHANGE)


def _assets(*names: str) -> list:
    return [a for a in GRAPHS[EXCHANGE].assets if a.key.path[-1] in names]


def test_schedule_runs_on_the_8th_and_requests_last_month_for_every_instrument() -> None:
    schedule = defs.get_schedule_def("binance_futures_monthly_schedule")
    assert schedule.cron_schedule == "0 6 8 * *"
    assert schedule.execution_timezone in (None, "UTC")
    assert schedule.default_status.value == "RUNNING"
    instruments = ["BTCUSDT", "ETHUSDT"]
    # A persistent (test) instance, as in the daemon: the schedule reads the registered instruments from it.
    with instance_for_test() as instance:
        instance.add_dynamic_partitions(BINANCE.instruments_name, instruments)
        instance.add_dynamic_partitions(EXCHANGES_BY_NAME["okx-perps"].instruments_name, ["ETH-USDT-SWAP"])
        context = build_schedule_context(
            instance=instance, scheduled_execution_time=datetime(2024, 3, 8, 6, 0, tzinfo=UTC)
        )
        requests = schedule.evaluate_tick(context).run_requests
    assert sorted(r.partition_key for r in requests) == sorted(f"{i}|2024-02-01" for i in instruments)
    assert len({r.run_key for r in requests}) == len(instruments)  # one run per instrument, idempotent keys


class _Receiver(BaseHTTPRequestHandler):
    received: list[dict] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server naming
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        type(self).received.append({"path": self.path, "json": json.loads(body)})
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


@dataclass
class Webhook:
    """A real HTTP receiver on 127.0.0.1 standing in for Slack, and the alert sensors posting to it."""

    received: list[dict]
    alerts: AlertSettings

    def __post_init__(self) -> None:
        sensors = build_alert_sensors(self.alerts)
        self.check_failure_alert_on_success, self.check_failure_alert_on_failure, self.run_failure_alert = sensors
        self.overdue_months = build_overdue_sensor(self.alerts)


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    handler = type("Receiver", (_Receiver,), {"received": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    alerts = AlertSettings(
        webhook_url=f"http://127.0.0.1:{server.server_port}/hooks/T000/secret",
        dagster_url="http://dagster.example:3000",
    )
    try:
        yield Webhook(handler.received, alerts)
    finally:
        server.shutdown()
        server.server_close()


def _truncate_raw_month(store, month: str, workdir: Path) -> None:
    """Replace a raw month in the store by an empty (but schema-valid) table, as a truncated archive would."""
    path = workdir / "empty.parquet"
    write_parquet_deterministic(empty_trades(), path, metadata={})
    store.publish_file(path, raw_key(EXCHANGE, NATIVE, month))
    info = json.loads(store.read_bytes(raw_sources_key(EXCHANGE, NATIVE, month)))
    info["trade_count"] = 0
    sidecar = workdir / "sidecar.json"
    sidecar.write_text(json.dumps(info, sort_keys=True))
    store.publish_file(sidecar, raw_sources_key(EXCHANGE, NATIVE, month))


def test_failing_check_blocks_publishing_keeps_previous_file_and_alerts(
    stage: Stage, webhook: Webhook, tmp_path: Path  # noqa: F811
) -> None:
    check_failure_alert_on_success = webhook.check_failure_alert_on_success
    check_failure_alert_on_failure = webhook.check_failure_alert_on_failure
    run_failure_alert = webhook.run_failure_alert
    instance = new_instance()
    month = "2024-01"
    good_run = run_month(instance, stage.resources(), month)
    store = stage.store()
    # A successful run with passing checks sends nothing.
    skip = check_failure_alert_on_success(build_run_status_sensor_context(
        sensor_name=check_failure_alert_on_success.name,
        dagster_event=good_run.get_run_success_event(),
        dagster_instance=instance,
        dagster_run=instance.get_run_by_id(good_run.run_id),
    ))
    assert skip is not None and "no failed checks" in skip.skip_message
    assert webhook.received == []
    published_key = flow_key("exchange", EXCHANGE, "1h", NATIVE, month)
    good = hashlib.sha256(store.read_bytes(published_key)).hexdigest()

    _truncate_raw_month(store, month, tmp_path)
    result = run_month(
        instance,
        stage.resources(),
        month,
        assets=_assets("second_stats", "flow_bars_exchange", "published_flow_bars"),
        raise_on_error=False,
    )
    assert not result.success
    assert [e for e in result.get_asset_materialization_events() if e.asset_key.path[-1] == "published_flow_bars"] == []
    # The previously published month is untouched; the bad bars wait in staging, flagged as failed.
    assert hashlib.sha256(store.read_bytes(published_key)).hexdigest() == good
    assert store.exists(staged_key("exchange", EXCHANGE, "1h", NATIVE, month))
    manifest = json.loads(store.read_bytes(manifest_key("exchange", EXCHANGE, NATIVE, month)))
    assert manifest["checks_passed"] is False

    run = instance.get_run_by_id(result.run_id)
    failure_event = result.get_run_failure_event()

    # The check alert posts one concise message: asset, partition, failed rule, link to the run.
    context = build_run_status_sensor_context(
        sensor_name=check_failure_alert_on_failure.name,
        dagster_event=failure_event,
        dagster_instance=instance,
        dagster_run=run,
    )
    check_failure_alert_on_failure(context)
    assert len(webhook.received) == 1
    assert webhook.received[0]["path"] == "/hooks/T000/secret"
    text = webhook.received[0]["json"]["text"]
    assert set(webhook.received[0]["json"]) == {"text"}
    assert f"{PREFIX}/flow_bars_exchange" in text and "nonempty_month (ERROR)" in text
    assert f"{NATIVE}|{month}-01" in text
    assert f"no trades in {month}" in text
    assert f"http://dagster.example:3000/runs/{result.run_id}" in text
    assert "secret" not in text

    # The run-failure alert leaves this run to the check alert: one incident, one message.
    run_failure_alert(context.for_run_failure())
    assert len(webhook.received) == 1

    # A run that failed for another reason (nothing staged to publish) gets a run-failure alert.
    other = run_month(instance, stage.resources(), month, assets=_assets("published_flow_bars"), raise_on_error=False)
    assert not other.success
    other_context = build_run_status_sensor_context(
        sensor_name=run_failure_alert.name,
        dagster_event=other.get_run_failure_event(),
        dagster_instance=instance,
        dagster_run=instance.get_run_by_id(other.run_id),
    )
    run_failure_alert(other_context.for_run_failure())
    assert len(webhook.received) == 2
    assert "Run failed" in webhook.received[1]["json"]["text"] and "published_flow_bars" in webhook.received[1]["json"]["text"]
    assert "refusing to publish" in webhook.received[1]["json"]["text"]
    assert f"/runs/{other.run_id}" in webhook.received[1]["json"]["text"]


def test_alert_is_logged_when_no_webhook_is_set(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="aperiodic-test-alerts"):
        assert send_alert("check failed: x", logging.getLogger("aperiodic-test-alerts")) is False
    assert "check failed: x" in caplog.text and "APERIODIC_ALERT_WEBHOOK_URL" in caplog.text


def test_webhook_errors_name_the_variable_not_the_secret_url() -> None:
    url = "http://127.0.0.1:9/hooks/secret-token"  # nothing listens
    with pytest.raises(RuntimeError, match="APERIODIC_ALERT_WEBHOOK_URL") as failure:
        send_alert("x", logging.getLogger("aperiodic-test-alerts"), url)
    assert "secret-token" not in str(failure.value)


def test_incomplete_month_publishes_and_its_warn_check_alerts(
    stage: Stage, webhook: Webhook, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    """A month the source reports days missing from, on a graph with an extra WARN bar check that fails: the run
    succeeds and publishes, both WARN failures reach one alert; the missing days are in the published files."""
    fetch = raw_module.fetch_source_month

    def fetch_reporting_a_missing_day(*args, **kwargs) -> dict:  # noqa: ANN002, ANN003
        info = fetch(*args, **kwargs)  # the real download; the source's `missing_days` report stands in here
        return {**info, "missing_days": ["2024-01-15"]}

    monkeypatch.setattr(raw_module, "fetch_source_month", fetch_reporting_a_missing_day)
    extra = BarCheck(
        "reconciles_with_exchange_klines", "bars agree with the exchange's klines",
        lambda bars, where: CheckOutcome(False, f"{where.native_symbol} {where.month}: 1m volume off by 2%"),
    )
    graph = build_exchange_graph(BINANCE, extra_bar_checks=[extra])  # attaching an extra check: one argument
    instance = new_instance()
    result = run_month(instance, stage.resources(), "2024-01", assets=graph.assets)
    assert result.success
    meta = read_parquet_metadata(stage.store().read_bytes(flow_key("exchange", EXCHANGE, "1m", NATIVE, "2024-01")))
    assert meta["aperiodic.missing_days"] == '["2024-01-15"]'
    evaluation = next(e for e in result.get_asset_check_evaluations() if e.check_name == "complete_month")
    assert not evaluation.passed and evaluation.severity.value == "WARN"

    webhook.check_failure_alert_on_success(build_run_status_sensor_context(
        sensor_name=webhook.check_failure_alert_on_success.name,
        dagster_event=result.get_run_success_event(),
        dagster_instance=instance,
        dagster_run=instance.get_run_by_id(result.run_id),
    ))
    (message,) = webhook.received
    text = message["json"]["text"]
    assert f"{PREFIX}/raw_trades [{NATIVE}|2024-01-01] complete_month (WARN)" in text
    assert "2024-01-15" in text
    assert f"{PREFIX}/flow_bars_exchange [{NATIVE}|2024-01-01] reconciles_with_exchange_klines (WARN)" in text
    assert "1m volume off by 2%" in text


def test_overdue_month_is_reported_once(webhook: Webhook, tmp_path: Path) -> None:
    overdue_months = webhook.overdue_months
    now = datetime(2024, 3, 9, 1, 0, tzinfo=UTC)
    assert latest_due_month(now) == "2024-02" and due_at("2024-02") == datetime(2024, 3, 9, 0, 0, tzinfo=UTC)
    assert latest_due_month(datetime(2024, 3, 8, 23, 0, tzinfo=UTC)) == "2024-01"  # Feb not due yet
    store = LocalStore(tmp_path / "store")
    with DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions(BINANCE.instruments_name, ["BTCUSDT", "ETHUSDT"])
        record_published_month(store, PublishedMonth(EXCHANGE, "perpetual-BTC-USDT:USDT", "BTCUSDT", "2024-02", ()))
        # ETHUSDT has February's daily files only: that is not the month published.
        day_file = PublishedFile("exchange", "1d", "flow/exchange/binance-futures/1d/ETHUSDT/2024-02-01.parquet",
                                 "0" * 64, 1, 1, day="2024-02-01")
        record_published_month(store, PublishedMonth(EXCHANGE, "perpetual-ETH-USDT:USDT", "ETHUSDT", "2024-02", (day_file,)))
        assert [m.key() for m in overdue_months_at(instance, store, now)] == [f"{EXCHANGE}|ETHUSDT|2024-02"]

        # The sensor at the real current time: the month due last is published for BTCUSDT only.
        current = latest_due_month(datetime.now(UTC))
        record_published_month(store, PublishedMonth(EXCHANGE, "perpetual-BTC-USDT:USDT", "BTCUSDT", current, ()))
        resources = {"store": StoreResource(uri=str(store.root))}
        with build_sensor_context(instance=instance, resources=resources) as context:
            assert overdue_months(context) is None
            (message,) = webhook.received
            text = message["json"]["text"]
            assert f"• {EXCHANGE} ETHUSDT {current}" in text and "BTCUSDT" not in text
            skip = overdue_months(context)  # same cursor: nothing new, no second message
            assert skip is not None and "none new" in skip.skip_message and len(webhook.received) == 1


def test_a_failed_runs_alert_carries_the_failing_steps_error_not_the_retry_count(webhook: Webhook) -> None:
    """A step that keeps failing until its retries run out: Dagster's own message is "Exceeded max_retries of 2";
    the alert names the step and the error that caused it (first line, bounded, no URL token, no secret)."""
    token_url = "https://archive.example/data/BTCUSDT-2024-01.zip?X-Amz-Signature=abc123secretsig"

    @op(retry_policy=RetryPolicy(max_retries=2, delay=0))
    def download() -> None:
        raise NotPublishedError(f"archive not published: {token_url} (HTTP 404)\n" + "traceback detail " * 500)

    @job(name="alert_cause_job", tags={"dagster/partition": "BTCUSDT|2024-01-01"})
    def alert_cause_job() -> None:
        download()

    with DagsterInstance.ephemeral() as instance:
        result = alert_cause_job.execute_in_process(instance=instance, raise_on_error=False)
        assert not result.success
        (failure,) = [e for e in result.all_events if e.is_step_failure]
        assert failure.step_failure_data.error.message.startswith("Exceeded max_retries of 2")  # Dagster's words
        assert error_cause(failure.step_failure_data.error).startswith("NotPublishedError: archive not published")
        context = build_run_status_sensor_context(
            sensor_name=webhook.run_failure_alert.name,
            dagster_event=result.get_run_failure_event(),
            dagster_instance=instance,
            dagster_run=instance.get_run_by_id(result.run_id),
        )
        webhook.run_failure_alert(context.for_run_failure())
    (message,) = webhook.received
    text = message["json"]["text"]
    first_line, link = text.splitlines()
    assert first_line == (
        "Run failed: alert_cause_job [BTCUSDT|2024-01-01]: step download: NotPublishedError: archive not published: "
        "https://archive.example/data/BTCUSDT-2024-01.zip (HTTP 404)"
    )
    assert "max_retries" not in text and "abc123secretsig" not in text and "traceback detail" not in text
    assert link == f"http://dagster.example:3000/runs/{result.run_id}"
    assert len(first_line) < 400


def test_run_failure_text_is_bounded_and_cut_of_secrets() -> None:
    with DagsterInstance.ephemeral() as instance:
        run = instance.create_run_for_job(job_def=_noop_job())
    secret = "tardis-key-not-a-real-secret"
    text = run_failure_message(run, f"step x: {'y' * 1000} {secret}", "http://d:3000", secrets=(secret,))
    first = text.splitlines()[0]
    assert len(first) <= len("Run failed: noop_job [-]: ") + MAX_RULE_CHARS and first.endswith("…")
    assert secret not in run_failure_message(run, f"bad key {secret} for user:pw@host", secrets=(secret,))
    assert "pw" not in redact("GET https://user:pw@example.com/a?sig=1 failed") == "GET https://example.com/a failed"


def _noop_job():
    @op
    def nothing() -> None:
        pass

    @job(name="noop_job")
    def noop_job() -> None:
        nothing()

    return noop_job
