"""The real `aperiodic` client against `serve`, across a closed month (its monthly file) and the open month (its
daily files, published by the daily step from Tardis-format files), on the local store and on S3 (moto): every bar exactly once, sorted, equal to the
bars computed from the trades by the monthly computation, for both variants; at 1s also a range that starts and
ends inside the open month."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import polars as pl
import pytest
from aperiodic import get_metrics

from aperiodic_pipelines.api.keys import ApiKeyStore
from aperiodic_pipelines.api.server import running_server
from aperiodic_pipelines.api.settings import ApiSettings
from aperiodic_pipelines.defs.daily import fetch_day_from, publish_open_month
from aperiodic_pipelines.defs.resources import SourcesResource
from aperiodic_pipelines.domain.intervals import INTERVALS
from aperiodic_pipelines.domain.months import day_bounds_us
from aperiodic_pipelines.flow import compute_flow_bars
from aperiodic_pipelines.mirror.archives import write_tardis_days
from aperiodic_pipelines.storage import store_from_uri
from aperiodic_pipelines.storage.index import publish_month_bars
from aperiodic_pipelines.synthetic import generate_tape

pytestmark = pytest.mark.slow  # a server and a month of 1s bars

EXCHANGE, NATIVE, ATLAS = "binance-futures", "BTCUSDT", "perpetual-BTC-USDT:USDT"
MONTHS = ("2023-12", "2024-01", "2024-02")  # the month before, the closed month, the open month
TODAY = date(2024, 2, 6)
OPEN_DAYS = [f"2024-02-{d:02d}" for d in range(1, 6)]


def _between(frame: pl.DataFrame, first_day: str, last_day: str) -> pl.DataFrame:
    start, end = day_bounds_us(first_day)[0], day_bounds_us(last_day)[1]
    lo, hi = (pl.lit(us, pl.Int64).cast(pl.Datetime("us")) for us in (start, end))
    return frame.filter((pl.col("time") >= lo) & (pl.col("time") < hi))


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_client_reads_a_closed_month_and_the_open_month_each_bar_once(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    tapes, next_id, price = {}, 1, 42_000.0
    for index, month in enumerate(MONTHS):
        tapes[month] = generate_tape(month, 1_500, seed=60 + index, with_arrival=True, start_price=price,
                                     first_trade_id=next_id)
        next_id, price = int(tapes[month]["trade_id"].max()) + 1, float(tapes[month]["price"][-1])
    previous, closed, current = (tapes[m] for m in MONTHS)
    # the local store, or a bucket on a moto server (the API then hands out presigned URLs of it)
    uri = str(tmp_path / "store") if kind == "local" else f"s3://{request.getfixturevalue('s3_bucket')}/bars"
    store = store_from_uri(uri)
    monthly = {t: compute_flow_bars(closed, previous, month=MONTHS[1], timestamp=t) for t in ("exchange", "true")}
    publish_month_bars(store, exchange=EXCHANGE, symbol=ATLAS, native_symbol=NATIVE, month=MONTHS[1],
                       bars={(t, i): monthly[t][i] for t in monthly for i in INTERVALS})

    # the open month's daily files, from Tardis files by arrival day out through the 6th (the day step of the 5th
    # needs raw day 6, i.e. files 6 and 7: write through the 7th)
    root = tmp_path / "tardis"
    write_tardis_days(root, EXCHANGE, NATIVE, MONTHS[2], pl.concat([closed, current]),
                      days={"2024-01-31", *OPEN_DAYS, "2024-02-06", "2024-02-07"})
    sources = SourcesResource(source="tardis", tardis_url=str(root), cache_dir=str(tmp_path / "cache"))
    outcome = publish_open_month(
        store, exchange=EXCHANGE, symbol=ATLAS, native_symbol=NATIVE, variants=("exchange", "true"), today=TODAY,
        fetch_day=fetch_day_from(sources, EXCHANGE, NATIVE), previous_month_trades=lambda _workdir, _pins: closed,
    )
    assert outcome.published_now == tuple(OPEN_DAYS)
    open_bars = {t: compute_flow_bars(current, closed, month=MONTHS[2], timestamp=t) for t in ("exchange", "true")}

    keys = tmp_path / "keys.sqlite"
    key = ApiKeyStore(keys).create("test")
    with running_server(ApiSettings(store_uri=uri, api_keys_path=keys)) as base_url:
        def read(timestamp: str, interval: str, start: str, end: str) -> pl.DataFrame:
            return get_metrics(key, metric="flow", timestamp=timestamp, interval=interval, exchange=EXCHANGE,
                               symbol=ATLAS, start_date=date.fromisoformat(start), end_date=date.fromisoformat(end),
                               base_url=base_url, show_progress=False)

        for timestamp in ("exchange", "true"):
            for interval in ("1h", "1d"):
                got = read(timestamp, interval, "2024-01-01", OPEN_DAYS[-1])
                want = pl.concat([monthly[timestamp][interval],
                                  _between(open_bars[timestamp][interval], OPEN_DAYS[0], OPEN_DAYS[-1])])
                assert got["time"].is_unique().all() and got["time"].is_sorted()
                assert got.equals(want), f"{timestamp} {interval}"
            inside = read(timestamp, "1s", "2024-02-02", "2024-02-03")  # starts and ends inside the open month
            assert inside.height == 2 * 86_400
            assert inside.equals(_between(open_bars[timestamp]["1s"], "2024-02-02", "2024-02-03")), timestamp
