"""Hyperliquid era switches against a real moto S3 server: trades near a switch are in both datasets and are kept
once. May 2025 holds the node_trades → node_fills switch (2025-05-25 14:00), July 2025 the node_fills →
node_fills_by_block one (inside hour 2025-07-27 08:00, which both datasets publish)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from aperiodic_pipelines.domain.errors import NotPublishedError
from aperiodic_pipelines.mirror.s3 import (
    SWITCHES,
    create_bucket,
    delete_hour,
    make_client,
    write_hyperliquid_month,
)
from aperiodic_pipelines.sources.config import SourceConfig
from aperiodic_pipelines.sources.hyperliquid import (
    NODE_FILLS,
    NODE_FILLS_BY_BLOCK,
    NODE_TRADES,
    fetch_month,
    hour_key,
)
from aperiodic_pipelines.synthetic import generate_tape
from tests.s3_fixtures import MOTO_REGION

pytestmark = pytest.mark.slow

BUCKET = "hl-eras-test"
OVERLAP_MS = 2000  # trades this close to a switch are written by both outputs (the mirror's default)
TRADES_TO_FILLS, FILLS_TO_BLOCKS = "2025-05", "2025-07"


def _us(moment: datetime) -> int:
    return int(moment.timestamp()) * 1_000_000


def _tape(month: str, seed: int, switch: datetime) -> pl.DataFrame:
    """A sparse month plus one trade every 250 ms for 4 s either side of the switch."""
    around = [_us(switch) + offset * 250_000 + 17 for offset in range(-16, 16)]
    near = pl.DataFrame(
        {
            "ts_exchange": around,
            "ts_arrival": [None] * len(around),
            "trade_id": list(range(10**12, 10**12 + len(around))),
            "price": [100.0 + i / 8 for i in range(len(around))],
            "qty": [1.5] * len(around),
            "is_buy": [i % 3 != 0 for i in range(len(around))],
        },
        schema={"ts_exchange": pl.Int64, "ts_arrival": pl.Int64, "trade_id": pl.Int64, "price": pl.Float64,
                "qty": pl.Float64, "is_buy": pl.Boolean},
    )
    tape = generate_tape(month, n_trades=400, seed=seed, with_arrival=False, start_price=100.0)
    return pl.concat([tape, near]).sort("ts_exchange", "trade_id")


def _near_switch(tape: pl.DataFrame, switch: datetime) -> pl.Expr:
    return (pl.col("ts_exchange") // 1000 - _us(switch) // 1000).abs() < OVERLAP_MS


@dataclass
class World:
    client: Any
    tapes: dict[str, pl.DataFrame]
    config: SourceConfig


@pytest.fixture(scope="module")
def world(moto_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> World:  # noqa: F811
    client = make_client(moto_endpoint, region=MOTO_REGION)
    create_bucket(client, BUCKET, region=MOTO_REGION)
    tapes = {
        TRADES_TO_FILLS: _tape(TRADES_TO_FILLS, 5, SWITCHES[NODE_FILLS]),
        FILLS_TO_BLOCKS: _tape(FILLS_TO_BLOCKS, 6, SWITCHES[NODE_FILLS_BY_BLOCK]),
    }
    for month, tape in tapes.items():
        write_hyperliquid_month(client, BUCKET, "SOL", month, tape, seed=3, switch_overlap_ms=OVERLAP_MS)
    config = SourceConfig(hyperliquid_url=f"s3://{BUCKET}", cache_dir=tmp_path_factory.mktemp("hl-eras-cache"))
    return World(client, tapes, config)


@contextmanager
def removed(world: World, key: str) -> Iterator[None]:
    original = world.client.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    delete_hour(world.client, BUCKET, key)
    try:
        yield
    finally:
        world.client.put_object(Bucket=BUCKET, Key=key, Body=original)


def _lines_with(world: World, key: str, needle: bytes) -> int:
    import lz4.frame

    body = lz4.frame.decompress(world.client.get_object(Bucket=BUCKET, Key=key)["Body"].read())
    return sum(needle in line for line in body.splitlines())


def test_hyperliquid_era_overlap_fills_and_fills_by_block_keep_each_tid_once(world: World, tmp_path: Path) -> None:
    switch = SWITCHES[NODE_FILLS_BY_BLOCK]
    hour = datetime(2025, 7, 27, 8, tzinfo=UTC)
    # the mirror publishes hour 08:00 in both datasets, both holding some of the same trades
    assert _lines_with(world, hour_key(NODE_FILLS, hour), b'"coin":"SOL"') > 0
    assert _lines_with(world, hour_key(NODE_FILLS_BY_BLOCK, hour), b'"coin":"SOL"') > 0

    result = fetch_month("SOL", FILLS_TO_BLOCKS, dest=tmp_path, config=world.config, s3_client=world.client)
    got = pl.read_parquet(result.path)
    tape = world.tapes[FILLS_TO_BLOCKS]
    expected = tape.with_columns(ts_exchange=pl.col("ts_exchange") // 1000 * 1000)
    assert got.drop("ts_arrival").equals(expected.drop("ts_arrival"))  # every tid once, none lost
    both = tape.filter(_near_switch(tape, switch)).height
    assert both > 0
    assert result.metadata["era_overlap_merged_by_tid"] == both
    assert result.metadata["era_overlap_merged"] == both
    assert result.duplicates_dropped == 0
    # the fills-by-block record wins in the overlap (it has the arrival time); node_fills has none
    arrival_known = got.get_column("ts_arrival").is_not_null()
    from_blocks = (got.get_column("ts_exchange") // 1000 >= _us(switch) // 1000 - OVERLAP_MS + 1)
    assert arrival_known.equals(from_blocks.alias("ts_arrival"), check_names=False)
    assert result.dataset == f"{NODE_FILLS}+{NODE_FILLS_BY_BLOCK}"
    assert {o.location.rsplit("/", 4)[-4] for o in result.objects} == {NODE_FILLS, NODE_FILLS_BY_BLOCK}


def test_hyperliquid_era_overlap_hour_is_required_in_both_datasets(world: World, tmp_path: Path) -> None:
    """Either half of hour 2025-07-27 08:00 missing would drop trades: the month is not published, not short."""
    for dataset in (NODE_FILLS, NODE_FILLS_BY_BLOCK):
        key = hour_key(dataset, datetime(2025, 7, 27, 8, tzinfo=UTC))
        with removed(world, key), pytest.raises(NotPublishedError, match=f"s3://{BUCKET}/{key} is not published"):
            fetch_month("SOL", FILLS_TO_BLOCKS, dest=tmp_path / "x.parquet", config=world.config, s3_client=world.client)
        assert not (tmp_path / "x.parquet").exists()


def test_hyperliquid_era_overlap_node_trades_and_node_fills_match_by_time_price_size_hash(
    world: World, tmp_path: Path
) -> None:
    switch = SWITCHES[NODE_FILLS]
    tape = world.tapes[TRADES_TO_FILLS]
    # node_trades carries no tid: the same trade is recognised by (time, px, sz, hash) and kept once, as the fill
    result = fetch_month("SOL", TRADES_TO_FILLS, dest=tmp_path, config=world.config, s3_client=world.client)
    got = pl.read_parquet(result.path)
    as_fills = (pl.col("ts_exchange") // 1000) >= _us(switch) // 1000 - OVERLAP_MS + 1
    trades_era = tape.filter(~as_fills).with_columns(
        trade_id=pl.col("ts_exchange") * 1000 + pl.int_range(pl.len(), dtype=pl.Int64).over("ts_exchange")
    )
    fills_era = tape.filter(as_fills).with_columns(ts_exchange=pl.col("ts_exchange") // 1000 * 1000)
    expected = pl.concat([trades_era, fills_era]).sort("ts_exchange", "trade_id")
    assert got.equals(expected)
    both = tape.filter(_near_switch(tape, switch)).height
    assert both > 0
    assert result.metadata["era_overlap_merged_by_hash"] == both
    assert result.metadata["era_overlap_merged_by_tid"] == 0
    assert result.trade_count == tape.height  # never double counted, never dropped
    assert result.dataset == f"{NODE_TRADES}+{NODE_FILLS}"
