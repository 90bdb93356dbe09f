"""Daily files of the open month (issue 15): a day published whole or not at all (a real writer SIGKILLed at its
steps), a republished day replacing its files whole and dropping the days computed from its old carry, month close
(days leave the index, their objects retired once every URL naming them expired), carries bit-exact through the
store, and the real `aperiodic` client reading a closed month and open-month days through `serve` once each.
Local directory and moto S3 over HTTP on 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import httpx
import numpy as np
import polars as pl
import pytest
from aperiodic import get_metrics
from polars.testing import assert_frame_equal

from aperiodic_pipelines.api import ApiKeyStore, ApiSettings, running_server
from aperiodic_pipelines.domain.intervals import INTERVALS
from aperiodic_pipelines.domain.layout import daily_flow_key
from aperiodic_pipelines.flow.daily import SPANS, FlowCarry, compute_day_flow_bars, month_start_carry
from aperiodic_pipelines.storage import ObjectStore, store_from_uri
from aperiodic_pipelines.storage.daily import (
    DayOrderError,
    MonthClosedError,
    last_complete_day,
    published_days,
    read_carry_frame,
    retire_expired,
)
from aperiodic_pipelines.storage.index import publish_month_bars, read_published_month
from aperiodic_pipelines.storage.publication import CARRIES_PREFIX, VERSIONS_PREFIX
from aperiodic_pipelines.synthetic import generate_tape
from tests.daily_writer import EXCHANGE, NATIVE, SYMBOL, TIMESTAMPS, carry, generation_of_price, publish
from tests.test_publication import Writer


def read_carry(store: ObjectStore, exchange: str, native: str, day: str, timestamp: str) -> FlowCarry | None:
    frame = read_carry_frame(store, exchange, native, day, timestamp)
    return None if frame is None else FlowCarry.from_frame(frame)

MONTH = "2024-03"
DAYS = [f"{MONTH}-{d:02d}" for d in range(1, 5)]
WRITER = Path(__file__).with_name("daily_writer.py")


@pytest.fixture(params=["local", "s3"])
def store_uri(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "local":
        return str(tmp_path / "store")
    return f"s3://{request.getfixturevalue('s3_bucket')}/pre"


def generation_of(data: bytes) -> str:
    (generation,) = pl.read_parquet(io.BytesIO(data))["generation"].unique().to_list()
    return generation


def day_picture(store: ObjectStore) -> dict[str, str]:
    """{day: generation} as the index describes it; fails if a day mixes generations, misses a file or a carry,
    or names bytes other than its sha256 says."""
    entry = read_published_month(store, EXCHANGE, NATIVE, MONTH)
    if entry is None:
        return {}
    picture = {}
    for day in entry.days:
        files = entry.day_files(day)
        assert sorted((f.timestamp, f.interval) for f in files) == sorted((t, i) for t in TIMESTAMPS for i in INTERVALS)
        generations = set()
        for f in files:
            data = store.read_bytes(f.key)
            assert hashlib.sha256(data).hexdigest() == f.sha256 and len(data) == f.size, f.key
            generations.add(generation_of(data))
        for_day = date.fromordinal(date.fromisoformat(day).toordinal() + 1).isoformat()
        for timestamp in TIMESTAMPS:
            handed_on = read_carry(store, EXCHANGE, NATIVE, for_day, timestamp)
            assert handed_on is not None, f"{day} is listed without its {timestamp} carry"
            generations.add(generation_of_price(handed_on.this_month.last_price, ("A", "B"), day))
        assert len(generations) == 1, f"{day} mixes {generations}"
        picture[day] = generations.pop()
    assert len(entry.carries) == len(entry.days) * len(TIMESTAMPS)  # no carry of a day not listed
    return picture


# --- a day whole or not at all ------------------------------------------------------------------------------------

KILL_POINTS = [
    "leased", "uploaded exchange/1h/2024-03-02", "uploaded carry true/2024-03-03", "committing", "committed",
    "stable true/1d/2024-03-02", "retired",
]


@pytest.mark.parametrize("step", KILL_POINTS)
def test_a_republished_day_is_whole_old_or_whole_new_at_every_kill_point(store_uri: str, step: str) -> None:
    for day in DAYS[:3]:
        publish(store_uri, "A", day)
    store = store_from_uri(store_uri)
    assert day_picture(store) == dict.fromkeys(DAYS[:3], "A")

    writer = _daily_writer(store_uri, "B", "2024-03-02", "--pause", step, "--lease", "2")
    writer.wait_paused(step)
    writer.kill()  # SIGKILL: no cleanup runs; an S3 lease stays until it expires

    picture = day_picture(store)
    committed = KILL_POINTS.index(step) >= KILL_POINTS.index("committed")
    if committed:  # day 2 is B, and day 3, computed from A's carry, is no longer listed
        assert picture == {"2024-03-01": "A", "2024-03-02": "B"}
    else:
        assert picture == dict.fromkeys(DAYS[:3], "A")
    # The rerun (after the dead writer's S3 lease expired) completes it; the stable keys hold what the index names.
    time.sleep(2.5 if store_uri.startswith("s3://") else 0)
    result = publish(store_uri, "B", "2024-03-02")
    assert day_picture(store) == {"2024-03-01": "A", "2024-03-02": "B"}
    assert result.invalidated == (() if committed else ("2024-03-03",))
    for f in result.month.files:
        stable = daily_flow_key(f.timestamp, EXCHANGE, f.interval, NATIVE, f.day)
        assert store.same_object(f.key, stable)
    assert not store.exists(daily_flow_key("exchange", EXCHANGE, "1h", NATIVE, "2024-03-03"))


def _daily_writer(store_uri: str, generation: str, *args: str) -> Writer:
    """test_publication's Writer, running tests/daily_writer.py."""
    writer = Writer.__new__(Writer)
    root = Path(__file__).resolve().parents[1]
    writer.proc = subprocess.Popen(
        [sys.executable, str(WRITER), store_uri, generation, *args], env={**os.environ, "PYTHONPATH": str(root)},
        cwd=root, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    writer.steps = []
    return writer


# --- republishing -------------------------------------------------------------------------------------------------


def test_republishing_a_day_replaces_it_whole_and_drops_the_days_after_a_changed_carry(tmp_path: Path) -> None:
    uri = str(tmp_path / "store")
    store = store_from_uri(uri)
    with pytest.raises(DayOrderError, match="2024-03-02 cannot be published before 2024-03-01"):
        publish(uri, "A", "2024-03-02")
    for day in DAYS:
        publish(uri, "A", day)
    first = read_published_month(store, EXCHANGE, NATIVE, MONTH)
    # Same bars and carries again: nothing changes, later days stay (their carry still holds).
    again = publish(uri, "A", "2024-03-02")
    assert again.invalidated == () and again.month.files == first.files and again.month.carries == first.carries

    changed = publish(uri, "B", "2024-03-02")
    assert changed.invalidated == ("2024-03-03", "2024-03-04")
    assert day_picture(store) == {"2024-03-01": "A", "2024-03-02": "B"}
    assert published_days(store, EXCHANGE, NATIVE, MONTH) == ["2024-03-01", "2024-03-02"]
    assert read_carry(store, EXCHANGE, NATIVE, "2024-03-04", "exchange") is None  # day 3's carry is gone
    assert read_carry(store, EXCHANGE, NATIVE, "2024-03-03", "true").equals(carry("B", "true", "2024-03-02"))
    # Everything the old entry named and the new one does not is retiring (URLs may still name it), still stored.
    old = {f.key for f in first.files if f.day != "2024-03-01"} | {c.key for c in first.carries
                                                                   if c.for_day != "2024-03-02"}
    retiring = {r.key for r in changed.month.retiring}
    assert old == retiring and all(store.exists(k) for k in retiring)
    assert all(r.retire_after > time.time() + 500 for r in changed.month.retiring)
    # Direct readers of flow/ no longer see days 3 and 4; day 2's stable keys hold B.
    for t in TIMESTAMPS:
        for i in INTERVALS:
            assert not store.exists(daily_flow_key(t, EXCHANGE, i, NATIVE, "2024-03-03"))
            assert generation_of(store.read_bytes(daily_flow_key(t, EXCHANGE, i, NATIVE, "2024-03-02"))) == "B"
    assert last_complete_day(store, EXCHANGE, NATIVE, "true", "4h") == "2024-03-02"
    # The daily step then publishes day 3 again, from B's carry.
    publish(uri, "B", "2024-03-03")
    assert day_picture(store) == {"2024-03-01": "A", "2024-03-02": "B", "2024-03-03": "B"}


def test_bad_day_input_is_one_clear_error(tmp_path: Path) -> None:
    from aperiodic_pipelines.storage.daily import publish_day
    from tests.daily_writer import day_bars

    store = store_from_uri(str(tmp_path / "store"))
    bars = day_bars("A", "2024-03-01")
    del bars[("true", "1d")]
    with pytest.raises(ValueError, match=r"missing \[\('true', '1d'\)\]"):
        publish_day(store, exchange=EXCHANGE, symbol=SYMBOL, native_symbol=NATIVE, day="2024-03-01", bars=bars,
                    carries={t: carry("A", t, "2024-03-01") for t in TIMESTAMPS})
    with pytest.raises(ValueError, match="expected the exchange carry for 2024-03-02"):
        publish_day(store, exchange=EXCHANGE, symbol=SYMBOL, native_symbol=NATIVE, day="2024-03-01",
                    bars=day_bars("A", "2024-03-01"),
                    carries={"exchange": carry("A", "exchange", "2024-03-02"), "true": carry("A", "true", "2024-03-01")})
    assert read_published_month(store, EXCHANGE, NATIVE, MONTH) is None


# --- month close --------------------------------------------------------------------------------------------------


def test_month_close_unlists_the_days_and_retires_them_after_url_expiry(store_uri: str) -> None:
    store = store_from_uri(store_uri)
    for day in DAYS[:3]:
        publish(store_uri, "A", day)
    days_entry = read_published_month(store, EXCHANGE, NATIVE, MONTH)
    day_objects = days_entry.named_keys()
    monthly = {(t, i): pl.DataFrame({"generation": ["M"] * 3, "i": [1, 2, 3]}) for t in TIMESTAMPS for i in INTERVALS}
    # Long enough for the checks below on a loaded machine (3 s was not in CI); the wait further down is the rest.
    retain = 15.0
    closed_at = time.time()
    closed = publish_month_bars(store, exchange=EXCHANGE, symbol=SYMBOL, native_symbol=NATIVE, month=MONTH,
                                bars=monthly, retain_seconds=retain)
    assert closed.days == [] and closed.carries == ()
    assert {f.key for f in closed.files}.isdisjoint(day_objects)
    assert {r.key for r in closed.retiring} == day_objects  # every day version and carry, until URLs expire
    assert all(store.exists(k) for k in day_objects)  # a URL handed out a second ago still works
    assert published_days(store, EXCHANGE, NATIVE, MONTH) == []
    assert last_complete_day(store, EXCHANGE, NATIVE, "exchange", "1m") == "2024-03-31"
    stable = store.list("flow/")
    assert len(stable) == len(closed.files) and not [k for k in stable if k.endswith(tuple(f"/{d}.parquet" for d in DAYS))]
    with pytest.raises(MonthClosedError, match="monthly file of the exchange, true bars is published"):
        publish(store_uri, "A", "2024-03-04")
    assert retire_expired(store, EXCHANGE, NATIVE, MONTH, retain_seconds=retain) == ()  # not due yet

    time.sleep(max(0.0, closed_at + retain + 0.5 - time.time()))
    # The open month's next publication retires the closed month's days (nobody publishes March again).
    publish(store_uri, "A", "2024-04-01", retain_seconds=retain)
    assert not any(store.exists(k) for k in day_objects)
    after = read_published_month(store, EXCHANGE, NATIVE, MONTH)
    assert after.retiring == () and after.files == closed.files
    assert not store.list(f"{CARRIES_PREFIX}{EXCHANGE}/{NATIVE}/{MONTH}/")
    assert len(store.list(f"{VERSIONS_PREFIX}{EXCHANGE}/{NATIVE}/{MONTH}/")) == len(closed.files)


# --- the carry through the store ----------------------------------------------------------------------------------


def test_a_carry_round_trips_through_the_store_bit_exact(store_uri: str) -> None:
    store = store_from_uri(store_uri)
    publish(store_uri, "A", "2024-03-01")
    for timestamp in TIMESTAMPS:
        sent = carry("A", timestamp, "2024-03-01")
        got = read_carry(store, EXCHANGE, NATIVE, "2024-03-02", timestamp)
        assert got is not None and got.equals(sent)
        for span in SPANS:
            a, b = getattr(sent, span), getattr(got, span)
            assert a.last_price == b.last_price
            for interval in INTERVALS:
                for x, y in zip(a.windows[interval], b.windows[interval], strict=True):
                    assert x.dtype == y.dtype and np.array_equal(x.view(np.uint64), y.view(np.uint64))
    assert np.signbit(got.this_month.windows["1s"][0][0])  # -0.0 stays -0.0
    assert read_carry(store, EXCHANGE, NATIVE, "2024-03-01", "exchange") is None  # day 1: month_start_carry
    # A carry whose bytes are not what the index says is refused, naming it.
    entry = read_published_month(store, EXCHANGE, NATIVE, MONTH)
    key = entry.carries[0].key
    other = store.read_bytes(entry.carries[1].key)
    local = Path(store_uri) if not store_uri.startswith("s3://") else None
    if local is not None:
        (local / key).unlink()
        (local / key).write_bytes(other)
    else:
        import tempfile

        with tempfile.NamedTemporaryFile(suffix=".parquet") as tmp:
            Path(tmp.name).write_bytes(other)
            store.publish_file(tmp.name, key)
    with pytest.raises(Exception, match="does not hold the carry the index names"):
        read_carry(store, EXCHANGE, NATIVE, "2024-03-02", entry.carries[0].timestamp)


# --- the real client across a closed month and open-month days ---------------------------------------------------


@pytest.mark.slow
def test_client_reads_a_closed_month_and_open_month_days_each_bar_once(tmp_path: Path) -> None:
    from aperiodic_pipelines.flow import compute_flow_bars
    from aperiodic_pipelines.storage.daily import publish_day

    exchange, symbol, native = "binance-futures", "perpetual-BTC-USDT:USDT", "BTCUSDT"
    january = generate_tape("2024-01", 4_000, seed=21)
    february = generate_tape("2024-02", 4_000, seed=22, first_trade_id=10_000_000)
    jan_bars = compute_flow_bars(january, None, month="2024-01", timestamp="exchange", intervals=["1h"])["1h"]
    feb_bars = compute_flow_bars(february, january, month="2024-02", timestamp="exchange", intervals=["1h"])["1h"]
    store = store_from_uri(str(tmp_path / "store"))
    publish_month_bars(store, exchange=exchange, symbol=symbol, native_symbol=native, month="2024-01",
                       bars={("exchange", "1h"): jan_bars})
    state = month_start_carry(january, month="2024-02")
    for n in (1, 2, 3):  # February is open: three complete days through the daily engine and publish_day
        day = f"2024-02-{n:02d}"
        lo, hi = date.fromisoformat(day), date.fromordinal(date.fromisoformat(day).toordinal() + 1)
        trades = february.filter(pl.col("ts_exchange").is_between(_us(lo), _us(hi) - 1))
        result = compute_day_flow_bars(trades, state, day=day)
        publish_day(store, exchange=exchange, symbol=symbol, native_symbol=native, day=day,
                    bars={("exchange", i): frame for i, frame in result.bars.items()},
                    carries={"exchange": result.carry})
        state = read_carry(store, exchange, native, result.carry.day, "exchange")
        assert state is not None and state.equals(result.carry)

    keys = ApiKeyStore(tmp_path / "keys.sqlite")
    api_key = keys.create("daily")
    settings = ApiSettings(store_uri=str(store.root), api_keys_path=tmp_path / "keys.sqlite", index_refresh_seconds=0)
    params = {"timestamp": "exchange", "interval": "1h", "exchange": exchange, "symbol": symbol,
              "start_date": "2024-01-30", "end_date": "2024-02-05"}
    expected = pl.concat([jan_bars, feb_bars]).filter(
        pl.col("time").is_between(pl.datetime(2024, 1, 30), pl.datetime(2024, 2, 3, 23, 59, 59, 999999)))

    def read() -> pl.DataFrame:
        return get_metrics(api_key, metric="flow", timestamp="exchange", interval="1h", exchange=exchange,
                           symbol=symbol, start_date=date(2024, 1, 30), end_date=date(2024, 2, 5), base_url=base,
                           show_progress=False)

    with running_server(settings) as base:
        headers = {"X-API-KEY": api_key}
        listed = httpx.get(f"{base}/data/flow", params=params, headers=headers).json()["files"]
        assert [(f["year"], f["month"], f.get("day")) for f in listed] == [
            (2024, 1, None), (2024, 2, 1), (2024, 2, 2), (2024, 2, 3)]
        frame = read()
        assert_frame_equal(frame, expected)  # the daily rows equal the monthly file's, each bar once
        assert frame["time"].is_unique().all() and frame.height == 5 * 24
        coverage = httpx.get(f"{base}/metadata/coverage", params={"exchange": exchange, "symbol": symbol},
                             headers=headers).json()
        by_variant = {(v["timestamp"], v["interval"]): v for v in coverage["variants"]}
        assert by_variant[("exchange", "1h")]["complete_through"] == "2024-02-03"
        assert [d["day"] for d in by_variant[("exchange", "1h")]["days"]] == ["2024-02-01", "2024-02-02",
                                                                              "2024-02-03"]
        assert [m["month"] for m in by_variant[("exchange", "1h")]["months"]] == ["2024-01"]
        assert by_variant[("exchange", "1d")]["complete_through"] == "2024-02-03"

        # February closes: its monthly file is published (1h); the 1h days leave the listing, each bar once.
        publish_month_bars(store, exchange=exchange, symbol=symbol, native_symbol=native, month="2024-02",
                           bars={("exchange", "1h"): feb_bars})
        listed = httpx.get(f"{base}/data/flow", params=params, headers=headers).json()["files"]
        assert [(f["year"], f["month"], f.get("day")) for f in listed] == [(2024, 1, None), (2024, 2, None)]
        frame = read()
        full = pl.concat([jan_bars, feb_bars]).filter(
            pl.col("time").is_between(pl.datetime(2024, 1, 30), pl.datetime(2024, 2, 5, 23, 59, 59, 999999)))
        assert_frame_equal(frame, full)
        assert frame["time"].is_unique().all()
        coverage = httpx.get(f"{base}/metadata/coverage", params={"exchange": exchange, "symbol": symbol},
                             headers=headers).json()
        by_variant = {(v["timestamp"], v["interval"]): v for v in coverage["variants"]}
        assert by_variant[("exchange", "1h")]["complete_through"] == "2024-02-29"
        assert by_variant[("exchange", "1h")]["days"] == []


def _us(day: date) -> int:
    return (day.toordinal() - date(1970, 1, 1).toordinal()) * 86_400_000_000


def test_republishing_a_months_last_day_drops_the_next_months_days(tmp_path: Path) -> None:
    uri = str(tmp_path / "store")
    store = store_from_uri(uri)
    february = [f"2024-02-{d:02d}" for d in range(1, 30)]
    for day in february:
        publish(uri, "A", day)
    for day in ("2024-03-01", "2024-03-02"):  # March's days, from the carry February's last day handed on
        publish(uri, "A", day)
    assert read_carry(store, EXCHANGE, NATIVE, "2024-03-01", "true").equals(carry("A", "true", "2024-02-29"))
    assert publish(uri, "A", "2024-02-29").invalidated == ()  # same carry: March stands
    assert published_days(store, EXCHANGE, NATIVE, "2024-03") == ["2024-03-01", "2024-03-02"]

    result = publish(uri, "B", "2024-02-29")
    assert result.invalidated == ("2024-03-01", "2024-03-02")
    assert published_days(store, EXCHANGE, NATIVE, "2024-03") == []
    assert published_days(store, EXCHANGE, NATIVE, "2024-02") == february
    assert read_carry(store, EXCHANGE, NATIVE, "2024-03-01", "exchange").equals(carry("B", "exchange", "2024-02-29"))
    assert read_carry(store, EXCHANGE, NATIVE, "2024-03-02", "exchange") is None
    assert last_complete_day(store, EXCHANGE, NATIVE, "exchange", "1h") == "2024-02-29"


def test_a_day_and_the_month_are_never_published_at_once(tmp_path: Path) -> None:
    from aperiodic_pipelines.storage.publication import PublicationConflictError

    uri = str(tmp_path / "store")
    store = store_from_uri(uri)
    publish(uri, "A", "2024-03-01")
    writer = _daily_writer(uri, "A", "2024-03-02", "--pause", "committing")
    writer.wait_paused("committing")
    monthly = {(t, i): pl.DataFrame({"generation": ["M"]}) for t in TIMESTAMPS for i in INTERVALS}
    with pytest.raises(PublicationConflictError, match=f"okx-perps {NATIVE} {MONTH} is being published"):
        publish_month_bars(store, exchange=EXCHANGE, symbol=SYMBOL, native_symbol=NATIVE, month=MONTH, bars=monthly)
    writer.release()
    code, out, err = writer.finish()
    assert code == 0, err[-2000:]
    assert day_picture(store) == {"2024-03-01": "A", "2024-03-02": "A"}
