# ruff: noqa: F811 - pytest fixtures imported from tests.http_fixtures are redefined as arguments
"""The local mirror's open month: daily archives dated relative to now, in each exchange's daily format, read back
through `fetch_day` (complete days) and refused for the days not out yet."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import polars as pl
import pytest

from aperiodic_pipelines.domain.months import current_month
from aperiodic_pipelines.mirror.open_month import (
    open_month_tape,
    published_days,
    write_binance_open_month,
    write_hyperliquid_open_month,
    write_okx_open_month,
    write_tardis_open_month,
)
from aperiodic_pipelines.mirror.s3 import create_bucket, make_client
from aperiodic_pipelines.sources import fetch_day
from aperiodic_pipelines.sources.config import SourceConfig
from aperiodic_pipelines.sources.daily import DayNotPublishedError
from tests.http_fixtures import as_ms
from tests.s3_fixtures import MOTO_REGION

NOW = datetime(2024, 3, 10, 10, 30, tzinfo=UTC)


def _fetch(exchange, symbol, day, tmp_path, config, **kwargs):
    return fetch_day(exchange, symbol, day, dest=tmp_path / f"{exchange}-{day}.parquet", config=config, **kwargs)


def test_published_days_are_the_days_before_today() -> None:
    assert published_days(NOW) == [f"2024-03-{d:02d}" for d in range(1, 10)]
    assert published_days(datetime(2024, 3, 1, 23, tzinfo=UTC)) == []


def test_binance_open_month_through_yesterday(tmp_path, mirror_root, source_config) -> None:
    paths = write_binance_open_month(mirror_root, "BTCUSDT", now=NOW)
    assert [p.name for p in paths][-1] == "BTCUSDT-aggTrades-2024-03-09.zip" and len(paths) == 9
    frames = [pl.read_parquet(_fetch("binance-futures", "BTCUSDT", day, tmp_path, source_config).path)
              for day in published_days(NOW)]
    assert pl.concat(frames).equals(as_ms(open_month_tape(NOW)))
    with pytest.raises(DayNotPublishedError) as caught:
        _fetch("binance-futures", "BTCUSDT", "2024-03-10", tmp_path, source_config)
    assert not caught.value.later_published


def test_okx_open_month_only_files_whose_utc8_day_ended(tmp_path, mirror_root, source_config) -> None:
    paths = write_okx_open_month(mirror_root, "BTC-USDT-SWAP", now=NOW)
    # at 10:30 UTC the UTC+8 day of the 10th has not ended (it ends 16:00 UTC): files through the 9th
    assert paths[-1].name == "BTC-USDT-SWAP-trades-2024-03-09.zip"
    assert _fetch("okx-perps", "BTC-USDT-SWAP", "2024-03-08", tmp_path, source_config).trade_count > 0
    with pytest.raises(DayNotPublishedError, match="BTC-USDT-SWAP-trades-2024-03-10.zip"):
        _fetch("okx-perps", "BTC-USDT-SWAP", "2024-03-09", tmp_path, source_config)
    later = write_okx_open_month(mirror_root, "BTC-USDT-SWAP", now=NOW.replace(hour=16))
    assert later[-1].name == "BTC-USDT-SWAP-trades-2024-03-10.zip"
    assert _fetch("okx-perps", "BTC-USDT-SWAP", "2024-03-09", tmp_path, source_config).trade_count > 0


def test_tardis_open_month_neighbour_days(tmp_path, mirror_root, archive_mirror) -> None:
    write_tardis_open_month(mirror_root / "tardis", "binance-futures", "BTCUSDT", now=NOW)
    config = SourceConfig(source="tardis", tardis_url=f"{archive_mirror.url}/tardis", cache_dir=tmp_path / "c")
    # the true variant of the 7th reads the 6th, 7th and 8th: all complete (the 9th's file is out)
    for day in ("2024-03-06", "2024-03-07", "2024-03-08"):
        result = _fetch("binance-futures", "BTCUSDT", day, tmp_path, config)
        assert result.has_arrival_times and result.trade_count > 0
    with pytest.raises(DayNotPublishedError, match="2024/03/10/BTCUSDT.csv.gz"):
        _fetch("binance-futures", "BTCUSDT", "2024-03-09", tmp_path, config)


def test_hyperliquid_open_month_hours_that_ended(tmp_path, moto_endpoint) -> None:
    client = make_client(moto_endpoint, region=MOTO_REGION)
    create_bucket(client, "hl-open-month", region=MOTO_REGION)
    now = datetime(2025, 9, 10, 0, 40, tzinfo=UTC)  # hour 2025-09-10 00:00 has not ended yet
    keys = write_hyperliquid_open_month(client, "hl-open-month", "BTC", now=now)
    assert keys[0].endswith("20250831/23.lz4") and keys[-1].endswith("20250909/23.lz4")
    config = SourceConfig(hyperliquid_url="s3://hl-open-month", cache_dir=tmp_path / "c")
    assert _fetch("hyperliquid-perps", "BTC", "2025-09-08", tmp_path, config, s3_client=client).trade_count > 0
    with pytest.raises(DayNotPublishedError, match="20250910/0.lz4"):
        _fetch("hyperliquid-perps", "BTC", "2025-09-09", tmp_path, config, s3_client=client)
    write_hyperliquid_open_month(client, "hl-open-month", "BTC", now=now + timedelta(hours=1))
    day = _fetch("hyperliquid-perps", "BTC", "2025-09-09", tmp_path, config, s3_client=client)
    assert day.has_arrival_times and day.trade_count > 0


def test_relative_to_the_real_today(tmp_path, mirror_root, source_config) -> None:
    today = datetime.now(UTC).date()
    paths = write_binance_open_month(mirror_root, "BTCUSDT")
    if today.day == 1:
        assert paths == []
        return
    yesterday = (today - timedelta(days=1)).isoformat()
    assert paths[-1].name == f"BTCUSDT-aggTrades-{yesterday}.zip" and yesterday[:7] == current_month()
    assert _fetch("binance-futures", "BTCUSDT", yesterday, tmp_path, source_config).day == yesterday
    with pytest.raises(DayNotPublishedError):
        _fetch("binance-futures", "BTCUSDT", today.isoformat(), tmp_path, source_config)
    assert date.fromisoformat(yesterday) < today
