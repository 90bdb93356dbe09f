# ruff: noqa: F811 - pytest fixtures imported from tests.http_fixtures are redefined as arguments
"""binance-futures source: archives written as Binance writes them, fetched through a real local HTTP server."""

from __future__ import annotations

import zipfile

import polars as pl
import pytest

from aperiodic_pipelines.domain.errors import (
    ChecksumMismatchError,
    CorruptArchiveError,
    NotPublishedError,
    SymbolError,
)
from aperiodic_pipelines.mirror.archives import (
    binance_csv,
    corrupt_zip,
    write_binance_month,
    write_checksum,
    write_wrong_checksum,
    write_zip,
)
from aperiodic_pipelines.sources import binance
from aperiodic_pipelines.sources.config import SourceConfig
from aperiodic_pipelines.trades import validate_trades
from tests.http_fixtures import as_ms, cached_files, tiny_tape

pytestmark = pytest.mark.slow  # starts a web server

SYMBOL = "perpetual-BTC-USDT:USDT"
MONTH = "2024-01"


def _fetch(tmp_path, config, downloader, name="out.parquet", **kwargs):
    result = binance.fetch_month(SYMBOL, MONTH, dest=tmp_path / "raw" / name, config=config, downloader=downloader)
    out = pl.read_parquet(result.path)
    validate_trades(out)
    return result, out


def _equal(actual: pl.DataFrame, expected: pl.DataFrame) -> None:
    assert actual.columns == expected.columns
    assert actual.height == expected.height
    assert actual.equals(expected), (actual.head(), expected.head())


def test_zip_bytes_match_the_published_format(mirror_root):
    trades = pl.DataFrame(
        {"ts_exchange": [1704067200098123, 1704067201000000], "ts_arrival": [None, None], "trade_id": [5, 6],
         "price": [42283.8, 42283.9], "qty": [0.004, 1.5], "is_buy": [False, True]},
        schema_overrides={"ts_arrival": pl.Int64},
    )
    (path,) = write_binance_month(mirror_root, "BTCUSDT", MONTH, trades)
    assert path.relative_to(mirror_root).as_posix() == (
        "data/futures/um/monthly/aggTrades/BTCUSDT/BTCUSDT-aggTrades-2024-01.zip"
    )
    with zipfile.ZipFile(path) as archive:
        assert archive.namelist() == ["BTCUSDT-aggTrades-2024-01.csv"]
        text = archive.read("BTCUSDT-aggTrades-2024-01.csv").decode()
    assert text == (
        "agg_trade_id,price,quantity,first_trade_id,last_trade_id,transact_time,is_buyer_maker\n"
        "5,42283.8,0.004,15,17,1704067200098,true\n"
        "6,42283.9,1.5,18,20,1704067201000,false\n"
    )
    sidecar = path.with_name(path.name + ".CHECKSUM").read_text()
    assert sidecar.endswith("  BTCUSDT-aggTrades-2024-01.zip\n") and len(sidecar.split()[0]) == 64
    assert binance_csv(trades, dataset="trades", header=True).decode().splitlines()[:2] == [
        "id,price,qty,quote_qty,time,is_buyer_maker",
        "5,42283.8,0.004,169.1352,1704067200098,true",
    ]


@pytest.mark.parametrize("header", [True, False])
def test_monthly_aggtrades_row_by_row(tmp_path, mirror_root, source_config, fast_downloader, header):
    tape = tiny_tape()
    write_binance_month(mirror_root, "BTCUSDT", MONTH, tape, header=header)
    result, out = _fetch(tmp_path, source_config, fast_downloader)
    _equal(out, as_ms(tape))
    assert (result.exchange, result.native_symbol, result.dataset, result.month) == (
        "binance-futures", "BTCUSDT", "aggTrades", MONTH)
    assert result.trade_count == tape.height and result.duplicates_dropped == 0 and result.id_gaps == 0
    assert not result.has_arrival_times and out["ts_arrival"].null_count() == out.height
    (obj,) = result.objects
    assert obj.location.endswith("/BTCUSDT-aggTrades-2024-01.zip") and len(obj.sha256) == 64 and obj.size > 0


def test_taker_side_is_the_opposite_of_is_buyer_maker(tmp_path, mirror_root, source_config, fast_downloader):
    tape = tiny_tape(n=50)
    write_binance_month(mirror_root, "BTCUSDT", MONTH, tape)
    _, out = _fetch(tmp_path, source_config, fast_downloader)
    with zipfile.ZipFile(mirror_root / binance.archive_path("BTCUSDT", "aggTrades", MONTH)) as archive:
        raw = pl.read_csv(archive.read(archive.namelist()[0]))
    joined = out.join(raw, left_on="trade_id", right_on="agg_trade_id")
    assert joined.height == 50
    assert (joined["is_buy"] == ~joined["is_buyer_maker"]).all()
    assert joined["is_buy"].any() and not joined["is_buy"].all()


def test_trades_dataset_is_an_option_and_is_recorded(tmp_path, mirror_root, source_config, fast_downloader):
    tape = tiny_tape()
    write_binance_month(mirror_root, "BTCUSDT", MONTH, tape, dataset="trades")
    config = SourceConfig(**{**source_config.__dict__, "binance_dataset": "trades"})
    result, out = _fetch(tmp_path, config, fast_downloader)
    _equal(out, as_ms(tape))
    assert result.dataset == "trades" and "/trades/BTCUSDT/" in result.objects[0].location


def test_interleaved_rows_duplicates_and_id_gaps(tmp_path, mirror_root, source_config, fast_downloader):
    tape = tiny_tape(n=600)
    holes = tape.filter(~pl.col("trade_id").is_in([100, 101, 250]))  # two places where ids jump
    write_binance_month(mirror_root, "BTCUSDT", MONTH, holes, interleave=True, duplicate_rows=9)
    result, out = _fetch(tmp_path, source_config, fast_downloader)
    _equal(out, as_ms(holes))
    assert result.duplicates_dropped == 9
    assert result.id_gaps == 2
    assert result.trade_count == holes.height
    # The sort path writes exactly the bytes the already-sorted path writes for the same trades.
    write_binance_month(mirror_root, "ETHUSDT", MONTH, holes)
    clean = binance.fetch_month("perpetual-ETH-USDT:USDT", MONTH, dest=tmp_path / "clean.parquet",
                                config=source_config, downloader=fast_downloader)
    assert clean.duplicates_dropped == 0 and clean.path.read_bytes() == result.path.read_bytes()


def test_microsecond_timestamps_are_recognised(tmp_path, mirror_root, source_config, fast_downloader):
    tape = tiny_tape()
    write_binance_month(mirror_root, "BTCUSDT", MONTH, tape, timestamp_unit="us")
    _, out = _fetch(tmp_path, source_config, fast_downloader)
    _equal(out, tape.with_columns(ts_arrival=pl.lit(None, dtype=pl.Int64)))


def test_daily_files_when_the_monthly_one_is_not_published(tmp_path, mirror_root, source_config, fast_downloader,
                                                           archive_mirror):
    tape = tiny_tape()
    write_binance_month(mirror_root, "BTCUSDT", MONTH, tape, daily=True)
    # The first daily file also carries a row from the previous month, the last one from the next: trimmed.
    first = mirror_root / binance.archive_path("BTCUSDT", "aggTrades", "2024-01-01")
    last = mirror_root / binance.archive_path("BTCUSDT", "aggTrades", "2024-01-31")
    for path, stray_ts in ((first, 1704067199999000), (last, 1706745600000000)):
        with zipfile.ZipFile(path) as archive:
            name = archive.namelist()[0]
            text = archive.read(name).decode()
        stray = tape.head(1).with_columns(ts_exchange=pl.lit(stray_ts), trade_id=pl.lit(10_000_000 + stray_ts % 7))
        write_zip(path, name, (text + binance_csv(stray, header=False).decode()).encode())
        write_checksum(path)
    result, out = _fetch(tmp_path, source_config, fast_downloader)
    _equal(out, as_ms(tape))
    assert len(result.objects) == 31 and result.objects[0].location.endswith("BTCUSDT-aggTrades-2024-01-01.zip")
    # the monthly CHECKSUM's 404, asked again (it may appear seconds later), nothing more
    assert archive_mirror.count("data/futures/um/monthly/*") == fast_downloader.retry.not_found_attempts


def test_missing_month_is_one_not_published_error(tmp_path, mirror_root, source_config, fast_downloader):
    tape = tiny_tape()
    write_binance_month(mirror_root, "BTCUSDT", MONTH, tape, daily=True)
    (mirror_root / binance.archive_path("BTCUSDT", "aggTrades", "2024-01-17")).unlink()
    with pytest.raises(NotPublishedError, match=r"incomplete upstream.*1 day\(s\): 2024-01-17 "
                                                r"\(not published: BTCUSDT-aggTrades-2024-01-17\.zip\)\. Set APERIODIC_ALLOW"):
        _fetch(tmp_path, source_config, fast_downloader)
    assert not (tmp_path / "raw" / "out.parquet").exists()


def test_monthly_row_outside_the_month_is_a_malformed_row_error(tmp_path, mirror_root, source_config,
                                                                fast_downloader):
    tape = tiny_tape()
    stray = tape.head(1).with_columns(ts_exchange=pl.lit(1706745600123000), trade_id=pl.lit(999_999, dtype=pl.Int64))
    write_binance_month(mirror_root, "BTCUSDT", MONTH, pl.concat([tape, stray]))
    with pytest.raises(CorruptArchiveError, match=r"BTCUSDT-aggTrades-2024-01\.zip.*outside the month.*999999"):
        _fetch(tmp_path, source_config, fast_downloader)
    assert not (tmp_path / "raw" / "out.parquet").exists()


def test_malformed_row_names_the_file(tmp_path, mirror_root, source_config, fast_downloader):
    path = mirror_root / binance.archive_path("BTCUSDT", "aggTrades", MONTH)
    write_zip(path, "BTCUSDT-aggTrades-2024-01.csv",
              b"1,42000.1,0.5,1,1,1704067200000,true\n2,not-a-price,0.5,2,2,1704067201000,false\n")
    write_checksum(path)
    with pytest.raises(CorruptArchiveError, match=r"BTCUSDT-aggTrades-2024-01\.zip: malformed row"):
        _fetch(tmp_path, source_config, fast_downloader)


def test_wrong_checksum_fails_and_caches_nothing(tmp_path, mirror_root, source_config, fast_downloader):
    (path,) = write_binance_month(mirror_root, "BTCUSDT", MONTH, tiny_tape())
    wrong = write_wrong_checksum(path)
    with pytest.raises(ChecksumMismatchError, match=rf"BTCUSDT-aggTrades-2024-01\.zip.*{wrong}"):
        _fetch(tmp_path, source_config, fast_downloader)
    assert cached_files(source_config.cache_dir) == []
    assert not (tmp_path / "raw" / "out.parquet").exists()


def test_corrupt_zip_fails_and_leaves_nothing_cached(tmp_path, mirror_root, source_config, fast_downloader):
    (path,) = write_binance_month(mirror_root, "BTCUSDT", MONTH, tiny_tape(n=3000))
    corrupt_zip(path)  # the published checksum matches the damaged bytes
    with pytest.raises(CorruptArchiveError, match=r"BTCUSDT-aggTrades-2024-01\.zip"):
        _fetch(tmp_path, source_config, fast_downloader)
    assert cached_files(source_config.cache_dir) == []
    assert not (tmp_path / "raw" / "out.parquet").exists()


def test_rerun_uses_the_cache_and_a_changed_upstream_is_noticed(tmp_path, mirror_root, source_config,
                                                                 fast_downloader, archive_mirror):
    tape = tiny_tape()
    write_binance_month(mirror_root, "BTCUSDT", MONTH, tape)
    first, out1 = _fetch(tmp_path, source_config, fast_downloader, name="a.parquet")
    second, out2 = _fetch(tmp_path, source_config, fast_downloader, name="b.parquet")
    zip_glob = "data/futures/um/monthly/aggTrades/BTCUSDT/*.zip"
    assert archive_mirror.count(zip_glob) == 1  # no second GET of the zip
    assert (tmp_path / "raw" / "a.parquet").read_bytes() == (tmp_path / "raw" / "b.parquet").read_bytes()
    assert first.objects == second.objects
    # Upstream republishes the month with one trade fewer: the new checksum makes the rerun fetch again.
    write_binance_month(mirror_root, "BTCUSDT", MONTH, tape.slice(1))
    third, out3 = _fetch(tmp_path, source_config, fast_downloader, name="c.parquet")
    assert archive_mirror.count(zip_glob) == 2
    assert third.objects[0].sha256 != first.objects[0].sha256 and out3.height == tape.height - 1


def test_transient_server_errors_are_retried_through_fetch_month(tmp_path, mirror_root, source_config,
                                                                 fast_downloader, archive_mirror):
    tape = tiny_tape()
    write_binance_month(mirror_root, "BTCUSDT", MONTH, tape)
    archive_mirror.fail_next("*.CHECKSUM", status=502, times=1)
    archive_mirror.drop_next("*-2024-01.zip", times=1)
    archive_mirror.truncate_next("*-2024-01.zip", times=1)
    _, out = _fetch(tmp_path, source_config, fast_downloader)
    _equal(out, as_ms(tape))
    assert archive_mirror.count("*-2024-01.zip") == 3


def test_output_is_byte_identical_across_independent_runs(tmp_path, mirror_root, source_config):
    from tests.http_fixtures import FAST_RETRY

    tape = tiny_tape()
    write_binance_month(mirror_root, "BTCUSDT", MONTH, tape, interleave=True, duplicate_rows=3)
    outputs = []
    for run in range(2):
        config = SourceConfig(**{**source_config.__dict__, "cache_dir": tmp_path / f"cache{run}"})
        downloader = binance.Downloader(config.cache_dir, retry=FAST_RETRY)
        result = binance.fetch_month(SYMBOL, MONTH, dest=tmp_path / f"run{run}.parquet", config=config,
                                     downloader=downloader)
        outputs.append(result.path.read_bytes())
    assert outputs[0] == outputs[1]


def test_unknown_symbol_is_rejected_before_any_request(tmp_path, source_config, archive_mirror):
    with pytest.raises(SymbolError):
        binance.fetch_month("not-a-symbol", MONTH, dest=tmp_path / "x.parquet", config=source_config)
    assert archive_mirror.requests == []
