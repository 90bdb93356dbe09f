"""The Hyperliquid hour parser on each dataset's records as the mirror writes them (no S3): every coin of an hour in
one pass, and every kind of damage one `CorruptArchiveError` naming the object and the line."""

from __future__ import annotations

from pathlib import Path

import lz4.frame
import polars as pl
import pytest

from aperiodic_pipelines.domain.errors import CorruptArchiveError
from aperiodic_pipelines.mirror.s3 import ndjson_lines
from aperiodic_pipelines.sources.hyperliquid import NODE_FILLS, NODE_FILLS_BY_BLOCK, NODE_TRADES, parse_ndjson
from aperiodic_pipelines.sources.hyperliquid.parse import parse_object
from aperiodic_pipelines.synthetic import generate_tape

DATASETS = (NODE_TRADES, NODE_FILLS, NODE_FILLS_BY_BLOCK)
URI = "s3://hl-mainnet-node-data/x/hourly/20250901/0.lz4"


@pytest.fixture(scope="module")
def two_coins() -> pl.DataFrame:
    btc = generate_tape("2025-09", n_trades=300, seed=1, with_arrival=False).with_columns(coin=pl.lit("BTC"))
    eth = generate_tape("2025-09", n_trades=200, seed=2, with_arrival=False, start_price=2500.0,
                        first_trade_id=10_000).with_columns(coin=pl.lit("ETH"))
    return pl.concat([btc, eth]).sort("ts_exchange", "trade_id")


def _ndjson(lines: list[bytes]) -> bytes:
    return b"".join(line + b"\n" for line in lines)


@pytest.mark.parametrize("dataset", DATASETS)
def test_hour_is_parsed_once_for_every_coin(two_coins: pl.DataFrame, dataset: str) -> None:
    parsed = parse_ndjson(_ndjson(ndjson_lines(dataset, two_coins, seed=3)), dataset, URI)
    assert parsed.get_column("coin").is_sorted()
    for coin in ("BTC", "ETH"):
        expected = two_coins.filter(pl.col("coin") == coin)
        rows = parsed.filter(pl.col("coin") == coin).sort("ts_exchange", "line")
        # one taker row per trade (maker fills are dropped where their taker is in the same object)
        assert rows.height == expected.height and rows.get_column("crossed").all()
        assert rows.get_column("price").to_list() == expected.get_column("price").to_list()
        assert rows.get_column("is_buy").to_list() == expected.get_column("is_buy").to_list()
        truncated_to = 1 if dataset == NODE_TRADES else 1000  # node_trades keeps µs, fills carry ms
        times = (expected.get_column("ts_exchange") // truncated_to * truncated_to).to_list()
        assert rows.get_column("ts_exchange").to_list() == times
        assert rows.get_column("ts_arrival").null_count() == (0 if dataset == NODE_FILLS_BY_BLOCK else rows.height)


def _damage(lines: list[bytes], kind: str, dataset: str) -> list[bytes]:
    """Line 3 damaged in one way."""
    line, field = lines[2], b'"px":"'
    damaged = {
        "invalid-utf8": line.replace(b'"coin":"', b'"coin":"\xff\xfe', 1),
        "invalid-json": line[:-3],
        "missing-field": line.replace(b'"sz":', b'"size":', 1),
        "ill-typed-field": line.replace(field, b'"px":' + b"12.5" + b',"was":"', 1),
        "not-positive": line.replace(field, field + b"-", 1),
    }[kind]
    return [*lines[:2], damaged, *lines[3:]]


@pytest.mark.parametrize("dataset", DATASETS)
@pytest.mark.parametrize(
    ("kind", "why"),
    [
        ("invalid-utf8", "not UTF-8"),
        ("invalid-json", "invalid JSON"),
        ("missing-field", "missing required field `sz`"),
        ("ill-typed-field", "Expected `str`, got `float`"),
        ("not-positive", "px='-"),
    ],
)
def test_malformed_line_is_a_corrupt_archive_naming_object_and_line(
    two_coins: pl.DataFrame, dataset: str, kind: str, why: str
) -> None:
    lines = _damage(ndjson_lines(dataset, two_coins, seed=3), kind, dataset)
    with pytest.raises(CorruptArchiveError, match=rf"^{URI} line 3: malformed record \(.*{why}"):
        parse_ndjson(_ndjson(lines), dataset, URI)


def test_node_trades_side_info_must_hold_buyer_and_seller(two_coins: pl.DataFrame) -> None:
    lines = ndjson_lines(NODE_TRADES, two_coins, seed=3)
    one_sided = lines[4].split(b',"side_info":[')[0] + b',"side_info":[{"user":"0x1","oid":7}]}'
    with pytest.raises(CorruptArchiveError, match=rf"{URI} line 5: .*side_info"):
        parse_ndjson(_ndjson([*lines[:4], one_sided, *lines[5:]]), NODE_TRADES, URI)


@pytest.mark.parametrize("damage", ["truncate", "magic", "checksum"])
def test_lz4_frame_damage_is_a_corrupt_archive(two_coins: pl.DataFrame, tmp_path: Path, damage: str) -> None:
    body = lz4.frame.compress(_ndjson(ndjson_lines(NODE_FILLS, two_coins, seed=3)), content_checksum=True)
    broken = {
        "truncate": body[: len(body) // 2],
        "magic": b"\x00\x00\x00\x00" + body[4:],
        "checksum": body[:-4] + bytes(b ^ 0xFF for b in body[-4:]),
    }[damage]
    path = tmp_path / "0.lz4"
    path.write_bytes(broken)
    with pytest.raises(CorruptArchiveError, match=rf"^{URI}: not a valid LZ4 frame stream"):
        parse_object(path, NODE_FILLS, URI)
    path.write_bytes(body)  # the same bytes undamaged parse
    frame, sha256, ndjson_bytes = parse_object(path, NODE_FILLS, URI)
    assert frame.height == two_coins.height and len(sha256) == 64 and ndjson_bytes > len(body)


def test_era_switch_record_and_fill_disagreeing_on_the_taker_side_is_refused(two_coins: pl.DataFrame) -> None:
    """A node_trades record and a fill with the same time, px, sz and hash are one trade; if they disagree on the
    side, neither can be trusted and neither is dropped silently."""
    from aperiodic_pipelines.sources.hyperliquid.month import assemble_month

    btc = two_coins.filter(pl.col("coin") == "BTC").head(20)
    flipped = btc.with_columns(is_buy=pl.when(pl.col("trade_id") == btc["trade_id"][7]).then(~pl.col("is_buy"))
                               .otherwise(pl.col("is_buy")))
    parts = []
    for index, (dataset, trades) in enumerate(((NODE_TRADES, btc), (NODE_FILLS, flipped))):
        rows = parse_ndjson(_ndjson(ndjson_lines(dataset, trades, seed=3)), dataset, f"{URI}-{dataset}")
        parts.append(rows.drop("coin").with_columns(_object=pl.lit(index, pl.Int32), _rank=pl.lit(index, pl.Int8)))
    rows = pl.concat(parts)
    window = {"coin": "BTC", "start_us": 0, "end_us": 2**62}
    with pytest.raises(CorruptArchiveError, match=r"disagree on the taker side, e\.g\. a line 8"):
        assemble_month(rows, ["a", "b"], **window)
    agreeing = pl.concat([parts[0], parts[1].filter(pl.col("trade_id") != btc["trade_id"][7])])
    trades, counts = assemble_month(agreeing, ["a", "b"], **window)
    assert counts.merged_by_hash == 19 and trades.height == 20  # 19 merged, the 8th kept once from node_trades
