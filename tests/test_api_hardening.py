"""The API under faults and hostile requests (issue 16 item 6), and the messages the client shows (issue 14 item 4).

Every test runs a real server on 127.0.0.1 (`aperiodic-pipelines serve` as a subprocess, or uvicorn in a thread
where the test needs settings the environment does not carry) over stores published by the real engine.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from aperiodic import APIError, get_metrics

from aperiodic_pipelines.api import ApiKeyStore, ApiSettings, running_server
from aperiodic_pipelines.mirror.s3 import create_bucket, make_client, start_moto_server
from aperiodic_pipelines.storage import LocalStore, store_from_uri
from aperiodic_pipelines.storage.index import publish_month_bars
from tests.api_fixtures import (
    EXCHANGE,
    NATIVE,
    SYMBOL,
    Bars,
    compute_test_bars,
    create_key,
    publish_test_bars,
    serve,
)

pytestmark = pytest.mark.slow
LISTING = {"timestamp": "exchange", "interval": "1h", "exchange": EXCHANGE, "symbol": SYMBOL,
           "start_date": "2024-01-15", "end_date": "2024-02-10"}
ETH, ETH_NATIVE = "perpetual-ETH-USDT:USDT", "ETHUSDT"  # published with the exchange variant only
SECRET = "not-for-readers-0b5e2c\n"  # what a file outside the store holds; must never be served


@pytest.fixture(scope="module")
def bars() -> Bars:
    return compute_test_bars(5_000)


class Live:
    def __init__(self, base: str, key: str, root: Path, log: Path) -> None:
        self.base, self.key, self.root, self.log = base, key, root, log

    @property
    def origin(self) -> str:
        return self.base.removesuffix("/api/v1")

    def get(self, path: str, key: str | None = None, **params: str) -> httpx.Response:
        return httpx.get(f"{self.base}{path}", params=params, headers={"X-API-KEY": key or self.key}, timeout=60)

    def listing(self, **overrides: str) -> httpx.Response:
        return self.get("/data/flow", **{**LISTING, **overrides})

    def url(self, **overrides: str) -> str:
        answer = self.listing(**overrides)
        assert answer.status_code == 200, answer.text
        return answer.json()["files"][0]["url"]


@pytest.fixture(scope="module")
def live(bars: Bars, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """`serve` over a local store: BTCUSDT with both variants, ETHUSDT with the exchange variant only."""
    root = tmp_path_factory.mktemp("api-hardening")
    store = LocalStore(root / "store")
    publish_test_bars(store, bars)
    publish_month_bars(store, exchange=EXCHANGE, symbol=ETH, native_symbol=ETH_NATIVE, month="2024-01",
                       bars={("exchange", "1h"): bars[("exchange", "1h", "2024-01")]})
    env = {"APERIODIC_STORE": str(root / "store"), "APERIODIC_API_KEYS": str(root / "keys.sqlite"),
           "APERIODIC_INDEX_REFRESH_SECONDS": "0", "APERIODIC_RATE_LIMIT_PER_SECOND": "1000",
           "APERIODIC_RATE_LIMIT_BURST": "1000"}
    key = create_key("hardening", env)
    with serve(env, "--preview", f"{EXCHANGE}:{SYMBOL}:1h:2024-01", log_path=root / "serve.log") as base:
        yield Live(base, key, root, root / "serve.log")


def client_error(live: Live, **overrides: object) -> APIError:
    """The `APIError` the real client raises for a listing (its message is what a user sees)."""
    arguments: dict[str, object] = {
        "metric": "flow", "timestamp": "exchange", "interval": "1h", "exchange": EXCHANGE, "symbol": SYMBOL,
        "start_date": date(2024, 1, 1), "end_date": date(2024, 1, 31), **overrides,
    }
    with pytest.raises(APIError) as raised:
        get_metrics(live.key, base_url=live.base, show_progress=False, **arguments)  # type: ignore[arg-type]
    return raised.value


# --- messages the client shows ----------------------------------------------------------------------------------


def test_unknown_instrument_is_refused_with_where_to_look(live: Live) -> None:
    error = client_error(live, symbol="perpetual-DOGE-USDT:USDT")  # a valid id with nothing published
    assert (error.status_code, error.code) == (400, "unknown_instrument")
    assert str(error) == (
        "400: binance-futures perpetual-DOGE-USDT:USDT has nothing published on this deployment; "
        "the published ones are listed at /api/v1/metadata/symbols?exchange=binance-futures"
    )
    assert live.listing(symbol="perpetual-DOGE-USDT:USDT").json()["code"] == "unknown_instrument"
    # A native id: the Atlas form, and where the list is, in the message itself.
    assert "BTCUSDT' is a native binance-futures id; the Atlas symbol is perpetual-BTC-USDT:USDT" in str(
        client_error(live, symbol="BTCUSDT")
    )
    # A published instrument with nothing in the range is still an empty answer, not an error.
    assert live.listing(start_date="2023-03-01", end_date="2023-03-31").json() == {"files": []}


def test_a_variant_the_exchange_does_not_have_is_refused(live: Live, tmp_path: Path) -> None:
    error = client_error(live, symbol=ETH, timestamp="true")
    assert str(error) == (
        "400: binance-futures has no timestamp=true bars: its public archive records no arrival times; "
        "use timestamp=exchange"
    )
    assert live.listing(symbol=ETH, timestamp="true").json()["code"] == "unknown_variant"
    # Bars of the variant that are in the store (published from another source) are still served.
    assert [f["month"] for f in live.listing(timestamp="true").json()["files"]] == [1, 2]
    # Read from Tardis files, every exchange has arrival times: the same question is an empty answer.
    keys = tmp_path / "keys.sqlite"
    key = ApiKeyStore(keys).create("tardis")
    settings = ApiSettings(store_uri=str(live.root / "store"), api_keys_path=keys, source="tardis")
    with running_server(settings) as base:
        answer = httpx.get(f"{base}/data/flow", params={**LISTING, "symbol": ETH, "timestamp": "true"},
                           headers={"X-API-KEY": key})
        assert (answer.status_code, answer.json()) == (200, {"files": []})


# --- the access log ---------------------------------------------------------------------------------------------


def test_access_log_escapes_control_characters(live: Live) -> None:
    forged = "GET /api/v1/data/flow 200 key=admin 0.1ms"
    for path in (
        "/api/v1/data/flow%0A" + forged.replace(" ", "%20"),
        "/api/v1/files/flow%0D%0A" + forged.replace(" ", "%20"),
        "/api/v1/x%1B%5B31m%E2%80%A8%C2%85%09end",  # ANSI escape, U+2028, NEL, tab
    ):
        httpx.get(live.origin + path, headers={"X-API-KEY": live.key}, timeout=30)
    httpx.get(f"{live.base}/metadata/symbols", params={"exchange": EXCHANGE}, timeout=30)  # a marker line after
    lines = live.log.read_text().splitlines()
    access = [line for line in lines if "aperiodic_pipelines.api.access" in line]
    assert not any(line.startswith(("GET", "\r")) for line in lines)  # no line of the request's making
    assert sum("key=admin" in line for line in access) == 2  # inside the escaped paths, not as lines of their own
    assert any(r"/api/v1/data/flow\x0aGET\x20/api/v1/data/flow\x20200\x20key=admin\x200.1ms 404 key=-" in line
               for line in access)
    assert any(r"/api/v1/x\x1b[31m\u2028\x85\x09end 404" in line for line in access)
    assert all(len(line.split()) == 9 for line in access)  # date time level logger: METHOD PATH STATUS KEY MS


# --- the store: never an empty answer for a store that is not there ----------------------------------------------


def _every_endpoint(live: Live, file_url: str) -> dict[str, httpx.Response]:
    return {
        "listing": live.listing(),
        "preview": live.get("/data/preview/flow", **LISTING),
        "symbols": live.get("/metadata/symbols", exchange=EXCHANGE),
        "coverage": live.get("/metadata/coverage", exchange=EXCHANGE, symbol=SYMBOL),
        "file": httpx.get(file_url, timeout=30),
        "file HEAD": httpx.head(file_url, timeout=30),
        "healthz": httpx.get(f"{live.origin}/healthz", timeout=30),
    }


def test_missing_or_unreadable_local_store_is_503_everywhere(live: Live) -> None:
    file_url = live.url()
    store = live.root / "store"
    moved = live.root / "store-away"
    store.rename(moved)
    try:
        for state in ("missing", "a file"):
            answers = _every_endpoint(live, file_url)
            for name, answer in answers.items():
                assert answer.status_code == 503, (state, name, answer.status_code, answer.text)
                if name != "file HEAD":
                    assert answer.json()["code"] == "store_unavailable", (state, name)
                assert str(store) not in answer.text and "store-away" not in answer.text
            store.write_text("not a directory")  # a root that cannot be read as a store
        store.unlink()
        # The client retries a 503 (about 7 s), then raises the body's error.
        error = client_error(live)
        assert (error.status_code, str(error)) == (503, "503: the store cannot be read right now; try again later")
    finally:
        store.unlink(missing_ok=True)
        moved.rename(store)
    assert {name: a.status_code for name, a in _every_endpoint(live, file_url).items()} == {
        "listing": 200, "preview": 200, "symbols": 200, "coverage": 200, "file": 200, "file HEAD": 200, "healthz": 200
    }


def test_unreachable_s3_is_503_and_healthz_names_nothing(
    bars: Bars, tmp_path: Path, aws_env: str  # noqa: F811
) -> None:
    server, endpoint = start_moto_server("127.0.0.1")  # its own server: this test stops it
    try:
        client = make_client(endpoint)
        create_bucket(client, "hardening-bucket")
        publish_test_bars(store_from_uri("s3://hardening-bucket/team", s3_client=client), bars)
        env = {"APERIODIC_STORE": "s3://hardening-bucket/team", "APERIODIC_API_KEYS": str(tmp_path / "keys.sqlite"),
               "AWS_ENDPOINT_URL_S3": endpoint, "APERIODIC_INDEX_REFRESH_SECONDS": "0"}
        key = create_key("s3", env)
        with serve(env, log_path=tmp_path / "serve.log") as base:
            live = Live(base, key, tmp_path, tmp_path / "serve.log")
            assert live.listing().status_code == 200
            health = httpx.get(f"{live.origin}/healthz", timeout=30)
            assert set(health.json()) == {"status", "version"}
            server.stop()
            server = None
            for name, answer in {
                "listing": live.listing(),
                "symbols": live.get("/metadata/symbols", exchange=EXCHANGE),
                "coverage": live.get("/metadata/coverage", exchange=EXCHANGE, symbol=SYMBOL),
                "healthz": httpx.get(f"{live.origin}/healthz", timeout=60),
            }.items():
                assert (answer.status_code, answer.json()["code"]) == (503, "store_unavailable"), (name, answer.text)
                for where in ("hardening-bucket", "team", endpoint, endpoint.rsplit(":", 1)[1]):
                    assert where not in answer.text, (name, where)
    finally:
        if server is not None:
            server.stop()


def test_missing_bucket_is_503_not_500(tmp_path: Path, aws_env: str) -> None:  # noqa: F811
    env = {"APERIODIC_STORE": "s3://no-such-bucket-here/x", "APERIODIC_API_KEYS": str(tmp_path / "keys.sqlite")}
    key = create_key("s3", env)
    with serve(env, log_path=tmp_path / "serve.log", healthy=False) as base:
        live = Live(base, key, tmp_path, tmp_path / "serve.log")
        for answer in (live.listing(), live.get("/metadata/symbols", exchange=EXCHANGE),
                       httpx.get(f"{live.origin}/healthz", timeout=30)):
            assert (answer.status_code, answer.json()["code"]) == (503, "store_unavailable"), answer.text
            assert "no-such-bucket-here" not in answer.text


# --- files: nothing outside the store's root ----------------------------------------------------------------------


def test_a_symlink_in_the_store_is_never_followed(live: Live, bars: Bars) -> None:
    outside = live.root / "outside"
    outside.mkdir(exist_ok=True)
    (outside / "secret.parquet").write_text(SECRET)
    (outside / "2024-01.parquet").write_text(SECRET)
    flow = live.root / "store" / "flow" / "exchange" / EXCHANGE
    month_file = flow / "1h" / NATIVE / "2024-01.parquet"
    kept = month_file.read_bytes()
    url = live.url()
    daily_dir = flow / "1d" / NATIVE
    daily_url = live.url(interval="1d")
    try:
        # The file itself a symlink, to a file outside the store and to /etc/passwd.
        for target in (outside / "secret.parquet", Path("/etc/passwd")):
            month_file.unlink()
            month_file.symlink_to(target)
            for answer in (httpx.get(url, timeout=30), httpx.head(url, timeout=30)):
                assert answer.status_code == 404, answer.text
                assert SECRET.strip() not in answer.text and "root:" not in answer.text
        # A directory on the way a symlink.
        shutil.move(daily_dir, live.root / "moved-1d")
        daily_dir.symlink_to(outside, target_is_directory=True)
        answer = httpx.get(daily_url, timeout=30)
        assert answer.status_code == 404 and SECRET.strip() not in answer.text
    finally:
        month_file.unlink(missing_ok=True)
        month_file.write_bytes(kept)
        if daily_dir.is_symlink():
            daily_dir.unlink()
            shutil.move(live.root / "moved-1d", daily_dir)
    served = httpx.get(url, timeout=30)
    assert served.status_code == 200 and served.content == kept
    assert httpx.get(daily_url, timeout=30).status_code == 200


def test_head_on_a_file_url_answers_like_get_without_a_body(live: Live) -> None:
    url = live.url()
    got, head = httpx.get(url, timeout=30), httpx.head(url, timeout=30)
    assert got.status_code == head.status_code == 200 and head.content == b""
    for name in ("content-type", "content-length", "content-disposition", "etag", "accept-ranges"):
        assert head.headers[name] == got.headers[name], name
    ages = [int(a.headers["cache-control"].removeprefix("private, max-age=")) for a in (got, head)]
    assert 0 <= ages[0] - ages[1] <= 1  # the seconds left, counted down between the two requests
    assert int(head.headers["content-length"]) == len(got.content) > 0
    ranged = httpx.get(url, headers={"Range": "bytes=0-3"}, timeout=30)
    assert (ranged.status_code, ranged.content) == (206, b"PAR1")
    signature = parse_qs(urlsplit(url).query)["signature"][0]
    tampered = url.replace(signature, signature[::-1])
    assert httpx.head(tampered, timeout=30).status_code == 403
    assert httpx.head(url.replace("2024-01.parquet", "2023-01.parquet"), timeout=30).status_code == 403


# --- keys ---------------------------------------------------------------------------------------------------------


def test_a_repeated_api_key_header_is_400(live: Live) -> None:
    for headers in ([("X-API-KEY", live.key), ("X-API-KEY", "DEMO-KEY")],
                    [("X-API-KEY", "not-a-key"), ("x-api-key", live.key)],
                    [("X-API-KEY", live.key), ("X-API-KEY", live.key)]):
        for path, params in (("/data/flow", LISTING), ("/metadata/symbols", {"exchange": EXCHANGE})):
            answer = httpx.get(f"{live.base}{path}", params=params, headers=headers, timeout=30)
            assert (answer.status_code, answer.json()["code"]) == (400, "repeated_api_key"), (headers, path)
    assert live.listing().status_code == 200


def test_healthz_says_ok_and_nothing_else(live: Live) -> None:
    answer = httpx.get(f"{live.origin}/healthz", timeout=30)
    assert answer.status_code == 200 and set(answer.json()) == {"status", "version"}
    assert str(live.root) not in answer.text and not re.search(r"/tmp|store", answer.text)
