# ruff: noqa: F811 - pytest fixtures imported from tests.http_fixtures are redefined as arguments
"""Tardis-format CSV source: gzip day files by arrival time, from a local directory and over real local HTTP."""

from __future__ import annotations

import gzip

import polars as pl
import pytest

from aperiodic_pipelines.domain.errors import CorruptArchiveError, InvalidTradesError, NotPublishedError
from aperiodic_pipelines.mirror.archives import write_tardis_days
from aperiodic_pipelines.sources import tardis
from aperiodic_pipelines.sources.canonical import month_bounds_us
from aperiodic_pipelines.sources.config import SourceConfig
from aperiodic_pipelines.trades import validate_trades
from tests.http_fixtures import tiny_tape

MONTH = "2024-01"
SYMBOL = "perpetual-BTC-USDT:USDT"


def _edge_tape() -> pl.DataFrame:
    """Month trades plus: one from Dec 31 arriving Jan 1 (out), one of Jan 31 arriving Feb 1 (in)."""
    start, end = month_bounds_us(MONTH)
    tape = tiny_tape(n=300, with_arrival=True)
    edges = pl.DataFrame(
        {"ts_exchange": [start - 500, end - 500], "ts_arrival": [start + 1500, end + 1500],
         "trade_id": [0, tape["trade_id"].max() + 1], "price": [42000.0, 42001.5], "qty": [0.25, 0.5],
         "is_buy": [True, False]},
        schema=tape.schema,
    )
    return pl.concat([tape, edges]).sort("ts_exchange", "trade_id")


def _local_config(tmp_path, root) -> SourceConfig:
    return SourceConfig(tardis_url=str(root), cache_dir=tmp_path / "cache")


def test_file_layout_and_bytes(tmp_path):
    tape = _edge_tape()
    paths = write_tardis_days(tmp_path, "binance-futures", "BTCUSDT", MONTH, tape)
    names = [p.relative_to(tmp_path).as_posix() for p in paths]
    assert names[0] == "binance-futures_trades_2024-01-01_BTCUSDT.csv.gz"  # as the tardis-dev clients save them
    assert names[-1] == "binance-futures_trades_2024-02-01_BTCUSDT.csv.gz" and len(names) == 32
    api = write_tardis_days(tmp_path / "api", "binance-futures", "BTCUSDT", MONTH, tape, layout="api")
    assert api[0].relative_to(tmp_path / "api").as_posix() == "v1/binance-futures/trades/2024/01/01/BTCUSDT.csv.gz"
    lines = gzip.decompress(paths[0].read_bytes()).decode().splitlines()
    assert lines[0] == "exchange,symbol,timestamp,local_timestamp,id,side,price,amount"
    assert lines[1] == "binance-futures,BTCUSDT,1704067199999500,1704067200001500,0,buy,42000.0,0.25"
    assert paths[0].read_bytes() == write_tardis_days(tmp_path / "again", "binance-futures", "BTCUSDT", MONTH,
                                                      tape)[0].read_bytes()


def test_local_directory_month_with_arrival_times(tmp_path):
    tape = _edge_tape()
    root = tmp_path / "tardis"
    write_tardis_days(root, "binance-futures", "BTCUSDT", MONTH, tape)
    result = tardis.fetch_month(SYMBOL, MONTH, dest=tmp_path / "out.parquet", config=_local_config(tmp_path, root),
                                exchange="binance-futures")
    out = pl.read_parquet(result.path)
    validate_trades(out)
    start, end = month_bounds_us(MONTH)
    expected = tape.filter(pl.col("ts_exchange").is_between(start, end, closed="left"))
    assert expected.height == tape.height - 1 and expected["trade_id"].max() in out["trade_id"]
    assert out.equals(expected)  # µs kept, ts_arrival = local_timestamp
    assert result.has_arrival_times and result.dataset == "tardis" and result.trade_count == expected.height
    assert len(result.objects) == 32 and result.objects[0].location.endswith("_trades_2024-01-01_BTCUSDT.csv.gz")


def test_missing_edge_files_are_optional_but_days_of_the_month_are_not(tmp_path):
    root = tmp_path / "tardis"
    paths = write_tardis_days(root, "binance-futures", "BTCUSDT", MONTH, tiny_tape(n=300, with_arrival=True))
    config = _local_config(tmp_path, root)
    result = tardis.fetch_month(SYMBOL, MONTH, dest=tmp_path / "a.parquet", config=config, exchange="binance-futures")
    assert len(result.objects) == len(paths)  # no Dec 31 file here: an edge file may be missing
    assert not any("2023-12-31" in o.location for o in result.objects)
    paths[4].unlink()
    with pytest.raises(NotPublishedError, match=r"incomplete upstream.*2024-01-05.*_trades_2024-01-05_BTCUSDT\.csv\.gz"):
        tardis.fetch_month(SYMBOL, MONTH, dest=tmp_path / "b.parquet", config=config, exchange="binance-futures")


def test_okx_amounts_are_contracts(tmp_path):
    tape = tiny_tape(n=200, with_arrival=True)
    root = tmp_path / "tardis"
    paths = write_tardis_days(root, "okx-perps", "BTC-USDT-SWAP", MONTH, tape)
    assert paths[0].relative_to(root).as_posix() == "okex-swap_trades_2024-01-01_BTC-USDT-SWAP.csv.gz"
    raw = pl.read_csv(gzip.decompress(paths[3].read_bytes())).join(tape, left_on="id", right_on="trade_id")
    assert ((raw["amount"] * 0.01 - raw["qty"]).abs() < 1e-12).all()
    result = tardis.fetch_month("perpetual-BTC-USDT:USDT", MONTH, dest=tmp_path / "o.parquet",
                                config=_local_config(tmp_path, root), exchange="okx-perps")
    out = pl.read_parquet(result.path)
    assert out.drop("qty").equals(tape.drop("qty"))
    assert ((out["qty"] / tape["qty"] - 1).abs().max() or 0) < 1e-12


def test_non_numeric_ids_and_unknown_sides_are_clear_errors(tmp_path):
    root = tmp_path / "tardis"
    paths = write_tardis_days(root, "binance-futures", "BTCUSDT", MONTH, tiny_tape(n=100, with_arrival=True))
    config = _local_config(tmp_path, root)
    original = paths[2].read_bytes()
    text = gzip.decompress(original).decode()
    paths[2].write_bytes(gzip.compress(
        (text + "binance-futures,BTCUSDT,1704240000000000,1704240000001000,abc-1,buy,42000.0,0.1\n").encode()))
    with pytest.raises(CorruptArchiveError, match=r"2024-01-03_BTCUSDT\.csv\.gz: line \d+: trade ids must be numeric.*abc-1"):
        tardis.fetch_month(SYMBOL, MONTH, dest=tmp_path / "x.parquet", config=config, exchange="binance-futures")
    paths[2].write_bytes(gzip.compress(
        (text + "binance-futures,BTCUSDT,1704240000000000,1704240000001000,99999999,unknown,42000.0,0.1\n").encode()))
    with pytest.raises(InvalidTradesError, match=r"2024-01-03_BTCUSDT\.csv\.gz.*trade_id=99999999"):
        tardis.fetch_month(SYMBOL, MONTH, dest=tmp_path / "x.parquet", config=config, exchange="binance-futures")
    paths[2].write_bytes(original[: len(original) // 2])
    with pytest.raises(CorruptArchiveError, match=r"2024-01-03_BTCUSDT\.csv\.gz is truncated"):
        tardis.fetch_month(SYMBOL, MONTH, dest=tmp_path / "x.parquet", config=config, exchange="binance-futures")
    assert not (tmp_path / "x.parquet").exists()


@pytest.mark.slow  # starts a web server
def test_over_http_with_cache(tmp_path, mirror_root, source_config, fast_downloader, archive_mirror):
    tape = _edge_tape()
    write_tardis_days(mirror_root / "tardis", "binance-futures", "BTCUSDT", MONTH, tape, layout="api")
    first = tardis.fetch_month(SYMBOL, MONTH, dest=tmp_path / "a.parquet", config=source_config,
                               exchange="binance-futures", downloader=fast_downloader)
    second = tardis.fetch_month(SYMBOL, MONTH, dest=tmp_path / "b.parquet", config=source_config,
                                exchange="binance-futures", downloader=fast_downloader)
    assert first.path.read_bytes() == second.path.read_bytes()
    served = [p for m, p, status in archive_mirror.requests if m == "GET" and status == 200]
    assert len(served) == 32  # the second run downloads nothing
    # absent edge file: optional (it only adds trades that arrived across midnight), so one 404 per run and no
    # waiting for it to appear (sources/days.py)
    assert archive_mirror.count("tardis/v1/*/2023/12/31/BTCUSDT.csv.gz") == 2
    assert first.objects[0].location.startswith(archive_mirror.url)
    downloads = tmp_path / "downloads"
    write_tardis_days(downloads, "binance-futures", "BTCUSDT", MONTH, tape)
    local = tardis.fetch_month(SYMBOL, MONTH, dest=tmp_path / "c.parquet",
                               config=_local_config(tmp_path, downloads), exchange="binance-futures")
    assert local.path.read_bytes() == first.path.read_bytes()


def test_canonical_month_sorts_dedupes_and_refuses_conflicting_ids(tmp_path):
    from aperiodic_pipelines.sources.canonical import (
        TradeFile,
        build_canonical_month,
        next_month,
        previous_month,
    )

    assert (previous_month("2024-01"), next_month("2024-12")) == ("2023-12", "2025-01")
    start, _ = month_bounds_us(MONTH)
    day = 86_400_000_000
    rows = pl.DataFrame(
        {"ts_exchange": [start + 2 * day, start + 5, start + 5, start + 1], "ts_arrival": [None] * 4,
         "trade_id": [9, 4, 4, 2], "price": [1.0, 2.0, 2.0, 3.0], "qty": [1.0, 1.0, 1.0, 1.0],
         "is_buy": [True, False, False, True]},
        schema_overrides={"ts_arrival": pl.Int64},
    )
    stats = build_canonical_month([TradeFile("a.csv", rows.lazy())], MONTH, tmp_path / "ok.parquet",
                                  outside_month="error")
    out = pl.read_parquet(tmp_path / "ok.parquet")
    assert out["trade_id"].to_list() == [2, 4, 9] and (stats.duplicates_dropped, stats.id_gaps) == (1, 2)
    conflict = rows.with_columns(trade_id=pl.Series([4, 4, 4, 2]))  # id 4 on day 1 and on day 3
    with pytest.raises(CorruptArchiveError, match="trade_id=4"):
        build_canonical_month([TradeFile("b.csv", conflict.lazy())], MONTH, tmp_path / "bad.parquet",
                              outside_month="error")
    assert not (tmp_path / "bad.parquet").exists()
    empty = build_canonical_month([], MONTH, tmp_path / "empty.parquet", outside_month="trim")
    assert empty.trade_count == 0 and pl.read_parquet(tmp_path / "empty.parquet").height == 0


def test_trimming_never_hides_a_row_without_a_time(tmp_path):
    from aperiodic_pipelines.sources.canonical import TradeFile, build_canonical_month

    start, end = month_bounds_us(MONTH)
    rows = pl.DataFrame(
        {"ts_exchange": [start - 1, start + 7, None, end], "ts_arrival": [None] * 4, "trade_id": [1, 2, 3, 4],
         "price": [1.0] * 4, "qty": [1.0] * 4, "is_buy": [True] * 4},
        schema_overrides={"ts_arrival": pl.Int64, "ts_exchange": pl.Int64},
    )
    good = TradeFile("good.csv", rows.filter(pl.col("ts_exchange").is_not_null()).lazy())
    stats = build_canonical_month([good], MONTH, tmp_path / "ok.parquet", outside_month="trim")
    assert stats.trade_count == 1  # the rows just outside the month are trimmed
    with pytest.raises(InvalidTradesError, match=r"day-2\.csv: malformed rows \(1 with null values.*trade_id=3"):
        build_canonical_month([good, TradeFile("day-2.csv", rows.lazy())], MONTH, tmp_path / "x.parquet",
                              outside_month="trim")


def test_registry_reads_tardis_files_when_configured(tmp_path):
    """APERIODIC_SOURCE=tardis routes an exchange's month to its Tardis-format files (with arrival times)."""
    from aperiodic_pipelines.sources import fetch_month

    tape = _edge_tape()
    root = tmp_path / "tardis"
    write_tardis_days(root, "binance-futures", "BTCUSDT", MONTH, tape)
    config = SourceConfig.from_env({"APERIODIC_SOURCE": "tardis", "APERIODIC_TARDIS_URL": str(root),
                                    "APERIODIC_CACHE_DIR": str(tmp_path / "cache")})
    result = fetch_month("binance-futures", "BTCUSDT", MONTH, dest=tmp_path / "r.parquet", config=config,
                         s3_client=None)
    assert result.dataset == "tardis" and result.has_arrival_times
    assert pl.read_parquet(result.path)["ts_arrival"].null_count() == 0
    with pytest.raises(ValueError, match="APERIODIC_TARDIS_URL"):
        SourceConfig.from_env({"APERIODIC_SOURCE": "tardis"})
