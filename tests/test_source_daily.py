# ruff: noqa: F811 - pytest fixtures imported from tests.http_fixtures are redefined as arguments
"""`sources.fetch_day`: one UTC day of canonical trades, the month file's rows of that day, on the local mirror.

Every exchange: the days of a generated month, fetched one by one and put end to end, equal `fetch_month` of
that month. A day not out yet is a `DayNotPublishedError` at once (default 404 patience configured, < 2 s), and a
day the upstream skipped while a later one is out says so (`later_published`).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest

from aperiodic_pipelines.domain.errors import InvalidDayError, NotPublishedError, SymbolError
from aperiodic_pipelines.domain.months import days_of_month
from aperiodic_pipelines.domain.settings import HttpSettings
from aperiodic_pipelines.mirror.archives import write_binance_month, write_okx_month, write_tardis_days
from aperiodic_pipelines.sources import binance, fetch_day, fetch_month, okx, tardis
from aperiodic_pipelines.sources.config import SourceConfig
from aperiodic_pipelines.sources.daily import DayNotPublishedError
from aperiodic_pipelines.trades import CANONICAL_SCHEMA
from tests.http_fixtures import tiny_tape

MONTH = "2024-01"
DAYS = days_of_month(MONTH)
PATIENT = HttpSettings()  # the default 404 patience (3 tries with backoff): a day must not use it


def _days_end_to_end(exchange: str, symbol: str, tmp_path: Path, config: SourceConfig, **kwargs) -> pl.DataFrame:
    frames = []
    for day in DAYS:
        result = fetch_day(exchange, symbol, day, dest=tmp_path / "days" / f"{day}.parquet", config=config,
                           http=PATIENT, **kwargs)
        assert (result.day, result.month, result.exchange) == (day, MONTH, exchange)
        frame = pl.read_parquet(result.path)
        assert frame.schema == pl.Schema(CANONICAL_SCHEMA)
        assert frame.height == result.trade_count
        frames.append(frame)
    return pl.concat(frames)


def _month(exchange: str, symbol: str, tmp_path: Path, config: SourceConfig, **kwargs) -> pl.DataFrame:
    result = fetch_month(exchange, symbol, MONTH, dest=tmp_path / "month.parquet", config=config, http=PATIENT,
                         **kwargs)
    return pl.read_parquet(result.path)


def _assert_same_rows(days: pl.DataFrame, month: pl.DataFrame) -> None:
    assert month.height > 300
    assert days.equals(month), "the days end to end differ from the month file"


# --- binance-futures -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("dataset", ["aggTrades", "trades"])
def test_binance_days_end_to_end_equal_the_monthly_archive(tmp_path, mirror_root, source_config, dataset):
    tape = tiny_tape(n=600)
    write_binance_month(mirror_root, "BTCUSDT", MONTH, tape, dataset=dataset)  # the monthly archive
    write_binance_month(mirror_root, "BTCUSDT", MONTH, tape, dataset=dataset, daily=True, duplicate_rows=2,
                        interleave=True)
    config = SourceConfig(binance_url=source_config.binance_url, cache_dir=source_config.cache_dir,
                          binance_dataset=dataset)
    days = _days_end_to_end("binance-futures", "BTCUSDT", tmp_path, config)
    month = _month("binance-futures", "BTCUSDT", tmp_path, config)
    _assert_same_rows(days, month)


def test_binance_days_equal_the_month_built_from_daily_files(tmp_path, mirror_root, source_config):
    write_binance_month(mirror_root, "BTCUSDT", MONTH, tiny_tape(n=500, seed=3), daily=True, duplicate_rows=3)
    days = _days_end_to_end("binance-futures", "perpetual-BTC-USDT:USDT", tmp_path, source_config)
    _assert_same_rows(days, _month("binance-futures", "BTCUSDT", tmp_path, source_config))


def test_binance_day_result_names_its_one_object(tmp_path, mirror_root, source_config):
    write_binance_month(mirror_root, "BTCUSDT", MONTH, tiny_tape(), daily=True, days={"2024-01-05"})
    result = fetch_day("binance-futures", "BTCUSDT", "2024-01-05", dest=tmp_path / "d.parquet", config=source_config)
    assert [o.location.rsplit("/", 1)[-1] for o in result.objects] == ["BTCUSDT-aggTrades-2024-01-05.zip"]
    assert result.symbol == "perpetual-BTC-USDT:USDT" and result.native_symbol == "BTCUSDT"
    assert result.to_metadata()["day"] == "2024-01-05"


def test_binance_day_not_out_yet_fails_at_once(tmp_path, mirror_root, source_config, archive_mirror):
    write_binance_month(mirror_root, "BTCUSDT", MONTH, tiny_tape(), daily=True, days={"2024-01-05"})
    started = time.monotonic()
    with pytest.raises(DayNotPublishedError, match=r"2024-01-06 is not published yet: missing "
                       r"BTCUSDT-aggTrades-2024-01-06\.zip") as caught:
        fetch_day("binance-futures", "BTCUSDT", "2024-01-06", dest=tmp_path / "d.parquet", config=source_config,
                  http=PATIENT)
    assert time.monotonic() - started < 2
    assert isinstance(caught.value, NotPublishedError) and not caught.value.later_published
    assert caught.value.missing == ("BTCUSDT-aggTrades-2024-01-06.zip",)
    assert archive_mirror.count("*2024-01-06.zip.CHECKSUM") == 1  # asked once, no 404 patience
    assert not (tmp_path / "d.parquet").exists()


def test_binance_day_skipped_upstream_says_a_later_day_is_out(tmp_path, mirror_root, source_config):
    write_binance_month(mirror_root, "BTCUSDT", MONTH, tiny_tape(), daily=True, days={"2024-01-05", "2024-01-07"})
    started = time.monotonic()
    with pytest.raises(DayNotPublishedError, match="skipped upstream") as caught:
        fetch_day("binance-futures", "BTCUSDT", "2024-01-06", dest=tmp_path / "d.parquet", config=source_config,
                  http=PATIENT)
    assert time.monotonic() - started < 2
    assert caught.value.later_published and caught.value.day == "2024-01-06"


def test_bad_input_fails_before_any_request(tmp_path, source_config, archive_mirror):
    with pytest.raises(InvalidDayError, match="2024-02-30"):
        fetch_day("binance-futures", "BTCUSDT", "2024-02-30", dest=tmp_path / "d.parquet", config=source_config)
    with pytest.raises(InvalidDayError, match="2024-01"):
        fetch_day("binance-futures", "BTCUSDT", "2024-01", dest=tmp_path / "d.parquet", config=source_config)
    with pytest.raises(SymbolError, match="nasdaq"):
        fetch_day("nasdaq", "BTCUSDT", "2024-01-02", dest=tmp_path / "d.parquet", config=source_config)
    with pytest.raises(SymbolError):
        fetch_day("binance-futures", "NOT A SYMBOL", "2024-01-02", dest=tmp_path / "d.parquet", config=source_config)
    assert archive_mirror.count("*") == 0


# --- okx-perps -------------------------------------------------------------------------------------------------


def test_okx_days_end_to_end_equal_the_month(tmp_path, mirror_root, source_config):
    write_okx_month(mirror_root, "BTC-USDT-SWAP", MONTH, tiny_tape(n=600, seed=4))
    days = _days_end_to_end("okx-perps", "BTC-USDT-SWAP", tmp_path, source_config)
    _assert_same_rows(days, _month("okx-perps", "BTC-USDT-SWAP", tmp_path, source_config))


def test_okx_day_reads_the_files_dated_that_day_and_the_next(tmp_path, mirror_root, source_config):
    write_okx_month(mirror_root, "BTC-USDT-SWAP", MONTH, tiny_tape(n=600, seed=4))
    result = fetch_day("okx-perps", "BTC-USDT-SWAP", "2024-01-10", dest=tmp_path / "d.parquet", config=source_config)
    assert [o.location.rsplit("/", 1)[-1] for o in result.objects] == [
        "BTC-USDT-SWAP-trades-2024-01-10.zip", "BTC-USDT-SWAP-trades-2024-01-11.zip"]
    frame = pl.read_parquet(result.path)
    start = int(datetime(2024, 1, 10, tzinfo=UTC).timestamp()) * 1_000_000
    assert frame["ts_exchange"].min() >= start and frame["ts_exchange"].max() < start + 86_400_000_000
    # trades of both halves of the UTC day: before and after 16:00 UTC (the UTC+8 file boundary)
    assert (frame["ts_exchange"] < start + 16 * 3_600_000_000).any()
    assert (frame["ts_exchange"] >= start + 16 * 3_600_000_000).any()


def test_okx_day_waits_for_the_next_utc8_file(tmp_path, mirror_root, source_config, archive_mirror):
    from datetime import date

    write_okx_month(mirror_root, "BTC-USDT-SWAP", MONTH, tiny_tape(), dates={date(2024, 1, 9), date(2024, 1, 10)})
    fetch_day("okx-perps", "BTC-USDT-SWAP", "2024-01-09", dest=tmp_path / "a.parquet", config=source_config)
    started = time.monotonic()
    with pytest.raises(DayNotPublishedError, match="missing BTC-USDT-SWAP-trades-2024-01-11.zip") as caught:
        fetch_day("okx-perps", "BTC-USDT-SWAP", "2024-01-10", dest=tmp_path / "b.parquet", config=source_config,
                  http=PATIENT)
    assert time.monotonic() - started < 2 and not caught.value.later_published
    write_okx_month(mirror_root, "BTC-USDT-SWAP", MONTH, tiny_tape(), dates={date(2024, 1, 12)})
    with pytest.raises(DayNotPublishedError, match="skipped upstream") as caught:
        fetch_day("okx-perps", "BTC-USDT-SWAP", "2024-01-10", dest=tmp_path / "b.parquet", config=source_config,
                  http=PATIENT)
    assert caught.value.later_published


# --- Tardis ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["download", "api"])
def test_tardis_days_end_to_end_equal_the_month(tmp_path, mirror_root, archive_mirror, layout):
    tape = tiny_tape(n=600, seed=6, with_arrival=True)
    root = mirror_root / "tardis" if layout == "api" else tmp_path / "tardis-files"
    write_tardis_days(root, "binance-futures", "BTCUSDT", MONTH, tape, layout=layout)
    url = f"{archive_mirror.url}/tardis" if layout == "api" else str(root)
    config = SourceConfig(source="tardis", tardis_url=url, cache_dir=tmp_path / "cache")
    days = _days_end_to_end("binance-futures", "BTCUSDT", tmp_path, config)
    month = _month("binance-futures", "BTCUSDT", tmp_path, config)
    _assert_same_rows(days, month)
    assert month["ts_arrival"].null_count() == 0
    # late arrivals exist, so a day really needs the next day's file
    assert (month["ts_arrival"] // 86_400_000_000 != month["ts_exchange"] // 86_400_000_000).any()


def test_tardis_okx_days_end_to_end_equal_the_month(tmp_path):
    tape = tiny_tape(n=500, seed=8, with_arrival=True)
    root = tmp_path / "tardis-files"
    write_tardis_days(root, "okx-perps", "BTC-USDT-SWAP", MONTH, tape)
    config = SourceConfig(source="tardis", tardis_url=str(root), cache_dir=tmp_path / "cache")
    days = _days_end_to_end("okx-perps", "BTC-USDT-SWAP", tmp_path, config)
    _assert_same_rows(days, _month("okx-perps", "BTC-USDT-SWAP", tmp_path, config))


def test_tardis_true_variant_neighbour_days(tmp_path):
    """The true variant of day d reads raw days d−1, d, d+1: each is a complete day with arrival times once the
    file after d+1 is out, and d+1 is not published until then."""
    tape = tiny_tape(n=600, seed=6, with_arrival=True)
    root = tmp_path / "tardis-files"
    published = {f"2024-01-{d:02d}" for d in range(1, 13)}  # files through the 12th: days complete through the 11th
    write_tardis_days(root, "binance-futures", "BTCUSDT", MONTH, tape, days=published | {"2023-12-31"})
    config = SourceConfig(source="tardis", tardis_url=str(root), cache_dir=tmp_path / "cache")
    frames = []
    for day in ("2024-01-09", "2024-01-10", "2024-01-11"):
        result = fetch_day("binance-futures", "BTCUSDT", day, dest=tmp_path / f"{day}.parquet", config=config)
        assert result.has_arrival_times and result.day == day
        frames.append(pl.read_parquet(result.path))
        assert frames[-1]["ts_arrival"].null_count() == 0
    expected = tape.filter(pl.col("ts_exchange").is_between(
        int(datetime(2024, 1, 9, tzinfo=UTC).timestamp()) * 1_000_000,
        int(datetime(2024, 1, 12, tzinfo=UTC).timestamp()) * 1_000_000, closed="left"))
    assert pl.concat(frames).equals(expected.select(frames[0].columns))
    started = time.monotonic()
    with pytest.raises(DayNotPublishedError, match="binance-futures_trades_2024-01-13_BTCUSDT") as caught:
        fetch_day("binance-futures", "BTCUSDT", "2024-01-12", dest=tmp_path / "x.parquet", config=config)
    assert time.monotonic() - started < 2 and not caught.value.later_published


def test_tardis_remote_day_not_out_yet_fails_at_once(tmp_path, mirror_root, archive_mirror):
    tape = tiny_tape(n=300, seed=6, with_arrival=True)
    write_tardis_days(mirror_root / "tardis", "binance-futures", "BTCUSDT", MONTH, tape, layout="api",
                      days={"2024-01-04", "2024-01-05"})
    config = SourceConfig(source="tardis", tardis_url=f"{archive_mirror.url}/tardis", cache_dir=tmp_path / "c")
    started = time.monotonic()
    with pytest.raises(DayNotPublishedError, match="2024/01/06/BTCUSDT.csv.gz") as caught:
        tardis.fetch_day("perpetual-BTC-USDT:USDT", "2024-01-05", dest=tmp_path / "x.parquet", config=config,
                         exchange="binance-futures", http=PATIENT)
    assert time.monotonic() - started < 2 and not caught.value.later_published
    assert archive_mirror.count("*/2024/01/06/BTCUSDT.csv.gz") == 1


# --- source modules directly (the registry passes these on) -----------------------------------------------------


def test_modules_take_a_downloader(tmp_path, mirror_root, source_config, fast_downloader):
    write_binance_month(mirror_root, "BTCUSDT", MONTH, tiny_tape(), daily=True, days={"2024-01-02"})
    write_okx_month(mirror_root, "BTC-USDT-SWAP", MONTH, tiny_tape())
    one = binance.fetch_day("perpetual-BTC-USDT:USDT", "2024-01-02", dest=tmp_path / "b.parquet",
                            config=source_config, downloader=fast_downloader)
    two = okx.fetch_day("perpetual-BTC-USDT:USDT", "2024-01-02", dest=tmp_path / "o.parquet",
                        config=source_config, downloader=fast_downloader)
    assert one.trade_count > 0 and two.trade_count > 0


def test_published_day_without_trades_is_an_empty_table(tmp_path, mirror_root, archive_mirror, source_config):
    quiet = tiny_tape().filter(pl.col("ts_exchange") < int(datetime(2024, 1, 3, tzinfo=UTC).timestamp()) * 1_000_000)
    write_binance_month(mirror_root, "BTCUSDT", MONTH, quiet, daily=True, days={"2024-01-05"})
    write_okx_month(mirror_root, "BTC-USDT-SWAP", MONTH, quiet)
    write_tardis_days(mirror_root / "tardis", "binance-futures", "BTCUSDT", MONTH,
                      quiet.with_columns(ts_arrival=pl.col("ts_exchange") + 1000), layout="api")
    tardis_config = SourceConfig(source="tardis", tardis_url=f"{archive_mirror.url}/tardis", cache_dir=tmp_path / "t")
    for exchange, symbol, config in (("binance-futures", "BTCUSDT", source_config),
                                     ("okx-perps", "BTC-USDT-SWAP", source_config),
                                     ("binance-futures", "BTCUSDT", tardis_config)):
        result = fetch_day(exchange, symbol, "2024-01-05", dest=tmp_path / f"{exchange}-{config.source}.parquet",
                           config=config)
        frame = pl.read_parquet(result.path)
        assert result.trade_count == 0 and frame.height == 0
        assert frame.schema == pl.Schema(CANONICAL_SCHEMA)
