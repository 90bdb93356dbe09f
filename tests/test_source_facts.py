# ruff: noqa: F811 - pytest fixtures imported from tests.http_fixtures are redefined as arguments
"""Issue 8: what the exchanges and Tardis really publish, one test per fact (binance-futures, okx-perps, Tardis).

Every archive here is written by `aperiodic_pipelines.mirror.archives` in the real format and, where the
source downloads, served by a real `ArchiveMirror` on 127.0.0.1.
"""

from __future__ import annotations

import gzip
import json
import logging
import zipfile
from datetime import UTC, datetime

import polars as pl
import pytest

from aperiodic_pipelines.domain.errors import (
    ContractValueError,
    CorruptArchiveError,
    NotPublishedError,
    SymbolError,
)
from aperiodic_pipelines.mirror.archives import (
    GZIP_DAMAGE,
    ZIP_DAMAGE,
    damage_gzip,
    damage_zip,
    write_binance_month,
    write_okx_month,
    write_tardis_days,
    write_zip,
)
from aperiodic_pipelines.sources import binance, okx, tardis
from aperiodic_pipelines.sources.config import SourceConfig
from aperiodic_pipelines.sources.download import DownloadError
from aperiodic_pipelines.trades import CANONICAL_SCHEMA, validate_trades
from tests.http_fixtures import cached_files, tiny_tape

pytestmark = pytest.mark.slow  # starts a web server

SYMBOL = "perpetual-BTC-USDT:USDT"


def _us(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp() * 1_000_000)


def _trades(rows: list[tuple[str, int, float, float]], *, arrival_us: int = 0) -> pl.DataFrame:
    """(time, trade id, price, qty) rows → canonical trades (buys), arriving `arrival_us` after the trade."""
    return pl.DataFrame(
        {
            "ts_exchange": [_us(t) for t, *_ in rows],
            "ts_arrival": [_us(t) + arrival_us for t, *_ in rows],
            "trade_id": [i for _, i, _, _ in rows],
            "price": [p for *_, p, _ in rows],
            "qty": [q for *_, q in rows],
            "is_buy": [True] * len(rows),
        },
        schema=CANONICAL_SCHEMA,
    )


def _zip_text(path) -> str:
    with zipfile.ZipFile(path) as archive:
        return archive.read(archive.namelist()[0]).decode()


def _okx_file(paths, day: str):
    return next(p for p in paths if p.name.endswith(f"-trades-{day}.zip"))


# --- fact 1: OKX contract values change over time, at a time of day ---------------------------------------------

CHANGE_TRADES = [
    ("2020-03-10T12:00:00", 101, 7900.0, 0.01),  # 100 contracts of 0.0001 BTC
    ("2020-03-20T07:59:59", 102, 6100.0, 0.02),  # last second before the changeover window: still 0.0001 BTC
    ("2020-03-20T08:30:00", 103, 6200.0, 1.0),  # first instant after it: 100 contracts of 0.01 BTC
    ("2020-03-25T00:00:00", 104, 6700.0, 0.5),
]


def test_fact1_okx_contract_value_changes_at_time_of_day(tmp_path, mirror_root, source_config, fast_downloader):
    paths = write_okx_month(mirror_root, "BTC-USDT-SWAP", "2020-03", _trades(CHANGE_TRADES), header="legacy")
    # What OKX published: contracts. 0.01 BTC on the 10th and 1.0 BTC on the 20th are both 100 contracts.
    assert "101,buy,100.0," in _zip_text(_okx_file(paths, "2020-03-10"))  # UTC+8 file days
    assert "103,buy,100.0," in _zip_text(_okx_file(paths, "2020-03-20"))
    result = okx.fetch_month(SYMBOL, "2020-03", dest=tmp_path / "o.parquet", config=source_config,
                             downloader=fast_downloader)
    out = pl.read_parquet(result.path)
    validate_trades(out)
    assert out["trade_id"].to_list() == [101, 102, 103, 104]
    assert out["qty"].to_list() == [0.01, 0.02, 1.0, 0.5]  # not 1.0 BTC for the 100 contracts of 2020-03-10


def test_fact1_okx_contract_table_is_package_data_with_its_sources():
    table = okx.contract_table()
    btc = table["BTC-USDT-SWAP"]
    assert [(e.value, e.kind) for e in btc] == [(0.0001, "linear"), (0.01, "linear")]
    assert (btc[1].changeover_from_us, btc[1].effective_from_us) == (_us("2020-03-20T08:00"), _us("2020-03-20T08:30"))
    assert table["ETH-USDT-SWAP"][1].changeover_from_us == _us("2020-03-19T08:00")
    assert all(entry.source for entries in table.values() for entry in entries)


def test_fact1_okx_trade_inside_the_changeover_window_fails_loudly(tmp_path, mirror_root, source_config,
                                                                    fast_downloader):
    """OKX suspended trading 08:00–08:30 UTC to re-base: a trade stamped inside could be in either unit, so the
    month is refused rather than guessed."""
    paths = write_okx_month(mirror_root, "BTC-USDT-SWAP", "2020-03", _trades(CHANGE_TRADES), header="legacy")
    day = _okx_file(paths, "2020-03-20")
    inside = _us("2020-03-20T08:10:00") // 1000
    write_zip(day, "BTC-USDT-SWAP-trades-2020-03-20.csv", (_zip_text(day) + f"555,sell,7,6150,{inside}\n").encode())
    with pytest.raises(ContractValueError, match=r"2020-03-20\.zip: line \d+: trade_id=555 at 2020-03-20T08:10:00"
                                                 r".*inside a changeover window \[2020-03-20T08:00"):
        okx.fetch_month(SYMBOL, "2020-03", dest=tmp_path / "o.parquet", config=source_config,
                        downloader=fast_downloader)
    assert not (tmp_path / "o.parquet").exists()


def test_fact1_okx_time_or_instrument_outside_the_table_fails_before_any_download(tmp_path, source_config,
                                                                                   fast_downloader, archive_mirror):
    with pytest.raises(ContractValueError, match=r"BTC-USDT-SWAP: .*no contract value before 2019-12-01"):
        okx.fetch_month(SYMBOL, "2019-11", dest=tmp_path / "o.parquet", config=source_config,
                        downloader=fast_downloader)
    with pytest.raises(SymbolError, match=r"DOGE-USDT-SWAP.*okx_contracts\.csv"):
        okx.fetch_month("perpetual-DOGE-USDT:USDT", "2024-01", dest=tmp_path / "o.parquet", config=source_config,
                        downloader=fast_downloader)
    assert archive_mirror.requests == []


def test_fact1_tardis_okex_swap_amounts_use_the_value_at_each_trade_time(tmp_path):
    root = tmp_path / "downloads"
    write_tardis_days(root, "okx-perps", "BTC-USDT-SWAP", "2020-03", _trades(CHANGE_TRADES, arrival_us=2000))
    raw = pl.read_csv(gzip.decompress((root / "okex-swap_trades_2020-03-10_BTC-USDT-SWAP.csv.gz").read_bytes()))
    assert raw["amount"].to_list() == [100.0]
    result = tardis.fetch_month(SYMBOL, "2020-03", dest=tmp_path / "t.parquet",
                                config=SourceConfig(tardis_url=str(root), cache_dir=tmp_path / "c"),
                                exchange="okx-perps")
    assert pl.read_parquet(result.path)["qty"].to_list() == [0.01, 0.02, 1.0, 0.5]


# --- fact 2: Tardis layouts (client downloads, datasets API with a bearer key) ------------------------------------

SECRET = "TD.s3cr3t-key-never-shown"


def test_fact2_tardis_reads_a_directory_of_client_downloads(tmp_path):
    tape = tiny_tape(n=120, with_arrival=True)
    root = tmp_path / "datasets"
    paths = write_tardis_days(root, "binance-futures", "BTCUSDT", "2024-01", tape)
    assert {p.parent for p in paths} == {root}  # flat, as tardis-dev saves them
    assert paths[0].name == "binance-futures_trades_2024-01-01_BTCUSDT.csv.gz"
    result = tardis.fetch_month("perpetual-BTC-USDT:USDT", "2024-01", dest=tmp_path / "t.parquet",
                                config=SourceConfig(tardis_url=str(root), cache_dir=tmp_path / "c"),
                                exchange="binance-futures")
    assert pl.read_parquet(result.path).equals(tape)


def test_fact2_tardis_reads_the_datasets_api_with_a_bearer_key_never_shown(tmp_path, mirror_root, archive_mirror,
                                                                          fast_downloader, caplog):
    caplog.set_level(logging.DEBUG)
    tape = tiny_tape(n=120, with_arrival=True)
    write_tardis_days(mirror_root / "tardis", "binance-futures", "BTCUSDT", "2024-01", tape, layout="api")
    archive_mirror.require_bearer(SECRET, "tardis/v1/*")
    env = {"APERIODIC_TARDIS_URL": f"{archive_mirror.url}/tardis/v1", "APERIODIC_TARDIS_API_KEY": SECRET,
           "APERIODIC_CACHE_DIR": str(tmp_path / "cache")}
    config = SourceConfig.from_env(env)
    assert SECRET not in repr(config)
    result = tardis.fetch_month("perpetual-BTC-USDT:USDT", "2024-01", dest=tmp_path / "t.parquet", config=config,
                                exchange="binance-futures", downloader=fast_downloader)
    assert pl.read_parquet(result.path).equals(tape)
    assert archive_mirror.count("tardis/v1/binance-futures/trades/2024/01/31/BTCUSDT.csv.gz") == 1
    again = tardis.fetch_month("perpetual-BTC-USDT:USDT", "2024-01", dest=tmp_path / "t2.parquet", config=config,
                               exchange="binance-futures", downloader=fast_downloader)
    assert again.path.read_bytes() == result.path.read_bytes()
    # the rerun revalidated with HEAD requests that carried the key, and downloaded nothing
    assert archive_mirror.count("tardis/v1/binance-futures/trades/2024/01/31/BTCUSDT.csv.gz") == 1
    assert archive_mirror.count("tardis/v1/binance-futures/trades/2024/01/31/BTCUSDT.csv.gz", method="HEAD") == 1
    metadata = json.dumps(result.to_metadata())
    sidecars = "".join(p.read_text() for p in (tmp_path / "cache").rglob("*.meta.json"))
    for wrong in ({**env, "APERIODIC_TARDIS_API_KEY": "TD.wrong-key"}, {k: v for k, v in env.items()
                                                                         if k != "APERIODIC_TARDIS_API_KEY"}):
        wrong["APERIODIC_CACHE_DIR"] = str(tmp_path / "cache2")
        with pytest.raises(DownloadError, match="HTTP 401") as refused:
            tardis.fetch_month("perpetual-BTC-USDT:USDT", "2024-01", dest=tmp_path / "x.parquet",
                               config=SourceConfig.from_env(wrong), exchange="binance-futures",
                               downloader=fast_downloader)
        assert "TD.wrong-key" not in str(refused.value) and SECRET not in str(refused.value)
    for text in (metadata, sidecars, caplog.text):
        assert SECRET not in text


# --- fact 3: a Tardis day without data is an empty gzip file -----------------------------------------------------


def test_fact3_tardis_empty_gzip_day_means_no_trades(tmp_path, mirror_root, source_config, fast_downloader):
    tape = tiny_tape(n=200, with_arrival=True)
    quiet = pl.col("ts_arrival").is_between(_us("2024-01-10"), _us("2024-01-11"), closed="left")
    tape = tape.filter(~quiet & ~pl.col("ts_exchange").is_between(_us("2024-01-10"), _us("2024-01-11")))
    paths = write_tardis_days(mirror_root / "tardis", "binance-futures", "BTCUSDT", "2024-01", tape, layout="api")
    empty = next(p for p in paths if p.as_posix().endswith("2024/01/10/BTCUSDT.csv.gz"))
    assert gzip.decompress(empty.read_bytes()) == b""  # no header, no rows
    result = tardis.fetch_month("perpetual-BTC-USDT:USDT", "2024-01", dest=tmp_path / "t.parquet",
                                config=source_config, exchange="binance-futures", downloader=fast_downloader)
    assert pl.read_parquet(result.path).equals(tape)
    assert result.missing_days == [] and result.to_metadata()["missing_days"] == []


# --- fact 4: Tardis upper-cases symbols --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("atlas", "native", "in_file", "in_column"),
    [
        ("perpetual-KPEPE-USDC:USDC", "kPEPE", "KPEPE", "KPEPE"),
        ("perpetual-XYZ:AAPL-USDC:USDC", "xyz:AAPL", "XYZ-AAPL", "XYZ:AAPL"),
    ],
)
def test_fact4_tardis_upper_cased_symbols_map_back_to_native(tmp_path, mirror_root, source_config, fast_downloader,
                                                             atlas, native, in_file, in_column):
    tape = tiny_tape(n=80, with_arrival=True)
    paths = write_tardis_days(mirror_root / "tardis", "hyperliquid-perps", native, "2024-01", tape, layout="api")
    assert paths[0].as_posix().endswith(f"tardis/v1/hyperliquid/trades/2024/01/01/{in_file}.csv.gz")
    first_row = gzip.decompress(paths[0].read_bytes()).decode().splitlines()[1]
    assert first_row.startswith(f"hyperliquid,{in_column},")
    result = tardis.fetch_month(atlas, "2024-01", dest=tmp_path / "t.parquet", config=source_config,
                                exchange="hyperliquid-perps", downloader=fast_downloader)
    assert result.native_symbol == native and result.symbol == atlas
    assert pl.read_parquet(result.path).equals(tape)
    local = tmp_path / "downloads"
    assert write_tardis_days(local, "hyperliquid-perps", native, "2024-01", tape)[0].name == (
        f"hyperliquid_trades_2024-01-01_{in_file}.csv.gz"
    )
    again = tardis.fetch_month(atlas, "2024-01", dest=tmp_path / "l.parquet", exchange="hyperliquid-perps",
                               config=SourceConfig(tardis_url=str(local), cache_dir=tmp_path / "c"))
    assert again.path.read_bytes() == result.path.read_bytes()


# --- fact 8: OKX files before 2022 may have no header -----------------------------------------------------------


def test_fact8_okx_headerless_legacy_file(tmp_path, mirror_root, source_config, fast_downloader):
    tape = tiny_tape(month="2021-06", n=300)
    paths = write_okx_month(mirror_root, "BTC-USDT-SWAP", "2021-06", tape, header="none")
    first = _zip_text(paths[3]).splitlines()[0].split(",")
    assert len(first) == 5 and first[1] in ("buy", "sell")  # trade_id, side, size, price, created_time
    result = okx.fetch_month(SYMBOL, "2021-06", dest=tmp_path / "o.parquet", config=source_config,
                             downloader=fast_downloader)
    out = pl.read_parquet(result.path)
    expected = tape.with_columns(ts_exchange=pl.col("ts_exchange") // 1000 * 1000, ts_arrival=pl.lit(None))
    assert out.drop("qty").equals(expected.drop("qty"))
    assert ((out["qty"] / expected["qty"] - 1).abs().max() or 0) < 1e-12


def test_fact8_okx_headerless_file_of_another_shape_is_a_clear_error(tmp_path, mirror_root, source_config,
                                                                     fast_downloader):
    tape = tiny_tape(month="2021-06", n=300)
    paths = write_okx_month(mirror_root, "BTC-USDT-SWAP", "2021-06", tape, header="none")
    day = paths[4]
    text = _zip_text(day)
    current_order = "\n".join(",".join(["BTC-USDT-SWAP", *row.split(",")]) for row in text.splitlines()) + "\n"
    write_zip(day, "x.csv", current_order.encode())  # headerless, but not in the legacy order
    with pytest.raises(CorruptArchiveError, match=r"2021-06-05\.zip: no header and line 1 .* is not a legacy row"):
        okx.fetch_month(SYMBOL, "2021-06", dest=tmp_path / "o.parquet", config=source_config,
                        downloader=fast_downloader)
    lines = text.splitlines()
    lines.insert(2, lines[1] + ",extra")
    write_zip(day, "x.csv", ("\n".join(lines) + "\n").encode())  # a good first row, a bad third one
    with pytest.raises(CorruptArchiveError, match=r"2021-06-05\.zip: malformed row at line 3: .*6 fields, expected 5"):
        okx.fetch_month(SYMBOL, "2021-06", dest=tmp_path / "p.parquet", config=source_config,
                        downloader=fast_downloader)


# --- fact 9: missing days ---------------------------------------------------------------------------------------


def _write_with_a_missing_day(source: str, root):
    """Write a month for `source` with 2024-01-17 missing; return (fetch(config, downloader, dest), missing days)."""
    if source == "binance":
        write_binance_month(root, "BTCUSDT", "2024-01", tiny_tape(), daily=True)
        (root / binance.archive_path("BTCUSDT", "aggTrades", "2024-01-17")).unlink()
        return (lambda config, dl, dest: binance.fetch_month(SYMBOL, "2024-01", dest=dest, config=config,
                                                             downloader=dl)), ["2024-01-17"]
    if source == "okx":
        paths = write_okx_month(root, "BTC-USDT-SWAP", "2024-01", tiny_tape())
        _okx_file(paths, "2024-01-17").unlink()  # UTC+8: trades of Jan 16 16:00 to Jan 17 16:00 UTC
        return (lambda config, dl, dest: okx.fetch_month(SYMBOL, "2024-01", dest=dest, config=config,
                                                         downloader=dl)), ["2024-01-16", "2024-01-17"]
    paths = write_tardis_days(root / "tardis", "binance-futures", "BTCUSDT", "2024-01",
                              tiny_tape(with_arrival=True), layout="api")
    next(p for p in paths if p.as_posix().endswith("2024/01/17/BTCUSDT.csv.gz")).unlink()
    return (lambda config, dl, dest: tardis.fetch_month(SYMBOL, "2024-01", dest=dest, config=config,
                                                        exchange="binance-futures", downloader=dl)), ["2024-01-17"]


@pytest.mark.parametrize("source", ["binance", "okx", "tardis"])
def test_fact9_missing_day_fails_by_default_and_is_recorded_when_allowed(tmp_path, mirror_root, archive_mirror,
                                                                         fast_downloader, source):
    fetch, missing = _write_with_a_missing_day(source, mirror_root)
    env = {"APERIODIC_BINANCE_URL": archive_mirror.url, "APERIODIC_OKX_URL": archive_mirror.url,
           "APERIODIC_TARDIS_URL": f"{archive_mirror.url}/tardis", "APERIODIC_CACHE_DIR": str(tmp_path / "cache")}
    strict = SourceConfig.from_env(env)
    assert strict.allow_missing_days is False
    with pytest.raises(NotPublishedError, match=rf"incomplete upstream.*{', '.join(missing)}.*"
                                                r"APERIODIC_ALLOW_MISSING_DAYS=1"):
        fetch(strict, fast_downloader, tmp_path / "strict.parquet")
    assert not (tmp_path / "strict.parquet").exists()
    allowed = SourceConfig.from_env({**env, "APERIODIC_ALLOW_MISSING_DAYS": "1"})
    result = fetch(allowed, fast_downloader, tmp_path / "allowed.parquet")
    assert result.missing_days == missing and result.to_metadata()["missing_days"] == missing
    out = pl.read_parquet(result.path)
    assert out.height == result.trade_count > 0
    day = pl.col("ts_exchange").is_between(_us("2024-01-17T00:00"), _us("2024-01-17T12:00"))
    assert out.filter(day).height == 0  # the missing day's trades are absent, not invented


def test_fact9_okx_cdn_404_that_appears_seconds_later_is_retried(tmp_path, mirror_root, source_config,
                                                                  fast_downloader, archive_mirror):
    tape = tiny_tape()
    write_okx_month(mirror_root, "BTC-USDT-SWAP", "2024-01", tape)
    late = "trades/daily/20240117/BTC-USDT-SWAP-trades-2024-01-17.zip"
    archive_mirror.fail_next(late, status=404, times=2)
    result = okx.fetch_month(SYMBOL, "2024-01", dest=tmp_path / "o.parquet", config=source_config,
                             downloader=fast_downloader)
    assert result.missing_days == [] and result.trade_count == tape.height
    assert [s for m, p, s in archive_mirror.requests if p == late and m == "GET"] == [404, 404, 200]


@pytest.mark.parametrize("source", ["binance", "okx"])
def test_fact9_a_month_never_published_fails_without_waiting_on_each_day(tmp_path, mirror_root, source_config,
                                                                          fast_downloader, archive_mirror, source):
    """The month before an instrument's first month: no day answers, so none is asked again (a late 404 is only
    worth waiting for in a month that is there); the monthly Binance archive keeps its 404 patience."""
    write_binance_month(mirror_root, "BTCUSDT", "2024-02", tiny_tape("2024-02"), daily=True)  # another month only
    fetch = binance.fetch_month if source == "binance" else okx.fetch_month
    with pytest.raises(NotPublishedError, match=r"2024-01 is not published \(yet\).*every day"):
        fetch(SYMBOL, "2024-01", dest=tmp_path / "m.parquet", config=source_config, downloader=fast_downloader)
    gets = [path for method, path, status in archive_mirror.requests if method == "GET"]
    assert all(status == 404 for _m, _p, status in archive_mirror.requests)
    daily = [path for path in gets if "/daily/" in path]
    assert len(daily) == len(set(daily)) >= 31  # each daily object (or its CHECKSUM) asked exactly once
    monthly = [path for path in gets if "/monthly/" in path]
    assert len(monthly) == (fast_downloader.retry.not_found_attempts if source == "binance" else 0)
    assert not (tmp_path / "m.parquet").exists()


def test_fact9_a_missing_day_of_a_published_month_is_asked_again(tmp_path, mirror_root, archive_mirror,
                                                                 fast_downloader):
    fetch, missing = _write_with_a_missing_day("binance", mirror_root)
    config = SourceConfig.from_env({"APERIODIC_BINANCE_URL": archive_mirror.url,
                                    "APERIODIC_CACHE_DIR": str(tmp_path / "cache")})
    with pytest.raises(NotPublishedError, match="incomplete upstream"):
        fetch(config, fast_downloader, tmp_path / "m.parquet")
    asked = [p for m, p, s in archive_mirror.requests if m == "GET" and p.endswith("2024-01-17.zip")]
    assert len(asked) == 1 + fast_downloader.retry.not_found_attempts  # a first look, then the 404 patience
    asked_once = [p for m, p, s in archive_mirror.requests if m == "GET" and "2024-01-16.zip.CHECKSUM" in p]
    assert len(asked_once) == 1


# --- fact 10: every way an archive can be corrupt is one clear, permanent error ----------------------------------

_ZIP_MESSAGES = {
    "not_a_zip": r"is not a readable zip archive",
    "corrupt_deflate": r"corrupt deflate data|fails its CRC check|bytes inflated|truncated|malformed row|UTF-8|inflates past the \d+ bytes its archive declares",
    "truncated_member": r"is truncated: its deflate stream ends early",
    "crc_mismatch": r"fails its CRC check",
    "invalid_utf8": r"invalid UTF-8 at line 3",
}


@pytest.mark.parametrize("kind", ZIP_DAMAGE)
def test_fact10_binance_corrupt_archive(tmp_path, mirror_root, source_config, fast_downloader, archive_mirror, kind):
    (path,) = write_binance_month(mirror_root, "BTCUSDT", "2024-01", tiny_tape(n=3000))
    damage_zip(path, kind)  # the published CHECKSUM matches the damaged bytes
    with pytest.raises(CorruptArchiveError, match=rf"BTCUSDT-aggTrades-2024-01\.zip.*({_ZIP_MESSAGES[kind]})"):
        binance.fetch_month(SYMBOL, "2024-01", dest=tmp_path / "b.parquet", config=source_config,
                            downloader=fast_downloader)
    assert archive_mirror.count("data/futures/um/monthly/aggTrades/*.zip") == 1  # never retried
    assert cached_files(source_config.cache_dir) == []
    assert not (tmp_path / "b.parquet").exists()


@pytest.mark.parametrize("kind", ZIP_DAMAGE)
def test_fact10_okx_corrupt_archive(tmp_path, mirror_root, source_config, fast_downloader, archive_mirror, kind):
    paths = write_okx_month(mirror_root, "BTC-USDT-SWAP", "2024-01", tiny_tape(n=20_000))
    damage_zip(paths[10], kind)
    with pytest.raises(CorruptArchiveError, match=rf"BTC-USDT-SWAP-trades-2024-01-11\.zip.*({_ZIP_MESSAGES[kind]})"):
        okx.fetch_month(SYMBOL, "2024-01", dest=tmp_path / "o.parquet", config=source_config,
                        downloader=fast_downloader)
    assert archive_mirror.count("*2024-01-11.zip") == 1
    assert not any("2024-01-11" in p.name for p in cached_files(source_config.cache_dir))
    assert not (tmp_path / "o.parquet").exists()


_GZIP_MESSAGES = {
    "not_a_gzip": r"is not a gzip file",
    "corrupt_deflate": r"is not a readable gzip file|is truncated|malformed row|UTF-8",
    "truncated": r"is truncated",
    "crc_mismatch": r"is not a readable gzip file: CRC check failed",
    "frame_error": r"is not a readable gzip file",
    "invalid_utf8": r"invalid UTF-8 at line 3",
}


@pytest.mark.parametrize("kind", GZIP_DAMAGE)
def test_fact10_tardis_corrupt_archive(tmp_path, mirror_root, source_config, fast_downloader, archive_mirror, kind):
    paths = write_tardis_days(mirror_root / "tardis", "binance-futures", "BTCUSDT", "2024-01",
                              tiny_tape(n=20_000, with_arrival=True), layout="api")
    damaged = next(p for p in paths if p.as_posix().endswith("2024/01/11/BTCUSDT.csv.gz"))
    damage_gzip(damaged, kind)
    with pytest.raises(CorruptArchiveError, match=rf"trades/2024/01/11/BTCUSDT\.csv\.gz.*({_GZIP_MESSAGES[kind]})"):
        tardis.fetch_month(SYMBOL, "2024-01", dest=tmp_path / "t.parquet", config=source_config,
                           exchange="binance-futures", downloader=fast_downloader)
    assert archive_mirror.count("tardis/v1/*/2024/01/11/BTCUSDT.csv.gz") == 1
    assert not any("2024/01/11" in p.as_posix() for p in cached_files(source_config.cache_dir))
    assert not (tmp_path / "t.parquet").exists()
    # the same file read from a local directory of downloads fails the same way
    local = tmp_path / "downloads"
    write_tardis_days(local, "binance-futures", "BTCUSDT", "2024-01", tiny_tape(n=2_000, with_arrival=True))
    (local / "binance-futures_trades_2024-01-11_BTCUSDT.csv.gz").write_bytes(damaged.read_bytes())
    with pytest.raises(CorruptArchiveError, match=r"binance-futures_trades_2024-01-11_BTCUSDT\.csv\.gz"):
        tardis.fetch_month(SYMBOL, "2024-01", dest=tmp_path / "l.parquet", exchange="binance-futures",
                           config=SourceConfig(tardis_url=str(local), cache_dir=tmp_path / "c"))
