# ruff: noqa: F811 - pytest fixtures imported from tests.http_fixtures are redefined as arguments
"""Reconciliation of binance-futures 1m bars with Binance's own 1m klines, served by a real local HTTP mirror
that holds the trade archives and the klines computed from the same generated trades."""

from __future__ import annotations

import zipfile
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest
from dagster import (
    AssetCheckKey,
    AssetCheckSeverity,
    AssetKey,
    DagsterInstance,
    build_run_status_sensor_context,
    materialize,
)

from aperiodic_pipelines.defs.definitions import GRAPHS, check_failure_alert_on_success
from aperiodic_pipelines.defs.klines_check import KLINES_CHECK, klines_outcome
from aperiodic_pipelines.defs.resources import SourcesResource, StoreResource
from aperiodic_pipelines.defs.sensors import check_failure_message, failed_checks
from aperiodic_pipelines.domain.errors import ChecksumMismatchError, CorruptArchiveError
from aperiodic_pipelines.flow import compute_flow_bars
from aperiodic_pipelines.flow.reconcile import reconcile_with_klines
from aperiodic_pipelines.mirror.archives import corrupt_zip, write_binance_month, write_wrong_checksum
from aperiodic_pipelines.mirror.klines import binance_klines_csv, republish_klines, write_binance_klines_month
from aperiodic_pipelines.sources import binance
from aperiodic_pipelines.sources.config import SourceConfig
from aperiodic_pipelines.sources.klines import fetch_klines_month, klines_path, parse_klines_csv
from aperiodic_pipelines.storage import LocalStore, flow_key
from tests.http_fixtures import cached_files, tiny_tape

pytestmark = pytest.mark.slow  # starts a web server

SYMBOL = "perpetual-BTC-USDT:USDT"
NATIVE = "BTCUSDT"
MONTH = "2024-01"
TAPE = tiny_tape(n=6000, seed=23)


def _bars_from_mirror(tmp_path: Path, mirror_root: Path, config: SourceConfig, downloader, dataset: str):
    """Our 1m bars, from the canonical month the binance source builds out of the mirror's trade archive."""
    write_binance_month(mirror_root, NATIVE, MONTH, TAPE, dataset=dataset)
    config = SourceConfig(**{**config.__dict__, "binance_dataset": dataset})
    result = binance.fetch_month(SYMBOL, MONTH, dest=tmp_path / f"{dataset}.parquet", config=config,
                                 downloader=downloader)
    return compute_flow_bars(pl.read_parquet(result.path), None, month=MONTH, intervals=["1m"])["1m"]


def _ms(minute: datetime) -> str:
    """A bar's zone-less UTC `time` as the kline's `open_time` text."""
    return str(int(minute.replace(tzinfo=UTC).timestamp() * 1000))


def _busy_buy_minute(bars: pl.DataFrame) -> datetime:
    return bars.filter(pl.col("taker_buy_count") >= 2).sort("taker_buy_volume", descending=True)["time"][0]


def _add_to_taker_buy_volume(zip_path: Path, minute: datetime, delta_lots: int) -> None:
    """Republish the klines with one minute's taker_buy_volume changed by `delta_lots` × 0.001."""
    open_ms = _ms(minute)

    def edit(lines: list[str]) -> list[str]:
        out = []
        for line in lines:
            fields = line.split(",")
            if fields[0] == open_ms:
                units = round(float(fields[9]) * 1000) + delta_lots
                fields[9] = f"{units // 1000}.{units % 1000:03d}"
            out.append(",".join(fields))
        assert out != lines
        return out

    republish_klines(zip_path, edit)


def test_klines_file_is_laid_out_and_printed_as_binance_publishes(mirror_root):
    trades = pl.DataFrame(
        {"ts_exchange": [1704067200098123, 1704067201000000], "ts_arrival": [None, None], "trade_id": [5, 6],
         "price": [42283.8, 42283.9], "qty": [0.004, 1.5], "is_buy": [False, True]},
        schema_overrides={"ts_arrival": pl.Int64},
    )
    path = write_binance_klines_month(mirror_root, NATIVE, MONTH, trades)
    assert path.relative_to(mirror_root).as_posix() == "data/futures/um/monthly/klines/BTCUSDT/1m/BTCUSDT-1m-2024-01.zip"
    with zipfile.ZipFile(path) as archive:
        assert archive.namelist() == ["BTCUSDT-1m-2024-01.csv"]
        lines = archive.read("BTCUSDT-1m-2024-01.csv").decode().splitlines()
    assert lines[:3] == [
        "open_time,open,high,low,close,volume,close_time,quote_volume,count,taker_buy_volume,"
        "taker_buy_quote_volume,ignore",
        "1704067200000,42283.80,42283.90,42283.80,42283.90,1.504,1704067259999,63594.98520,2,1.500,63425.85000,0",
        # a minute without trades still has its kline: the last close, zero volumes
        "1704067260000,42283.90,42283.90,42283.90,42283.90,0.000,1704067319999,0.00000,0,0.000,0.00000,0",
    ]
    assert len(lines) == 1 + 31 * 24 * 60
    sidecar = path.with_name(path.name + ".CHECKSUM").read_text()
    assert sidecar.endswith("  BTCUSDT-1m-2024-01.zip\n") and len(sidecar.split()[0]) == 64
    # Older files have no header row; both read the same, with the decimals each column printed.
    with_header = parse_klines_csv(binance_klines_csv(trades, MONTH), MONTH, name="a")
    without = parse_klines_csv(binance_klines_csv(trades, MONTH, header=False), MONTH, name="b")
    assert with_header[0].equals(without[0]) and (with_header[2], without[2]) == (True, False)
    assert with_header[1] == {"open": 2, "high": 2, "low": 2, "close": 2, "volume": 3, "quote_volume": 5,
                              "taker_buy_volume": 3, "taker_buy_quote_volume": 5}
    assert with_header[0].schema["open_time"] == pl.Datetime("us")


@pytest.mark.parametrize("dataset", ["aggTrades", "trades"])
def test_bars_reconcile_with_the_klines_of_the_same_trades(tmp_path, mirror_root, source_config,
                                                           fast_downloader, dataset):
    bars = _bars_from_mirror(tmp_path, mirror_root, source_config, fast_downloader, dataset)
    write_binance_klines_month(mirror_root, NATIVE, MONTH, TAPE)
    klines = fetch_klines_month(NATIVE, MONTH, source_config, downloader=fast_downloader)
    assert klines is not None and klines.has_header
    assert klines.frame.height == bars.height == 31 * 24 * 60
    assert klines.frame["count"].sum() == TAPE.height  # the file really holds the month's trades
    assert klines.object.location.endswith(klines_path(NATIVE, MONTH)) and len(klines.object.sha256) == 64

    outcome = reconcile_with_klines(bars, klines.frame, compare_counts=dataset == "trades", decimals=klines.decimals)
    assert (outcome.bars_compared, outcome.bars_differing, outcome.bars_without_kline) == (bars.height, 0, 0)
    assert outcome.passed and outcome.worst is None
    assert outcome.counts_compared == (dataset == "trades")
    assert [f.field for f in outcome.fields][-1] == ("count" if dataset == "trades" else "quote_volume")
    assert {f.field: f.half_unit for f in outcome.fields}["taker_buy_volume"] == pytest.approx(0.0005)


def test_altered_kline_is_detected_naming_the_bar(tmp_path, mirror_root, source_config, fast_downloader,
                                                   archive_mirror):
    bars = _bars_from_mirror(tmp_path, mirror_root, source_config, fast_downloader, "trades")
    path = write_binance_klines_month(mirror_root, NATIVE, MONTH, TAPE)
    assert klines_outcome(bars, NATIVE, MONTH, "trades", source_config,
                                 downloader=fast_downloader).passed
    minute = _busy_buy_minute(bars)
    ours = bars.filter(pl.col("time") == minute)["taker_buy_volume"][0]
    _add_to_taker_buy_volume(path, minute, delta_lots=1)  # one lot more, re-signed as a republished file

    result = klines_outcome(bars, NATIVE, MONTH, "trades", source_config, downloader=fast_downloader)
    assert archive_mirror.count("data/futures/um/monthly/klines/*.zip") == 2  # new checksum: fetched again
    assert not result.passed
    meta = {key: getattr(value, "value", value) for key, value in result.detail.items()}
    assert meta["bars_compared"] == bars.height and meta["bars_differing"] == 1
    assert meta["worst_bar"] == minute.isoformat(sep=" ") and meta["worst_field"] == "taker_buy_volume"
    assert meta["worst_ours"] == pytest.approx(ours) and meta["worst_exchange"] == pytest.approx(ours + 0.001)
    assert meta["worst_tolerance"] < 0.001
    assert f"{minute:%Y-%m-%d %H:%M}" in result.failed_rule and "BTCUSDT-1m-2024-01.zip" in result.failed_rule
    assert meta["klines_object"].endswith(klines_path(NATIVE, MONTH)) and len(meta["klines_sha256"]) == 64
    assert meta["fields"]["taker_buy_volume"]["bars_differing"] == 1
    assert meta["fields"]["volume"]["bars_differing"] == 0 and "count" in meta["fields"]


def test_kline_missing_for_a_minute_with_trades_differs_but_an_empty_one_does_not(tmp_path, mirror_root,
                                                                                   source_config, fast_downloader):
    bars = _bars_from_mirror(tmp_path, mirror_root, source_config, fast_downloader, "aggTrades")
    path = write_binance_klines_month(mirror_root, NATIVE, MONTH, TAPE)
    empty = bars.filter(pl.col("taker_buy_count") + pl.col("taker_sell_count") == 0)["time"][0]
    busy = _busy_buy_minute(bars)
    drop = {_ms(empty), _ms(busy)}
    republish_klines(path, lambda lines: [line for line in lines if line.split(",")[0] not in drop])
    klines = fetch_klines_month(NATIVE, MONTH, source_config, downloader=fast_downloader)
    outcome = reconcile_with_klines(bars, klines.frame, compare_counts=False, decimals=klines.decimals)
    assert (outcome.bars_compared, outcome.bars_without_kline) == (bars.height - 2, 2)
    assert (outcome.bars_differing, outcome.bars_with_trades_without_kline) == (1, 1)
    assert outcome.worst.time == busy and outcome.worst.exchange is None and "no kline" in outcome.worst.describe()


def test_unpublished_klines_pass_with_a_note(tmp_path, mirror_root, source_config, fast_downloader):
    bars = _bars_from_mirror(tmp_path, mirror_root, source_config, fast_downloader, "aggTrades")
    assert fetch_klines_month(NATIVE, MONTH, source_config, downloader=fast_downloader) is None
    result = klines_outcome(bars, NATIVE, MONTH, "aggTrades", source_config,
                                   downloader=fast_downloader)
    assert result.passed and not result.failed_rule
    assert result.detail["klines"].startswith("no klines published: http://127.0.0.1:")


def test_wrong_checksum_and_corrupt_zip_are_clear_permanent_errors(tmp_path, mirror_root, source_config,
                                                                   fast_downloader, archive_mirror):
    bars = _bars_from_mirror(tmp_path, mirror_root, source_config, fast_downloader, "aggTrades")
    path = write_binance_klines_month(mirror_root, NATIVE, MONTH, TAPE)
    cached_before = cached_files(source_config.cache_dir)
    wrong = write_wrong_checksum(path)
    with pytest.raises(ChecksumMismatchError, match=rf"BTCUSDT-1m-2024-01\.zip.*{wrong}"):
        fetch_klines_month(NATIVE, MONTH, source_config, downloader=fast_downloader)
    result = klines_outcome(bars, NATIVE, MONTH, "aggTrades", source_config,
                                   downloader=fast_downloader)
    assert not result.passed and result.failed_rule.startswith("klines unusable: ChecksumMismatchError")
    requests_so_far = archive_mirror.count("*/BTCUSDT-1m-2024-01.zip")
    assert requests_so_far == 2  # one attempt per call: a wrong checksum is never retried

    write_binance_klines_month(mirror_root, NATIVE, MONTH, TAPE)
    corrupt_zip(path)  # damaged, yet the published checksum matches it
    with pytest.raises(CorruptArchiveError, match=r"BTCUSDT-1m-2024-01\.zip"):
        fetch_klines_month(NATIVE, MONTH, source_config, downloader=fast_downloader)
    assert archive_mirror.count("*/BTCUSDT-1m-2024-01.zip") == requests_so_far + 1
    assert cached_files(source_config.cache_dir) == cached_before  # nothing of the klines was cached


def test_malformed_kline_row_names_the_file_and_line(mirror_root, source_config, fast_downloader):
    path = write_binance_klines_month(mirror_root, NATIVE, MONTH, TAPE)

    def damage(lines: list[str]) -> list[str]:
        fields = lines[5].split(",")
        fields[5] = "zero"  # the volume of the file's 6th line
        return [*lines[:5], ",".join(fields), *lines[6:]]

    republish_klines(path, damage)
    with pytest.raises(CorruptArchiveError, match=r"BTCUSDT-1m-2024-01\.zip: malformed row\(s\) at line \[6\]"):
        fetch_klines_month(NATIVE, MONTH, source_config, downloader=fast_downloader)
    assert cached_files(source_config.cache_dir) == []


def test_rerun_reuses_the_cached_klines(mirror_root, source_config, fast_downloader, archive_mirror):
    write_binance_klines_month(mirror_root, NATIVE, MONTH, TAPE)
    first = fetch_klines_month(NATIVE, MONTH, source_config, downloader=fast_downloader)
    second = fetch_klines_month(NATIVE, MONTH, source_config, downloader=fast_downloader)
    assert archive_mirror.count("data/futures/um/monthly/klines/*.zip") == 1
    assert first.object == second.object and first.frame.equals(second.frame)


def test_failed_reconciliation_is_a_warn_check_in_a_successful_run_and_alerts(tmp_path, mirror_root,
                                                                               archive_mirror, monkeypatch):
    """Through binance-futures' real graph: the non-blocking check fails with WARN, the month is still published,
    and the alert sensor reports it."""
    write_binance_month(mirror_root, NATIVE, MONTH, TAPE, dataset="aggTrades")
    path = write_binance_klines_month(mirror_root, NATIVE, MONTH, TAPE)
    bars = compute_flow_bars(TAPE, None, month=MONTH, intervals=["1m"])["1m"]
    minute = _busy_buy_minute(bars)
    _add_to_taker_buy_volume(path, minute, delta_lots=-1)
    monkeypatch.setenv("APERIODIC_BINANCE_URL", archive_mirror.url)
    monkeypatch.setenv("APERIODIC_CACHE_DIR", str(tmp_path / "cache"))
    store = LocalStore(tmp_path / "store")
    graph = GRAPHS["binance-futures"]
    check_key = AssetCheckKey(AssetKey(["binance_futures", "flow_bars_exchange"]), KLINES_CHECK)
    assert check_key in {k for a in graph.assets for k in a.check_keys}
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(graph.exchange.instruments_name, [NATIVE])
    run = materialize(
        graph.assets, instance=instance, partition_key=f"{NATIVE}|{MONTH}-01",
        resources={"store": StoreResource(uri=str(store.root)), "sources": SourcesResource()},
    )
    assert run.success  # WARN and non-blocking: the month is still published
    assert store.exists(flow_key("exchange", "binance-futures", "1m", NATIVE, MONTH))
    (evaluation,) = [e for e in run.get_asset_check_evaluations() if e.check_name == KLINES_CHECK]
    assert not evaluation.passed and evaluation.severity == AssetCheckSeverity.WARN
    assert evaluation.metadata["count"].value.startswith("count not compared: the bars count aggregate trades")

    (failed,) = failed_checks(instance, run.run_id)
    assert failed.check == KLINES_CHECK and f"{minute:%Y-%m-%d %H:%M}" in failed.rule
    message = check_failure_message(instance.get_run_by_id(run.run_id), [failed])
    assert KLINES_CHECK in message and "1 of 44640 1m bars differ" in message
    context = build_run_status_sensor_context(
        sensor_name=check_failure_alert_on_success.name,
        dagster_event=run.get_run_success_event(),
        dagster_instance=instance,
        dagster_run=instance.get_run_by_id(run.run_id),
    )
    assert check_failure_alert_on_success(context) is None  # an alert went out (logged: no webhook set)


def test_tolerance_follows_the_decimals_the_file_printed():
    """A kline printed with 2 decimals may be off by up to 0.005 from the exact total; with 3, by 0.0005."""
    bars = compute_flow_bars(TAPE, None, month=MONTH, intervals=["1m"])["1m"]
    klines, decimals, _ = parse_klines_csv(binance_klines_csv(TAPE, MONTH), MONTH, name="k")
    minute = _busy_buy_minute(bars)
    shifted = klines.with_columns(
        pl.when(pl.col("open_time") == minute).then(pl.col("volume") + 0.004).otherwise(pl.col("volume"))
        .alias("volume")
    )
    as_printed = reconcile_with_klines(bars, shifted, compare_counts=True, decimals=decimals)
    assert as_printed.bars_differing == 1 and as_printed.worst.field == "volume" and as_printed.worst.time == minute
    coarser = reconcile_with_klines(bars, shifted, compare_counts=True, decimals={**decimals, "volume": 2})
    assert coarser.passed and {f.field: f.half_unit for f in coarser.fields}["volume"] == pytest.approx(0.005)
