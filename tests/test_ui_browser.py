"""The Dagster UI, seen in a real browser, shows what the CLI materialised.

A small instance is materialised through the CLI's entry point (`aperiodic-pipelines materialize`, which submits
runs through the code location) from the offline demo's mirrors: binance-futures BTCUSDT and hyperliquid-perps BTC,
one month, a few hundred trades each; binance-futures ETHUSDT and okx-perps BTC-USDT-SWAP are registered but never
run. Then `dagster-webserver` serves that instance on 127.0.0.1 and Debian's chromium, driven by Playwright (no
downloaded browser), reads the rendered pages. Screenshots land in the test's tmp dir, `ui0/screenshots/`.
"""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import requests
from playwright.sync_api import expect

from aperiodic_pipelines.demo import demo_mirrors, patched_environ
from tests.postgres_fixtures import free_port, instance_environment
from tests.servers import http_ok, running_server

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
STARTUP_TIMEOUT_S = 180
PAGE_TIMEOUT_MS = 90_000  # the UI's first GraphQL queries load the code location; slow on a busy 2-core box
MONTH = "2025-08"  # Hyperliquid's node archives start in 2025 (see the demo)
TRADES_PER_MONTH = 400
# exchange → native ids. Registered but never materialised: ETHUSDT beside BTCUSDT on binance-futures, and
# okx-perps' instrument (its archives are mirrored, nothing runs).
MATERIALISED = {"binance-futures": ["BTCUSDT"], "hyperliquid-perps": ["BTC"], "okx-perps": []}
REGISTERED = {"binance-futures": ["BTCUSDT", "ETHUSDT"], "hyperliquid-perps": ["BTC"], "okx-perps": ["BTC-USDT-SWAP"]}
LOCATION = "aperiodic_pipelines"

pytestmark = pytest.mark.slow


# --- names in the asset graph (one graph per exchange, assets prefixed by the exchange's slug) -----------------


def slug(exchange: str) -> str:
    from aperiodic_pipelines.domain.exchanges import exchange_of

    return exchange_of(exchange).slug


def asset_path(exchange: str, name: str) -> str:
    """URL path of an asset page: /assets/<slug>/<name>."""
    return f"/assets/{slug(exchange)}/{name}"


def partition_key(native: str) -> str:
    from aperiodic_pipelines.defs.partitions import flow_partition_key

    return str(flow_partition_key("binance-futures", native, MONTH))  # the key has no exchange in it


# --- the materialised instance and its webserver --------------------------------------------------------------


def _materialise_with_cli(environment: dict[str, str]) -> None:
    from aperiodic_pipelines.cli import main

    with patched_environ(environment):
        for exchange, natives in MATERIALISED.items():
            for native in natives:
                exit_code = main(["materialize", "--exchange", exchange, "--symbol", native, "--month", MONTH,
                                  "--log-level", "WARNING"])
                assert exit_code == 0, f"CLI materialize {exchange} {native} {MONTH} failed"
        for exchange, natives in REGISTERED.items():
            for native in set(natives) - set(MATERIALISED[exchange]):
                assert main(["instruments", "add", "--exchange", exchange, "--symbol", native]) == 0


def _cli_run_ids(environment: dict[str, str]) -> dict[str, list[str]]:
    """Run ids in the instance by the exchange tag (the instance is fresh: every run is the CLI's)."""
    from dagster import DagsterInstance

    from aperiodic_pipelines.domain.exchanges import exchange_of

    runs: dict[str, list[str]] = {exchange: [] for exchange in MATERIALISED}
    with patched_environ(environment), DagsterInstance.get() as instance:
        for run in instance.get_runs():
            exchange = run.tags["aperiodic/exchange"]
            # Hyperliquid's venue month runs first, under its own job (one partitions definition per job).
            kind = exchange if run.job_name == exchange_of(exchange).flow_job_name else f"{exchange} venue"
            runs.setdefault(kind, []).append(run.run_id)
    return runs


@pytest.fixture(scope="module")
def ui(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    workdir = tmp_path_factory.mktemp("ui")
    (workdir / "screenshots").mkdir()
    with (
        instance_environment("sqlite", workdir / "dagster_home") as instance_env,
        demo_mirrors(workdir, [MONTH], TRADES_PER_MONTH) as mirror_env,
    ):
        mirror_env.pop("S3_MIRROR_CLIENT_ENDPOINT")
        # ETHUSDT is in Binance's listing (so `instruments add` accepts it) but never materialised here.
        listed = workdir / "archives/binance/data/futures/um/monthly/aggTrades/ETHUSDT"
        listed.mkdir(parents=True)
        (listed / f"ETHUSDT-aggTrades-{MONTH}.zip").write_bytes(b"")
        environment = {**instance_env, **mirror_env, "APERIODIC_STORE": str(workdir / "store"),
                       "APERIODIC_HTTP_BACKOFF": "0.01"}
        _materialise_with_cli(environment)
        run_ids = _cli_run_ids(environment)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        with running_server(
            [sys.executable, "-m", "dagster_webserver", "-h", "127.0.0.1", "-p", str(port),
             "-w", str(REPO / "workspace.yaml")],
            ready=http_ok(f"{url}/server_info"), log_path=workdir / "webserver.log", name="dagster-webserver",
            cwd=workdir, env={**os.environ, **environment}, timeout_s=STARTUP_TIMEOUT_S, poll_s=1,
        ):
            # What clicking away the UI's first-visit "join the community" dialog does; it would cover the pages.
            requests.post(f"{url}/graphql", json={"query": "mutation { setNuxSeen }"}, timeout=30).raise_for_status()
            yield {"url": url, "run_ids": run_ids, "shots": workdir / "screenshots"}


@pytest.fixture(scope="module")
def browser(ui: dict) -> Iterator:
    from playwright.sync_api import sync_playwright

    assert CHROMIUM.exists(), f"no {CHROMIUM}: install Debian's chromium (apt-get install chromium; .ci/run does)"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(browser, ui: dict, request: pytest.FixtureRequest) -> Iterator:
    context = browser.new_context(viewport={"width": 1600, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(PAGE_TIMEOUT_MS)
    try:
        yield page
    finally:
        screenshot(page, ui, request.node.name)  # the last page: where a failing test stopped
        context.close()


def screenshot(page, ui: dict, name: str) -> None:
    page.screenshot(path=ui["shots"] / f"{name}.png", full_page=True)


def open_page(page, ui: dict, path: str, wait_for: str):
    """Open `path` and wait until `wait_for` (text or regex) is rendered: the UI fills pages asynchronously."""
    page.goto(ui["url"] + path)
    page.get_by_text(re.compile(wait_for)).first.wait_for(state="visible")
    return page


# --- the tests --------------------------------------------------------------------------------------------------


def test_each_exchange_job_lists_the_cli_runs(page, ui: dict) -> None:
    """The CLI submits runs through the code location, so each shows under its exchange's job."""
    from aperiodic_pipelines.domain.exchanges import exchange_of

    for exchange, natives in MATERIALISED.items():
        assert len(ui["run_ids"][exchange]) == len(natives)
        open_page(page, ui, f"/locations/{LOCATION}/jobs/{exchange_of(exchange).flow_job_name}/runs",
                  wait_for=ui["run_ids"][exchange][0][:8] if natives else "No runs found")
        screenshot(page, ui, f"job_runs_{slug(exchange)}")
        table = page.inner_text("body")
        for other, run_ids in ui["run_ids"].items():
            for run_id in run_ids:
                assert (run_id[:8] in table) == (other == exchange), (exchange, other, run_id)
        for native in natives:
            assert partition_key(native) in table  # the run's partition tag
    # The venue month of each Hyperliquid month the CLI materialised: one run, under the venue job only.
    from aperiodic_pipelines.defs.venue import venue_job_name

    (venue_run,) = ui["run_ids"]["hyperliquid-perps venue"]
    open_page(page, ui, f"/locations/{LOCATION}/jobs/{venue_job_name('hyperliquid-perps')}/runs",
              wait_for=venue_run[:8])
    table = page.inner_text("body")
    assert not any(run_id[:8] in table for run_ids in ui["run_ids"].values() for run_id in run_ids
                   if run_id != venue_run)


def test_published_month_is_materialized_exactly_for_the_materialised_instruments(page, ui: dict) -> None:
    for exchange, natives in REGISTERED.items():
        path = asset_path(exchange, "published_flow_bars")
        open_page(page, ui, f"{path}?view=partitions", wait_for=r"Materialized \(\d+\)")
        # The status filter counts every instrument x month partition of the exchange's asset.
        expect(page.get_by_text(re.compile(r"^Materialized \(\d+\)$"))).to_have_text(
            f"Materialized ({len(MATERIALISED[exchange])})"
        )
        screenshot(page, ui, f"partitions_{slug(exchange)}")
        for native in natives:
            key = partition_key(native)
            open_page(page, ui, f"{path}?view=partitions&partition={quote(key)}", wait_for=re.escape(key))
            if native in MATERIALISED[exchange]:
                page.get_by_text("Materialized", exact=True).first.wait_for(state="visible")
                (run_id,) = [r for r in ui["run_ids"][exchange] if r[:8] in page.inner_text("body")]
            else:
                page.get_by_text("View all historical events (0)").wait_for(state="visible")
                assert page.get_by_text("Materialized", exact=True).count() == 0, (exchange, native)


def test_true_time_asset_exists_only_for_sources_with_arrival_times(page, ui: dict) -> None:
    """The asset catalog under each exchange's prefix: binance-futures and okx-perps have no flow_bars_true."""
    from aperiodic_pipelines.domain.exchanges import exchange_of

    for exchange in REGISTERED:
        open_page(page, ui, f"/assets/{slug(exchange)}", wait_for="^published_flow_bars$")
        screenshot(page, ui, f"catalog_{slug(exchange)}")
        listed = page.get_by_text("flow_bars_true", exact=True).count() > 0
        assert listed == exchange_of(exchange).has_arrival_times(), exchange
    assert not exchange_of("binance-futures").has_arrival_times()
    assert exchange_of("hyperliquid-perps").has_arrival_times()


def test_month_picture_is_on_the_published_asset(page, ui: dict) -> None:
    for exchange, natives in MATERIALISED.items():
        for native in natives:
            key = partition_key(native)
            path = asset_path(exchange, "published_flow_bars")
            open_page(page, ui, f"{path}?view=partitions&partition={quote(key)}", wait_for="^month_picture$")
            row = page.get_by_text("month_picture", exact=True).first.locator("xpath=ancestor::tr[1]")
            row.get_by_text("[Show Markdown]").click()
            picture = page.get_by_role("dialog").locator("img")
            picture.wait_for(state="visible")
            assert picture.get_attribute("src").startswith("data:image/png;base64,")
            width, height = picture.evaluate("img => [img.naturalWidth, img.naturalHeight]")
            assert width > 200 and height > 100  # decoded, not a broken-image icon
            assert f"{exchange} {native} {MONTH}" in picture.get_attribute("alt")
            screenshot(page, ui, f"month_picture_{slug(exchange)}")
            page.get_by_role("button", name="Close").click()


def test_column_descriptions_are_on_the_published_asset(page, ui: dict) -> None:
    from aperiodic_pipelines.defs.metadata import FLOW_COLUMN_DESCRIPTIONS

    open_page(page, ui, asset_path("binance-futures", "published_flow_bars"), wait_for="^Columns$")
    page.get_by_text("flow_toxicity_score", exact=True).first.wait_for(state="visible")
    # The names render before the description cells fill in (seen once on a fresh clone): read the table until it
    # holds every description or the deadline passes, then compare.
    deadline = time.monotonic() + 30
    while True:
        rows = page.evaluate(
            "() => Array.from(document.querySelectorAll('tr'), tr => Array.from(tr.cells, c => c.innerText.trim()))"
        )
        described = {cells[0]: cells[-1] for cells in rows if len(cells) >= 3 and cells[0] in FLOW_COLUMN_DESCRIPTIONS}
        if described == FLOW_COLUMN_DESCRIPTIONS or time.monotonic() > deadline:
            break
        page.wait_for_timeout(500)
    assert described == FLOW_COLUMN_DESCRIPTIONS
