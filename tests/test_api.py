"""The delivery API against the real `aperiodic` client and a live `aperiodic-pipelines serve` on 127.0.0.1.

Bars are computed by the real engine from seeded synthetic tapes and published with the store's atomic publish
and the index, as the Dagster publishing step does; the server runs as a subprocess of the real CLI.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pandas as pd
import polars as pl
import pytest
from aperiodic import APIError, DownloadError, get_metrics, get_symbols
from polars.testing import assert_frame_equal

from aperiodic_pipelines.storage import LocalStore, store_from_uri
from tests.api_fixtures import (
    EXCHANGE,
    NATIVE,
    SYMBOL,
    Bars,
    cli,
    compute_test_bars,
    create_key,
    expected_range,
    publish_test_bars,
    serve,
)

pytestmark = pytest.mark.slow
START, END = "2024-01-15", "2024-02-10"  # a range inside the two published months
HIP3, HIP3_NATIVE = "perpetual-XYZ:AAPL-USDC:USDC", "xyz:AAPL"  # ':' in the native id, hence in the key


@pytest.fixture(scope="module")
def bars() -> Bars:
    return compute_test_bars()


class Deployment:
    def __init__(self, base: str, key: str, env: dict[str, str], log: Path, root: Path) -> None:
        self.base, self.key, self.env, self.log, self.root = base, key, env, log, root

    def get(self, path: str, key: str | None = None, **params: str) -> httpx.Response:
        headers = {"X-API-KEY": key if key is not None else self.key}
        return httpx.get(f"{self.base}{path}", params=params, headers=headers, timeout=30)

    def listing(self, key: str | None = None, path: str = "/data/flow", **overrides: str) -> httpx.Response:
        params = {
            "timestamp": "exchange", "interval": "1h", "exchange": EXCHANGE, "symbol": SYMBOL,
            "start_date": START, "end_date": END, **overrides,
        }
        return self.get(path, key, **params)


@pytest.fixture(scope="module")
def local(bars: Bars, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """A local store with two published months, served with a preview month and the default settings."""
    root = tmp_path_factory.mktemp("api-local")
    publish_test_bars(LocalStore(root / "store"), bars)
    publish_test_bars(LocalStore(root / "store"), bars, exchange="hyperliquid-perps", native=HIP3_NATIVE, symbol=HIP3)
    env = {"APERIODIC_STORE": str(root / "store"), "APERIODIC_API_KEYS": str(root / "keys.sqlite")}
    key = create_key("tester", env)
    with serve(env, "--preview", f"{EXCHANGE}:{SYMBOL}:1h:2024-01", log_path=root / "serve.log") as base:
        yield Deployment(base, key, env, root / "serve.log", root)


@pytest.fixture(scope="module")
def strict(bars: Bars, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """The same store served with 1-second URLs."""
    root = tmp_path_factory.mktemp("api-strict")
    publish_test_bars(LocalStore(root / "store"), bars)
    env = {
        "APERIODIC_STORE": str(root / "store"), "APERIODIC_API_KEYS": str(root / "keys.sqlite"),
        "APERIODIC_URL_TTL_SECONDS": "1",
    }
    key = create_key("strict", env)
    with serve(env, log_path=root / "serve.log") as base:
        yield Deployment(base, key, env, root / "serve.log", root)


def read(deployment: Deployment, output: str, *, interval: str = "1h", timestamp: str = "exchange", **kw: object):
    return get_metrics(
        kw.pop("api_key", deployment.key), metric="flow", timestamp=timestamp, interval=interval, exchange=EXCHANGE,
        symbol=SYMBOL, start_date=date.fromisoformat(START), end_date=date.fromisoformat(END),
        base_url=deployment.base, show_progress=False, output=output, **kw,
    )


def assert_client_frames(deployment: Deployment, bars: Bars) -> None:
    for timestamp, interval in (("exchange", "1h"), ("exchange", "1d"), ("true", "1h")):
        expected = expected_range(bars, timestamp, interval, START, END)
        got = read(deployment, "polars", interval=interval, timestamp=timestamp)
        assert got.schema == expected.schema and got.schema["time"] == pl.Datetime("us")
        assert_frame_equal(got, expected)
        assert got["time"].min().isoformat() == f"{START}T00:00:00"
        got_pandas = read(deployment, "pandas", interval=interval, timestamp=timestamp)
        expected_pandas = expected.to_pandas()
        assert list(got_pandas.dtypes) == list(expected_pandas.dtypes)
        pd.testing.assert_frame_equal(got_pandas, expected_pandas)


# --- reading through the real client ---------------------------------------------------------------------------


def test_client_reads_published_months_from_a_local_store(local: Deployment, bars: Bars) -> None:
    assert_client_frames(local, bars)
    files = local.listing().json()["files"]
    assert [(f["year"], f["month"]) for f in files] == [(2024, 1), (2024, 2)]
    # The index names immutable versions: versions/flow/{exchange}/{native}/{YYYY-MM}/{timestamp}/{interval}/{sha256}/…
    assert all(f["url"].startswith(f"{local.base}/files/versions/flow/{EXCHANGE}/{NATIVE}/") for f in files)


def test_client_reads_published_months_from_s3(
    bars: Bars, s3_client, s3_bucket: str, tmp_path: Path  # noqa: F811
) -> None:
    uri = f"s3://{s3_bucket}/team/bars"
    publish_test_bars(store_from_uri(uri, s3_client=s3_client), bars)
    env = {"APERIODIC_STORE": uri, "APERIODIC_API_KEYS": str(tmp_path / "keys.sqlite")}
    key = create_key("s3-reader", env)
    with serve(env, log_path=tmp_path / "serve.log") as base:
        deployment = Deployment(base, key, env, tmp_path / "serve.log", tmp_path)
        assert_client_frames(deployment, bars)
        url = deployment.listing().json()["files"][0]["url"]
        query = parse_qs(urlsplit(url).query)
        assert re.fullmatch(rf"/{s3_bucket}/team/bars/versions/flow/{EXCHANGE}/{NATIVE}/2024-01/exchange/1h/[0-9a-f]{{64}}/2024-01.parquet", urlsplit(url).path)
        # Valid for at least the TTL (300 s): signed for TTL + the 30 s it may be handed out again.
        assert query["X-Amz-Expires"] == ["330"] and "X-Amz-Signature" in query
        assert get_symbols(key, EXCHANGE, base_url=base) == [SYMBOL]


def test_empty_listing_is_200_and_empty_frame(local: Deployment) -> None:
    answer = local.listing(start_date="2023-03-01", end_date="2023-06-30")
    assert answer.status_code == 200 and answer.json() == {"files": []}
    frame = get_metrics(local.key, metric="flow", timestamp="exchange", interval="4h", exchange=EXCHANGE,
                        symbol=SYMBOL, start_date=date(2024, 1, 1), end_date=date(2024, 2, 29),
                        base_url=local.base, show_progress=False)
    assert frame.is_empty()  # 4h is not published: months without that file are not listed


def test_get_symbols_and_coverage(local: Deployment, bars: Bars) -> None:
    assert get_symbols(local.key, EXCHANGE, base_url=local.base) == [SYMBOL]
    assert local.get("/metadata/symbols", exchange="okx-perps").json() == {
        "symbols": [], "exchange": "okx-perps", "bucket": "flow"
    }
    coverage = local.get("/metadata/coverage", exchange=EXCHANGE, symbol=SYMBOL).json()
    assert (coverage["symbol"], coverage["native_symbol"]) == (SYMBOL, NATIVE)
    assert [(v["timestamp"], v["interval"]) for v in coverage["variants"]] == [
        ("exchange", "1h"), ("exchange", "1d"), ("true", "1h")
    ]
    store = LocalStore(local.root / "store")
    for variant in coverage["variants"]:
        assert [m["month"] for m in variant["months"]] == ["2024-01", "2024-02"]
        for m in variant["months"]:
            key = f"flow/{variant['timestamp']}/{EXCHANGE}/{variant['interval']}/{NATIVE}/{m['month']}.parquet"
            data = store.read_bytes(key)
            assert m["sha256"] == hashlib.sha256(data).hexdigest() and m["size"] == len(data)
            assert m["rows"] == bars[(variant["timestamp"], variant["interval"], m["month"])].height
    assert httpx.get(local.base.replace("/api/v1", "/healthz")).json()["status"] == "ok"


# --- errors ----------------------------------------------------------------------------------------------------


def test_bad_key_is_401(local: Deployment) -> None:
    with pytest.raises(APIError) as raised:
        read(local, "polars", api_key="apk_000000000000_" + "A" * 43)
    assert raised.value.status_code == 401
    assert local.listing(key="not-a-key").json()["code"] == "invalid_api_key"
    assert httpx.get(f"{local.base}/data/flow", params={"timestamp": "exchange"}).status_code == 400  # missing first
    answer = httpx.get(f"{local.base}/metadata/symbols", params={"exchange": EXCHANGE})
    assert (answer.status_code, answer.json()["code"]) == (401, "missing_api_key")


@pytest.mark.parametrize(
    ("override", "code"),
    [
        ({"interval": "2m"}, "invalid_interval"),
        ({"interval": "15s"}, "invalid_interval"),
        ({"timestamp": "arrival"}, "invalid_timestamp"),
        ({"start_date": "2024-02-11"}, "inverted_range"),
        ({"start_date": "2024-1-15"}, "invalid_date"),
        ({"end_date": "2024-02-30"}, "invalid_date"),
        ({"start_date": "2010-01-01"}, "range_too_long"),
        ({"exchange": "coinbase"}, "unknown_exchange"),
        ({"symbol": "perpetual-BTC-EUR:EUR"}, "unknown_symbol"),
        ({"symbol": "BTCUSDT"}, "unknown_symbol"),
        ({"symbol": "../../etc/passwd"}, "unknown_symbol"),
        ({"symbol": "perpetual-BTC-USDT:USDT/../x"}, "unknown_symbol"),
    ],
)
def test_bad_parameters_are_400_with_a_stable_code(local: Deployment, override: dict[str, str], code: str) -> None:
    answer = local.listing(**override)
    body = answer.json()
    assert answer.status_code == 400, body
    assert body["code"] == code and body["error"] and isinstance(body["details"], list)


def test_client_surfaces_400_and_404(local: Deployment) -> None:
    with pytest.raises(APIError) as raised:
        get_metrics(local.key, metric="flow", timestamp="exchange", interval="1h", exchange=EXCHANGE,
                    symbol=SYMBOL, start_date=date(2024, 2, 1), end_date=date(2024, 1, 1),
                    base_url=local.base, show_progress=False)
    assert (raised.value.status_code, raised.value.code) == (400, "inverted_range")
    with pytest.raises(APIError) as raised:
        get_metrics(local.key, metric="vtwap", timestamp="exchange", interval="1h", exchange=EXCHANGE,
                    symbol=SYMBOL, start_date=date(2024, 1, 1), end_date=date(2024, 1, 2),
                    base_url=local.base, show_progress=False)
    assert raised.value.status_code == 404
    assert local.listing(path="/data/vtwap").json()["code"] == "unknown_metric"
    assert local.listing(path="/data/preview/vtwap", key="DEMO-KEY").json()["code"] == "unknown_metric"


def test_native_symbol_gets_the_atlas_form_in_the_error(local: Deployment) -> None:
    body = local.listing(symbol="BTCUSDT").json()
    assert body["error"] == "'BTCUSDT' is a native binance-futures id; the Atlas symbol is perpetual-BTC-USDT:USDT"
    with pytest.raises(APIError) as raised:  # the client shows `error`, not `details`: the hint must be there
        get_metrics(local.key, metric="flow", timestamp="exchange", interval="1h", exchange=EXCHANGE,
                    symbol="BTCUSDT", start_date=date(2024, 1, 1), end_date=date(2024, 1, 2),
                    base_url=local.base, show_progress=False)
    assert "the Atlas symbol is perpetual-BTC-USDT:USDT" in str(raised.value)


def test_api_paths_are_never_redirected(local: Deployment) -> None:
    answer = httpx.get(f"{local.base}/data/flow/", headers={"X-API-KEY": local.key})
    assert answer.status_code == 404 and answer.json()["code"] == "not_found"


# --- signed file URLs ------------------------------------------------------------------------------------------


def test_expired_url_is_403_and_not_retried_by_the_client(strict: Deployment) -> None:
    url = strict.listing().json()["files"][0]["url"]
    assert httpx.get(url).status_code == 200
    time.sleep(2.2)
    answer = httpx.get(url)
    assert (answer.status_code, answer.json()["code"]) == (403, "url_expired")


def test_tampered_url_is_403(local: Deployment) -> None:
    url = local.listing().json()["files"][0]["url"]
    signature = parse_qs(urlsplit(url).query)["signature"][0]
    flipped = signature[:-1] + ("0" if signature[-1] != "0" else "1")
    for tampered in (
        url.replace(signature, flipped),
        url.replace("/1h/", "/1d/"),  # another file under the same signature
        re.sub(r"expires=(\d+)", lambda m: f"expires={int(m[1]) + 3600}", url),
        url.split("?")[0],
        # Non-ASCII digits and signatures (found by schemathesis): str.isdigit() takes '¹', int() does not.
        re.sub(r"expires=(\d+)", "expires=%C2%B9", url),
        url.replace(signature, "%E6%B9%A6%18%C2%94"),
        url.replace(signature, signature.upper()),
    ):
        answer = httpx.get(tampered)
        assert (answer.status_code, answer.json()["code"]) == (403, "bad_signature"), tampered
    assert httpx.get(url).status_code == 200


def test_client_gets_download_error_403_for_an_expired_listing(strict: Deployment, monkeypatch) -> None:
    # The client downloads right after listing; delay its downloads past the 1 s TTL to see the 403 path.
    import aperiodic.endpoints.utils as client_utils

    original = client_utils.download_parquet_bytes

    async def late_download(url, headers, **kw):
        time.sleep(2.2)
        return await original(url, headers, **kw)

    monkeypatch.setattr(client_utils, "download_parquet_bytes", late_download)
    with pytest.raises(DownloadError) as raised:
        read(strict, "polars")
    assert raised.value.status_code == 403


# --- rate limit ------------------------------------------------------------------------------------------------


def test_rate_limit_429_with_retry_after_and_the_client_retry_succeeds(
    local: Deployment, bars: Bars, caplog: pytest.LogCaptureFixture
) -> None:
    from aperiodic_pipelines.api import ApiKeyStore, ApiSettings, running_server

    keys = local.root / "limited-keys.sqlite"
    key = ApiKeyStore(keys).create("burst")
    # A token every 4 s: the client's first attempt, right after the burst below, is refused.
    settings = ApiSettings(store_uri=str(local.root / "store"), api_keys_path=keys, rate_per_second=0.25, rate_burst=1)
    with running_server(settings) as base, caplog.at_level("INFO", logger="aperiodic_pipelines.api.access"):
        limited = Deployment(base, key, {}, local.log, local.root)
        answers = [limited.listing() for _ in range(4)]  # a burst of 1, then the bucket is empty
        assert answers[0].status_code == 200
        refused = next(a for a in answers if a.status_code == 429)
        assert 1 <= int(refused.headers["Retry-After"]) <= 4 and refused.json()["code"] == "rate_limited"
        frame = read(limited, "polars")  # the first attempt is limited; the client waits and retries
        assert_frame_equal(frame, expected_range(bars, "exchange", "1h", START, END))
        lines = [r.getMessage() for r in caplog.records if r.name == "aperiodic_pipelines.api.access"]
    assert any(re.fullmatch(r"GET /api/v1/data/flow 429 key=burst [\d.]+ms", line) for line in lines)
    statuses = [line.split()[2] for line in lines if line.startswith("GET /api/v1/data/flow")]
    assert statuses[-1] == "200" and "429" in statuses[4:]  # the client's own attempt was refused, then served


# --- preview ---------------------------------------------------------------------------------------------------


def test_demo_key_reads_the_preview_months_only(local: Deployment, bars: Bars) -> None:
    frame = read(local, "polars", api_key=None, preview=True)  # the client sends DEMO-KEY
    january = expected_range(bars, "exchange", "1h", START, END).filter(pl.col("time").dt.month() == 1)
    assert_frame_equal(frame, january)
    answer = local.listing(key="DEMO-KEY")
    assert (answer.status_code, answer.json()["code"]) == (403, "preview_only")
    assert local.get("/metadata/symbols", "DEMO-KEY", exchange=EXCHANGE).status_code == 403
    answer = local.listing(key="DEMO-KEY", path="/data/preview/flow", interval="1d")
    assert (answer.status_code, answer.json()["code"]) == (403, "not_in_preview")
    answer = local.listing(key="DEMO-KEY", path="/data/preview/flow", timestamp="true")
    assert (answer.status_code, answer.json()["code"]) == (400, "preview_timestamp")
    # A real key on the preview path sees the same preview slice.
    assert [f["month"] for f in local.listing(path="/data/preview/flow").json()["files"]] == [1]


# --- keys and logs ---------------------------------------------------------------------------------------------


def test_api_keys_commands_and_revocation_on_a_running_server(local: Deployment) -> None:
    created = cli("api-keys", "create", "short-lived", env=local.env)
    key = created.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"apk_[0-9a-f]{12}_[A-Za-z0-9_-]{43}", key)
    assert local.listing(key=key).status_code == 200
    listed = cli("api-keys", "list", env=local.env).stdout
    assert "short-lived" in listed and "tester" in listed and key not in listed
    assert key.split("_", 2)[2] not in (local.root / "keys.sqlite").read_bytes().decode("latin-1")
    assert cli("api-keys", "create", "short-lived", env=local.env).returncode == 2  # active name
    assert cli("api-keys", "revoke", "short-lived", env=local.env).returncode == 0
    assert local.listing(key=key).status_code == 401  # the running server sees the revocation
    assert cli("api-keys", "revoke", "short-lived", env=local.env).returncode == 2


def test_access_log_names_key_and_never_a_secret(local: Deployment) -> None:
    url = local.listing().json()["files"][0]["url"]
    httpx.get(url)
    log = local.log.read_text()
    assert re.search(r"GET /api/v1/data/flow 200 key=tester [\d.]+ms", log)
    assert re.search(r"GET /api/v1/files/versions/flow/\S+\.parquet 200 key=- [\d.]+ms", log)
    assert local.key not in log and local.key.split("_", 2)[2] not in log
    assert "signature" not in log and parse_qs(urlsplit(url).query)["signature"][0] not in log


def test_showcase_reads_a_month_back_with_the_client(local: Deployment) -> None:
    from aperiodic_pipelines.api.showcase import read_back_with_client

    lines = read_back_with_client(str(local.root / "store"), EXCHANGE, NATIVE, "1h", "2024-02")
    assert "696 bars x 37 columns, equal to the published file" in lines[0]
    assert any(line.startswith("│ 2024-02-01 00:00:00") for line in lines)
    snippet = "\n".join(lines[lines.index("to do the same yourself:") + 1 :])
    assert f'symbol="{SYMBOL}"' in snippet and "end_date=date(2024, 2, 29)" in snippet
    assert "aperiodic-pipelines serve" in snippet and "api-keys create" in snippet


def test_signing_secret_is_kept_in_the_key_database(local: Deployment) -> None:
    import hmac

    from aperiodic_pipelines.api import ApiKeyStore

    url = local.listing().json()["files"][0]["url"]
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    key = parts.path.split("/api/v1/files/", 1)[1]
    secret = ApiKeyStore(local.root / "keys.sqlite").signing_secret()  # what the running server generated
    expected = hmac.new(secret, f"{key}\n{query['expires'][0]}".encode(), hashlib.sha256).hexdigest()
    assert query["signature"] == [expected]


def test_urls_are_valid_for_at_least_the_ttl_and_reused(local: Deployment) -> None:
    before = time.time()
    first = local.listing().json()["files"]
    second = local.listing().json()["files"]
    assert first == second  # handed out again within the reuse window: signed once
    expires = int(parse_qs(urlsplit(first[0]["url"]).query)["expires"][0])
    assert before + 300 - 30 <= expires <= time.time() + 331  # TTL 300 s + reuse window 30 s, rounded up
    assert expires - time.time() >= 300 - 30  # the earliest-signed URL still has nearly the whole TTL


def test_hip3_instrument_with_a_colon_in_its_key(local: Deployment, bars: Bars) -> None:
    frame = get_metrics(local.key, metric="flow", timestamp="true", interval="1h", exchange="hyperliquid-perps",
                        symbol=HIP3, start_date=date.fromisoformat(START), end_date=date.fromisoformat(END),
                        base_url=local.base, show_progress=False)
    assert_frame_equal(frame, expected_range(bars, "true", "1h", START, END))
    assert get_symbols(local.key, "hyperliquid-perps", base_url=local.base) == [HIP3]


def test_preview_months_accept_atlas_or_native_ids() -> None:
    from aperiodic_pipelines.api.settings import ConfigError, PreviewMonth

    assert PreviewMonth.parse("hyperliquid-perps:xyz:AAPL:1h:2025-08") == PreviewMonth.parse(
        "hyperliquid-perps:perpetual-XYZ:AAPL-USDC:USDC:1h:2025-08"
    ) == PreviewMonth("hyperliquid-perps", HIP3, HIP3_NATIVE, "1h", "2025-08")
    for bad, fragment in [("x", "EXCHANGE:SYMBOL"), (f"{EXCHANGE}:BTCUSDT:2h:2024-01", "interval"),
                          (f"{EXCHANGE}:BTCUSDT:1h:2024-13", "month"), ("kraken:BTCUSDT:1h:2024-01", "exchange")]:
        with pytest.raises(ConfigError, match=fragment):
            PreviewMonth.parse(bad)


def test_a_new_month_is_listed_after_the_index_refresh(bars: Bars, tmp_path: Path) -> None:
    from aperiodic_pipelines.api import ApiKeyStore, ApiSettings, running_server
    from aperiodic_pipelines.storage.index import publish_month_bars

    store = LocalStore(tmp_path / "store")
    publish_test_bars(store, bars)
    key = ApiKeyStore(tmp_path / "keys.sqlite").create("cache")
    settings = ApiSettings(store_uri=str(store.root), api_keys_path=tmp_path / "keys.sqlite", index_refresh_seconds=1.5)
    params = {"timestamp": "exchange", "interval": "1d", "exchange": EXCHANGE, "symbol": SYMBOL,
              "start_date": "2024-01-01", "end_date": "2024-03-31"}
    with running_server(settings) as base:
        def listed() -> list[int]:
            answer = httpx.get(f"{base}/data/flow", params=params, headers={"X-API-KEY": key})
            return [f["month"] for f in answer.json()["files"]]

        assert listed() == [1, 2]
        publish_month_bars(store, exchange=EXCHANGE, symbol=SYMBOL, native_symbol=NATIVE, month="2024-03",
                           bars={("exchange", "1d"): bars[("exchange", "1d", "2024-02")]})
        assert listed() == [1, 2]  # the cached index, no store access
        time.sleep(1.6)
        assert listed() == [1, 2, 3]


def test_public_url_is_the_base_of_file_urls_and_healthz_sees_a_missing_store(
    local: Deployment, tmp_path: Path
) -> None:
    from aperiodic_pipelines.api import ApiSettings, running_server

    public = "https://bars.example.com/team/api/v1"
    settings = ApiSettings(store_uri=str(local.root / "store"), api_keys_path=local.root / "keys.sqlite",
                           public_url=public)
    with running_server(settings) as base:
        answer = Deployment(base, local.key, {}, local.log, local.root).listing().json()
        assert all(f["url"].startswith(f"{public}/files/versions/flow/") for f in answer["files"])
    missing = ApiSettings(store_uri=str(tmp_path / "nowhere"), api_keys_path=tmp_path / "keys.sqlite")
    with running_server(missing) as base:
        answer = httpx.get(base.replace("/api/v1", "/healthz"))
        assert (answer.status_code, answer.json()["code"]) == (503, "store_unavailable")


def test_a_signed_url_lives_at_least_its_ttl_whatever_the_fraction_of_the_second() -> None:
    from aperiodic_pipelines.api.errors import ApiError
    from aperiodic_pipelines.api.signing import UrlSigner

    signer = UrlSigner(b"k" * 32, ttl_seconds=1)
    for signed_at in (10.0, 10.5, 10.999):
        expires, signature = signer.sign("flow/x.parquet", now=signed_at)
        signer.verify("flow/x.parquet", str(expires), signature, now=signed_at + 0.999)  # still valid
        with pytest.raises(ApiError, match="expired"):
            signer.verify("flow/x.parquet", str(expires), signature, now=signed_at + 2.0)
