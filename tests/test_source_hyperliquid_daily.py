"""Hyperliquid `fetch_day` against a real moto S3 server on 127.0.0.1: the days of a month end to end equal the
month, the true variant's neighbour days carry arrival times, and a day not out yet fails at once."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest

from aperiodic_pipelines.domain.months import days_of_month
from aperiodic_pipelines.mirror.s3 import create_bucket, delete_hour, make_client, write_hyperliquid_month
from aperiodic_pipelines.sources import fetch_day, fetch_month
from aperiodic_pipelines.sources.config import SourceConfig
from aperiodic_pipelines.sources.daily import DayNotPublishedError
from aperiodic_pipelines.sources.hyperliquid import NODE_FILLS_BY_BLOCK, hour_key
from aperiodic_pipelines.synthetic import generate_tape
from aperiodic_pipelines.trades import CANONICAL_SCHEMA
from tests.s3_fixtures import MOTO_REGION

pytestmark = pytest.mark.slow

BUCKET = "hl-daily-test"
MONTH = "2025-09"


@pytest.fixture(scope="module")
def client(moto_endpoint: str):  # noqa: F811
    s3 = make_client(moto_endpoint, region=MOTO_REGION)
    create_bucket(s3, BUCKET, region=MOTO_REGION)
    tape = generate_tape(month=MONTH, n_trades=900, seed=21, with_arrival=True)
    write_hyperliquid_month(s3, BUCKET, "BTC", MONTH, tape, seed=3)
    return s3


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> SourceConfig:
    return SourceConfig(hyperliquid_url=f"s3://{BUCKET}", cache_dir=tmp_path_factory.mktemp("hl-daily-cache"))


def test_days_end_to_end_equal_the_month(client, config: SourceConfig, tmp_path: Path) -> None:
    month = fetch_month("hyperliquid-perps", "BTC", MONTH, dest=tmp_path / "month.parquet", config=config,
                        s3_client=client)
    frames = []
    for day in days_of_month(MONTH):
        result = fetch_day("hyperliquid-perps", "perpetual-BTC-USDC:USDC", day, dest=tmp_path / "days",
                           config=config, s3_client=client)
        assert result.path == tmp_path / "days" / f"{day}.parquet" and result.day == day
        frame = pl.read_parquet(result.path)
        assert frame.schema == pl.Schema(CANONICAL_SCHEMA) and frame.height == result.trade_count
        # the hour before, the 24 hours and the spill hour
        assert len(result.objects) == 26
        frames.append(frame)
    whole = pl.read_parquet(month.path)
    assert whole.height > 800
    assert pl.concat(frames).equals(whole)


def test_true_variant_neighbour_days_have_arrival_times(client, config: SourceConfig, tmp_path: Path) -> None:
    for day in ("2025-09-14", "2025-09-15", "2025-09-16"):
        result = fetch_day("hyperliquid-perps", "BTC", day, dest=tmp_path / f"{day}.parquet", config=config,
                           s3_client=client)
        frame = pl.read_parquet(result.path)
        assert result.has_arrival_times and frame.height > 0
        assert frame["ts_arrival"].null_count() == 0
        assert (frame["ts_arrival"] >= frame["ts_exchange"]).all()


def test_day_not_out_yet_fails_at_once(client, config: SourceConfig, tmp_path: Path) -> None:
    """The last day of the written month needs 2025-10-01 00:00, which the month's writer put there; 2025-10-01
    itself needs hours nobody wrote."""
    started = time.monotonic()
    with pytest.raises(DayNotPublishedError, match=r"2025-10-01 is not published yet: missing s3://") as caught:
        fetch_day("hyperliquid-perps", "BTC", "2025-10-01", dest=tmp_path / "x.parquet", config=config,
                  s3_client=client)
    assert time.monotonic() - started < 2
    assert not caught.value.later_published
    assert caught.value.missing[0].endswith(f"{NODE_FILLS_BY_BLOCK}/hourly/20251001/1.lz4")
    assert not (tmp_path / "x.parquet").exists()


def test_skipped_hour_says_a_later_hour_is_out(client, config: SourceConfig, tmp_path: Path) -> None:
    hour = datetime(2025, 9, 20, 7, tzinfo=UTC)
    key = hour_key(NODE_FILLS_BY_BLOCK, hour)
    body = client.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    delete_hour(client, BUCKET, key)
    try:
        with pytest.raises(DayNotPublishedError, match="skipped upstream") as caught:
            fetch_day("hyperliquid-perps", "BTC", "2025-09-20", dest=tmp_path / "x.parquet", config=config,
                      s3_client=client)
        assert caught.value.later_published and caught.value.missing == (f"s3://{BUCKET}/{key}",)
        # the neighbouring day reads this hour only if it is its spill hour: 2025-09-19 does not need it
        fetch_day("hyperliquid-perps", "BTC", "2025-09-19", dest=tmp_path / "y.parquet", config=config,
                  s3_client=client)
    finally:
        client.put_object(Bucket=BUCKET, Key=key, Body=body)


def test_published_day_without_trades_of_the_coin_is_an_empty_table(client, config: SourceConfig,
                                                                    tmp_path: Path) -> None:
    result = fetch_day("hyperliquid-perps", "ETH", "2025-09-10", dest=tmp_path / "eth.parquet", config=config,
                       s3_client=client)
    frame = pl.read_parquet(result.path)
    assert result.trade_count == 0 and frame.height == 0 and len(result.objects) == 26
    assert frame.schema == pl.Schema(CANONICAL_SCHEMA)
