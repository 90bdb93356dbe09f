# ruff: noqa: F811 - pytest fixtures imported from tests.http_fixtures are redefined as arguments
"""okx-perps source: daily UTC+8 archives written as OKX writes them, fetched through a real local HTTP server."""

from __future__ import annotations

import zipfile

import polars as pl
import pytest

from aperiodic_pipelines.domain.errors import (
    CorruptArchiveError,
    InvalidTradesError,
    NotPublishedError,
    SymbolError,
)
from aperiodic_pipelines.mirror.archives import corrupt_zip, write_okx_month, write_zip
from aperiodic_pipelines.sources import okx
from aperiodic_pipelines.sources.canonical import month_bounds_us
from aperiodic_pipelines.trades import validate_trades
from tests.http_fixtures import as_ms, cached_files, tiny_tape

pytestmark = pytest.mark.slow  # starts a web server

MONTH = "2024-01"
LINEAR = "perpetual-BTC-USDT:USDT"
HOUR_US = 3_600_000_000


def _fetch(tmp_path, config, downloader, symbol=LINEAR, name="out.parquet"):
    result = okx.fetch_month(symbol, MONTH, dest=tmp_path / "raw" / name, config=config, downloader=downloader)
    out = pl.read_parquet(result.path)
    validate_trades(out)
    return result, out


def _assert_trades(actual: pl.DataFrame, expected: pl.DataFrame, *, rel_qty: float = 1e-12) -> None:
    assert actual.height == expected.height
    assert actual.drop("qty").equals(expected.drop("qty"))
    ratio = (actual["qty"] / expected["qty"] - 1).abs().max()
    assert ratio is not None and ratio <= rel_qty, ratio


def _spanning_tape() -> pl.DataFrame:
    """Trades in the month plus some in the UTC+8 files' spill-over hours on both sides of it."""
    start, end = month_bounds_us(MONTH)
    tape = tiny_tape(n=500)
    before = tape.head(3).with_columns(
        ts_exchange=pl.Series([start - 8 * HOUR_US, start - 2 * HOUR_US, start - 1], dtype=pl.Int64),
        trade_id=pl.Series([-3, -2, -1], dtype=pl.Int64) + tape["trade_id"].min(),
    )
    after = tape.head(3).with_columns(
        ts_exchange=pl.Series([end, end + HOUR_US, end + 15 * HOUR_US], dtype=pl.Int64),
        trade_id=pl.Series([1, 2, 3], dtype=pl.Int64) + tape["trade_id"].max(),
    )
    return pl.concat([before, tape, after])


def test_archive_layout_and_bytes(mirror_root):
    trades = pl.DataFrame(
        {"ts_exchange": [1704038400123000], "ts_arrival": [None], "trade_id": [123456],
         "price": [42000.5], "qty": [0.03], "is_buy": [True]},
        schema_overrides={"ts_arrival": pl.Int64},
    )
    paths = write_okx_month(mirror_root, "BTC-USDT-SWAP", MONTH, trades)
    assert len(paths) == 32  # Jan 1 .. Feb 1 (UTC+8 file days)
    assert paths[0].relative_to(mirror_root).as_posix() == "trades/daily/20240101/BTC-USDT-SWAP-trades-2024-01-01.zip"
    assert paths[-1].name == "BTC-USDT-SWAP-trades-2024-02-01.zip"
    with zipfile.ZipFile(paths[0]) as archive:
        assert archive.namelist() == ["BTC-USDT-SWAP-trades-2024-01-01.csv"]
        text = archive.read(archive.namelist()[0]).decode()
    # 2023-12-31 16:00 UTC is the first instant of the file dated 2024-01-01 (UTC+8 midnight).
    assert text == "instrument_name,trade_id,side,price,size,created_time\nBTC-USDT-SWAP,123456,buy,42000.5,3.0,1704038400123\n"
    legacy = write_okx_month(mirror_root / "legacy", "BTC-USDT-SWAP", MONTH, trades, legacy_header=True)
    with zipfile.ZipFile(legacy[0]) as archive:
        text = archive.read(archive.namelist()[0]).decode()
    assert text == "trade_id/交易id,side/交易方向,size/数量,price/价格,created_time/成交时间\n123456,buy,3.0,42000.5,1704038400123\n"


@pytest.mark.parametrize("legacy_header", [False, True])
def test_month_is_trimmed_from_utc8_files_at_both_ends(tmp_path, mirror_root, source_config, fast_downloader,
                                                       legacy_header):
    tape = _spanning_tape()
    write_okx_month(mirror_root, "BTC-USDT-SWAP", MONTH, tape, legacy_header=legacy_header)
    result, out = _fetch(tmp_path, source_config, fast_downloader)
    start, end = month_bounds_us(MONTH)
    expected = as_ms(tape).filter(pl.col("ts_exchange").is_between(start, end, closed="left"))
    assert expected.height == tape.height - 6
    _assert_trades(out, expected)
    assert (result.native_symbol, result.dataset, len(result.objects)) == ("BTC-USDT-SWAP", "trades", 32)
    assert all(len(o.sha256) == 64 and o.size > 0 for o in result.objects)


def test_current_header_with_source_column(tmp_path, mirror_root, source_config, fast_downloader):
    tape = tiny_tape()
    write_okx_month(mirror_root, "BTC-USDT-SWAP", MONTH, tape, with_source_column=True)
    _, out = _fetch(tmp_path, source_config, fast_downloader)
    _assert_trades(out, as_ms(tape))


def test_contracts_become_base_units(tmp_path, mirror_root, source_config, fast_downloader):
    tape = tiny_tape(n=200)
    write_okx_month(mirror_root, "ETH-USDT-SWAP", MONTH, tape)
    write_okx_month(mirror_root, "BTC-USD-SWAP", MONTH, tape)
    with zipfile.ZipFile(mirror_root / okx.archive_path("ETH-USDT-SWAP", okx.file_dates(MONTH)[5])) as archive:
        eth_rows = pl.read_csv(archive.read(archive.namelist()[0]))
    joined = eth_rows.join(tape, on="trade_id")
    assert joined.height > 0 and ((joined["size"] * 0.1 - joined["qty"]).abs() < 1e-12).all()  # 0.1 ETH each
    _, eth = _fetch(tmp_path, source_config, fast_downloader, symbol="perpetual-ETH-USDT:USDT", name="eth.parquet")
    _assert_trades(eth, as_ms(tape))
    with zipfile.ZipFile(mirror_root / okx.archive_path("BTC-USD-SWAP", okx.file_dates(MONTH)[5])) as archive:
        inverse_rows = pl.read_csv(archive.read(archive.namelist()[0]))
    joined = inverse_rows.join(tape, on="trade_id")
    assert ((joined["size"] * 100 / joined["price_right"] - joined["qty"]).abs() < 1e-12).all()  # 100 USD each
    _, inverse = _fetch(tmp_path, source_config, fast_downloader, symbol="perpetual-BTC-USD:BTC", name="inv.parquet")
    _assert_trades(inverse, as_ms(tape), rel_qty=1e-9)


def test_taker_side_is_the_side_column(tmp_path, mirror_root, source_config, fast_downloader):
    tape = tiny_tape(n=100)
    write_okx_month(mirror_root, "BTC-USDT-SWAP", MONTH, tape)
    _, out = _fetch(tmp_path, source_config, fast_downloader)
    assert out["is_buy"].to_list() == as_ms(tape)["is_buy"].to_list()
    assert out["is_buy"].any() and not out["is_buy"].all()


def test_unknown_instrument_fails_before_any_download(tmp_path, source_config, fast_downloader, archive_mirror):
    with pytest.raises(SymbolError, match=r"DOGE-USDT-SWAP.*no contract value"):
        _fetch(tmp_path, source_config, fast_downloader, symbol="perpetual-DOGE-USDT:USDT")
    assert archive_mirror.requests == []


def test_missing_day_is_one_not_published_error(tmp_path, mirror_root, source_config, fast_downloader):
    paths = write_okx_month(mirror_root, "BTC-USDT-SWAP", MONTH, tiny_tape())
    paths[-1].unlink()  # the 2024-02-01 file (UTC+8) holds the month's last 8 hours
    with pytest.raises(NotPublishedError,
                       match=r"incomplete upstream.*2024-01-31 \(not published: BTC-USDT-SWAP-trades-2024-02-01\.zip"):
        _fetch(tmp_path, source_config, fast_downloader)
    assert not (tmp_path / "raw" / "out.parquet").exists()


def test_bad_side_is_rejected_naming_the_file(tmp_path, mirror_root, source_config, fast_downloader):
    paths = write_okx_month(mirror_root, "BTC-USDT-SWAP", MONTH, tiny_tape())
    with zipfile.ZipFile(paths[3]) as archive:
        name = archive.namelist()[0]
        text = archive.read(name).decode()
    write_zip(paths[3], name, (text + "BTC-USDT-SWAP,777777777,sideways,42000,1,1704250000000\n").encode())
    with pytest.raises(InvalidTradesError, match=r"BTC-USDT-SWAP-trades-2024-01-04\.zip.*trade_id=777777777"):
        _fetch(tmp_path, source_config, fast_downloader)


def test_corrupt_zip_fails_and_caches_nothing(tmp_path, mirror_root, source_config, fast_downloader):
    paths = write_okx_month(mirror_root, "BTC-USDT-SWAP", MONTH, tiny_tape(n=20_000))
    corrupt_zip(paths[10])
    with pytest.raises(CorruptArchiveError, match=r"BTC-USDT-SWAP-trades-2024-01-11\.zip"):
        _fetch(tmp_path, source_config, fast_downloader)
    assert not any("2024-01-11" in p.name for p in cached_files(source_config.cache_dir))
    assert not (tmp_path / "raw" / "out.parquet").exists()


def test_rerun_uses_the_cache_and_a_changed_upstream_is_noticed(tmp_path, mirror_root, source_config,
                                                                 fast_downloader, archive_mirror):
    tape = tiny_tape()
    write_okx_month(mirror_root, "BTC-USDT-SWAP", MONTH, tape)
    first, _ = _fetch(tmp_path, source_config, fast_downloader, name="a.parquet")
    second, _ = _fetch(tmp_path, source_config, fast_downloader, name="b.parquet")
    assert archive_mirror.count("trades/daily/*.zip") == 32  # second run: HEAD requests only
    assert archive_mirror.count("trades/daily/*.zip", method="HEAD") == 32
    assert (tmp_path / "raw" / "a.parquet").read_bytes() == (tmp_path / "raw" / "b.parquet").read_bytes()
    # Upstream republishes the month without one trade of the file dated 2024-01-10 (Jan 9 16:00 → Jan 10
    # 16:00 UTC): the HEAD request sees new validators and the rerun fetches again.
    changed_day = okx.file_dates(MONTH)[9]
    window_start = month_bounds_us(MONTH)[0] + 8 * 86_400_000_000 + 16 * HOUR_US
    dropped = tape.filter(pl.col("ts_exchange") >= window_start).row(0, named=True)
    assert dropped["ts_exchange"] < window_start + 86_400_000_000
    write_okx_month(mirror_root, "BTC-USDT-SWAP", MONTH, tape.filter(pl.col("trade_id") != dropped["trade_id"]))
    third, out = _fetch(tmp_path, source_config, fast_downloader, name="c.parquet")
    assert out.height == tape.height - 1
    assert archive_mirror.count(okx.archive_path("BTC-USDT-SWAP", changed_day)) == 2
    assert third.objects[9].sha256 != first.objects[9].sha256
    assert dropped["trade_id"] not in out["trade_id"]
