"""The daily step across a month's end, without Dagster: early in a month, the previous month's remaining days are
published first (its monthly file is not out yet), then the new month's from the carry handed on; every row equals
the monthly computation's, bit for bit (both variants, all 8 intervals)."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import polars as pl
import pytest

from aperiodic_pipelines.defs.daily import fetch_day_from, publish_open_month
from aperiodic_pipelines.defs.resources import SourcesResource
from aperiodic_pipelines.domain.intervals import INTERVALS
from aperiodic_pipelines.domain.layout import daily_flow_key
from aperiodic_pipelines.domain.months import day_bounds_us, days_of_month
from aperiodic_pipelines.flow import compute_flow_bars
from aperiodic_pipelines.mirror.archives import write_tardis_days
from aperiodic_pipelines.storage import LocalStore
from aperiodic_pipelines.storage.daily import published_days
from aperiodic_pipelines.synthetic import generate_tape
from tests.test_flow_daily import assert_same_bits

EXCHANGE, NATIVE, ATLAS = "binance-futures", "BTCUSDT", "perpetual-BTC-USDT:USDT"
MONTHS = ("2023-12", "2024-01", "2024-02")
VARIANTS = ("exchange", "true")

pytestmark = pytest.mark.slow  # a month of daily steps (~30 s)


def test_the_previous_months_last_days_then_the_new_month(tmp_path: Path) -> None:
    tapes, next_id, price = {}, 1, 42_000.0
    for index, month in enumerate(MONTHS):
        tapes[month] = generate_tape(month, 1_200, seed=70 + index, with_arrival=True, start_price=price,
                                     first_trade_id=next_id)
        next_id, price = int(tapes[month]["trade_id"].max()) + 1, float(tapes[month]["price"][-1])
    whole = pl.concat(list(tapes.values()))
    root = tmp_path / "tardis"
    write_tardis_days(root, EXCHANGE, NATIVE, MONTHS[1], whole, days={"2023-12-31", *days_of_month(MONTHS[1])})
    sources = SourcesResource(source="tardis", tardis_url=str(root), cache_dir=str(tmp_path / "cache"))
    store = LocalStore(tmp_path / "store")

    def step(today: date):
        return publish_open_month(
            store, exchange=EXCHANGE, symbol=ATLAS, native_symbol=NATIVE, variants=VARIANTS, today=today,
            fetch_day=fetch_day_from(sources, EXCHANGE, NATIVE), previous_month_trades=lambda _w, _pins: tapes[MONTHS[0]],
        )

    first = step(date(2024, 1, 31))  # files through Jan 31 are out: true complete through the 29th
    assert first.published_now[-1] == "2024-01-29" and first.waiting_for == "2024-01-30"
    # February: the rest of January's files and Feb 1..3 come out
    write_tardis_days(root, EXCHANGE, NATIVE, MONTHS[2], whole, days={f"2024-02-0{d}" for d in range(1, 4)})
    second = step(date(2024, 2, 4))
    assert second.published_now == ("2024-01-30", "2024-01-31", "2024-02-01")  # Feb 2 (true) needs raw Feb 3
    assert second.days_published == ("2024-02-01",) and second.waiting_for == "2024-02-02"
    assert published_days(store, EXCHANGE, NATIVE, MONTHS[1])[-1] == "2024-01-31"

    for timestamp in VARIANTS:
        for month, before in ((MONTHS[1], MONTHS[0]), (MONTHS[2], MONTHS[1])):
            monthly = compute_flow_bars(tapes[month], tapes[before], month=month, timestamp=timestamp)
            for day in ("2024-01-30", "2024-01-31", "2024-02-01"):
                if not day.startswith(month):
                    continue
                lo, hi = (pl.lit(us, pl.Int64).cast(pl.Datetime("us")) for us in day_bounds_us(day))
                for interval in INTERVALS:
                    got = pl.read_parquet(store.path(daily_flow_key(timestamp, EXCHANGE, interval, NATIVE, day)))
                    want = monthly[interval].filter((pl.col("time") >= lo) & (pl.col("time") < hi))
                    assert_same_bits(got, want, f"{timestamp} {interval} {day}")


def test_day_ones_previous_month_is_scanned_from_a_pinned_copy(tmp_path: Path) -> None:
    """Raw month m−1 is scanned, not held (a busy month is ~1.4 GB in memory), from a copy pinned for the step:
    republishing m−1 while the step runs does not change what its later reads see; the pin ends with the step."""
    from contextlib import ExitStack

    from aperiodic_pipelines.defs.daily import previous_month_from
    from aperiodic_pipelines.storage import raw_key

    store = LocalStore(tmp_path / "store")
    sources = SourcesResource(source="tardis", tardis_url=str(tmp_path / "none"), cache_dir=str(tmp_path / "cache"))
    first, second = (generate_tape(MONTHS[0], 500, seed=seed) for seed in (1, 2))
    for name, tape in (("first", first), ("second", second)):
        tape.write_parquet(tmp_path / f"{name}.parquet")
    store.publish_file(tmp_path / "first.parquet", raw_key(EXCHANGE, NATIVE, MONTHS[0]))
    read = previous_month_from(store, sources, EXCHANGE, NATIVE, MONTHS[1], first_month=MONTHS[0])
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    with ExitStack() as pins:
        trades = read(scratch, pins)
        assert isinstance(trades, pl.LazyFrame)
        store.publish_file(tmp_path / "second.parquet", raw_key(EXCHANGE, NATIVE, MONTHS[0]))  # republished meanwhile
        assert trades.collect().equals(first)
        assert previous_month_from(store, sources, EXCHANGE, NATIVE, MONTHS[0],
                                   first_month=MONTHS[0])(scratch, pins) is None
    assert not any((store.root / ".pins").iterdir()), "the pin outlived the step"
