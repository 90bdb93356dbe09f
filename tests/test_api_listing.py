"""Daily files in listings (spec §5 as amended): the rule as a pure function, then through a real server and client.

A month is listed as its monthly file when there is one, else as its published days inside the range; never both
(the client would concatenate that month's bars twice).
"""

from __future__ import annotations

import ast
from datetime import date
from pathlib import Path

import httpx
import polars as pl
import pytest
from aperiodic import get_metrics
from polars.testing import assert_frame_equal

from aperiodic_pipelines.api import ApiKeyStore, ApiSettings, running_server
from aperiodic_pipelines.api.listing import ListedFile, listing_entries, published_files
from aperiodic_pipelines.domain.layout import daily_flow_key, flow_key
from aperiodic_pipelines.storage import LocalStore
from aperiodic_pipelines.storage.index import (
    PublishedFile,
    PublishedMonth,
    publish_month_bars,
    read_published_month,
    record_published_month,
)
from tests.api_fixtures import EXCHANGE, NATIVE, SYMBOL, Bars, compute_test_bars

REPO = Path(__file__).resolve().parents[1]


def key(period: str) -> str:
    return f"flow/exchange/{EXCHANGE}/1h/{NATIVE}/{period}.parquet"


# --- the rule ---------------------------------------------------------------------------------------------------


def test_a_month_is_listed_as_its_monthly_file_or_its_days_never_both() -> None:
    months = {m: key(m) for m in ("2024-01", "2024-02")}
    days = {d: key(d) for d in ("2024-02-01", "2024-02-02", "2024-03-01", "2024-03-02", "2024-03-03", "2024-03-31")}
    listed = listing_entries(months, days, date(2024, 1, 20), date(2024, 3, 2))
    assert listed == [
        ListedFile(2024, 1, None, key("2024-01")),
        ListedFile(2024, 2, None, key("2024-02")),  # February's days are not listed beside its monthly file
        ListedFile(2024, 3, 1, key("2024-03-01")),
        ListedFile(2024, 3, 2, key("2024-03-02")),  # 03-03 and 03-31 are after the range
    ]
    assert [f.entry("u") for f in listed[1:3]] == [
        {"year": 2024, "month": 2, "url": "u"}, {"year": 2024, "month": 3, "day": 1, "url": "u"}
    ]
    # Every month at most one way, and in the client's order (year, month, day).
    order = [(f.year, f.month, f.day or 0) for f in listed]
    assert order == sorted(order)
    for month in {(f.year, f.month) for f in listed}:
        kinds = {f.day is None for f in listed if (f.year, f.month) == month}
        assert len(kinds) == 1, month


def test_listing_edges() -> None:
    days = {"2024-03-05": key("2024-03-05"), "2024-03-06": key("2024-03-06")}
    assert listing_entries({}, days, date(2024, 3, 6), date(2024, 3, 6)) == [ListedFile(2024, 3, 6, key("2024-03-06"))]
    assert listing_entries({}, days, date(2024, 3, 7), date(2024, 4, 30)) == []
    assert listing_entries({}, {}, date(2024, 1, 1), date(2024, 12, 31)) == []
    # The preview restricts months, daily or monthly alike.
    months = {"2024-02": key("2024-02")}
    assert listing_entries(months, days, date(2024, 1, 1), date(2024, 3, 31), allowed_months=frozenset({"2024-03"})) == [
        ListedFile(2024, 3, 5, key("2024-03-05")), ListedFile(2024, 3, 6, key("2024-03-06"))
    ]
    # Across a year end.
    assert [(f.year, f.month) for f in listing_entries({"2023-12": "a", "2024-01": "b"}, {}, date(2023, 12, 31),
                                                       date(2024, 1, 1))] == [(2023, 12), (2024, 1)]


def test_published_files_reads_the_index_and_skips_what_the_layout_does_not_make() -> None:
    def file(period: str, timestamp: str = "exchange", interval: str = "1h", at: str | None = None) -> PublishedFile:
        return PublishedFile(timestamp, interval, at or key(period), "0" * 64, 1, 1)

    manifests = [
        PublishedMonth(EXCHANGE, SYMBOL, NATIVE, "2024-02", (
            file("2024-02"), file("2024-02", interval="1d"), file("2024-02", timestamp="true"),
            file("2024-02-01"), file("2024-01-31"),  # a day of another month in February's manifest: skipped
            file("x", at="flow/exchange/binance-futures/1h/BTCUSDT/notes.txt"),
        )),
        PublishedMonth(EXCHANGE, SYMBOL, NATIVE, "2024-03", (file("2024-03-01"), file("2024-03-02"))),
    ]
    found = published_files(manifests, "exchange", "1h")
    assert found.months == {"2024-02": key("2024-02")}
    assert found.days == {"2024-02-01": key("2024-02-01"), "2024-03-01": key("2024-03-01"),
                          "2024-03-02": key("2024-03-02")}


# --- through the server and the client -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bars() -> Bars:
    return compute_test_bars(5_000)


def _publish_days(store: LocalStore, bars: Bars, month: str, days: list[int], tmp: Path) -> list[PublishedFile]:
    frame = bars[("exchange", "1h", month)]
    files = []
    for day in days:
        name = f"{month}-{day:02d}"
        local = tmp / f"{name}.parquet"
        frame.filter(pl.col("time").dt.day() == day).write_parquet(local)
        daily = daily_flow_key("exchange", EXCHANGE, "1h", NATIVE, name)
        published = store.publish_file(local, daily)
        files.append(PublishedFile("exchange", "1h", daily, published.sha256, pl.read_parquet(local).height,
                                   published.size))
    return files


@pytest.mark.slow
def test_client_reads_monthly_then_daily_files(bars: Bars, tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    publish_month_bars(store, exchange=EXCHANGE, symbol=SYMBOL, native_symbol=NATIVE, month="2024-01",
                       bars={("exchange", "1h"): bars[("exchange", "1h", "2024-01")]})
    # February is open: three complete days published, no monthly file yet.
    days = _publish_days(store, bars, "2024-02", [1, 2, 3], tmp_path)
    record_published_month(store, PublishedMonth(EXCHANGE, SYMBOL, NATIVE, "2024-02", tuple(days)))
    keys = ApiKeyStore(tmp_path / "keys.sqlite")
    api_key = keys.create("daily")
    settings = ApiSettings(store_uri=str(store.root), api_keys_path=tmp_path / "keys.sqlite", index_refresh_seconds=0)
    params = {"timestamp": "exchange", "interval": "1h", "exchange": EXCHANGE, "symbol": SYMBOL,
              "start_date": "2024-01-20", "end_date": "2024-02-02"}
    with running_server(settings) as base:
        listed = httpx.get(f"{base}/data/flow", params=params, headers={"X-API-KEY": api_key}).json()["files"]
        assert [(f["year"], f["month"], f.get("day")) for f in listed] == [(2024, 1, None), (2024, 2, 1), (2024, 2, 2)]
        frame = get_metrics(api_key, metric="flow", timestamp="exchange", interval="1h", exchange=EXCHANGE,
                            symbol=SYMBOL, start_date=date(2024, 1, 20), end_date=date(2024, 2, 2), base_url=base,
                            show_progress=False)
        expected = pl.concat([bars[("exchange", "1h", "2024-01")], bars[("exchange", "1h", "2024-02")]]).filter(
            pl.col("time").is_between(pl.datetime(2024, 1, 20), pl.datetime(2024, 2, 2, 23, 59, 59, 999999))
        )
        assert_frame_equal(frame, expected)
        assert frame.height == 14 * 24 and frame["time"].is_unique().all()

        # The month closes: its monthly file joins the index (here beside the days, the worst case).
        monthly = publish_month_bars(store, exchange=EXCHANGE, symbol=SYMBOL, native_symbol=NATIVE, month="2024-02",
                                     bars={("exchange", "1h"): bars[("exchange", "1h", "2024-02")]})
        record_published_month(store, PublishedMonth(EXCHANGE, SYMBOL, NATIVE, "2024-02", monthly.files + tuple(days)))
        assert len(read_published_month(store, EXCHANGE, NATIVE, "2024-02").files) == 4
        listed = httpx.get(f"{base}/data/flow", params=params, headers={"X-API-KEY": api_key}).json()["files"]
        assert [(f["year"], f["month"], f.get("day")) for f in listed] == [(2024, 1, None), (2024, 2, None)]
        # The index names the monthly file's version key (storage.publication), which keeps the layout's file name.
        assert listed[1]["url"].split("?")[0].endswith(monthly.files[0].key)
        assert monthly.files[0].key.endswith(flow_key("exchange", EXCHANGE, "1h", NATIVE, "2024-02").rsplit("/", 1)[1])
        frame = get_metrics(api_key, metric="flow", timestamp="exchange", interval="1h", exchange=EXCHANGE,
                            symbol=SYMBOL, start_date=date(2024, 1, 20), end_date=date(2024, 2, 2), base_url=base,
                            show_progress=False)
        assert_frame_equal(frame, expected)  # no day twice


# --- the API's imports ------------------------------------------------------------------------------------------


def test_the_api_imports_only_the_domain_and_storage() -> None:
    allowed = ("aperiodic_pipelines.api", "aperiodic_pipelines.domain", "aperiodic_pipelines.storage")
    found = {}
    for path in sorted((REPO / "aperiodic_pipelines" / "api").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("aperiodic_pipelines"):
                if node.module == "aperiodic_pipelines":
                    assert [a.name for a in node.names] == ["__version__"], path
                elif not node.module.startswith(allowed):
                    found[path.name] = node.module
            elif isinstance(node, ast.Import):
                assert not any(a.name.startswith("aperiodic_pipelines") for a in node.names), path
        text = path.read_text()
        assert "os.environ" not in text and "getenv" not in text, path.name  # settings come from the domain
    assert found == {}
