"""The command line: parsing, month ranges, DAGSTER_HOME handling, and instruments against a real Dagster instance.

Every test reads Binance's universe from a local S3 listing (`mirror/listings.py`) of a mirror directory holding
BTCUSDT from 2019-12 and ETHUSDT from 2020-01: nothing leaves 127.0.0.1."""

from __future__ import annotations

import os
import shutil
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from dagster import DagsterInstance

from aperiodic_pipelines import cli
from aperiodic_pipelines.domain.months import current_month
from aperiodic_pipelines.mirror.listings import ListingServer
from aperiodic_pipelines.operator.backfill import find_repository
from aperiodic_pipelines.operator.instance import RunSetupError
from aperiodic_pipelines.storage import INTERVALS, LocalStore, flow_key, read_parquet_metadata
from tests.servers import running_server

REPO_ROOT = Path(__file__).resolve().parent.parent


BINANCE_LISTED = {"BTCUSDT": ("2019-12", "2020-01", "2024-01", "2024-02"), "ETHUSDT": ("2020-01", "2020-02")}


def write_binance_listing(root: Path, listed: dict[str, tuple[str, ...]]) -> None:
    """Empty monthly files (the listing reads names only) as data.binance.vision lays them out."""
    for symbol, months in listed.items():
        folder = root / "data/futures/um/monthly/aggTrades" / symbol
        folder.mkdir(parents=True, exist_ok=True)
        for month in months:
            (folder / f"{symbol}-aggTrades-{month}.zip").write_bytes(b"")
            (folder / f"{symbol}-aggTrades-{month}.zip.CHECKSUM").write_bytes(b"")


@pytest.fixture(autouse=True)
def binance_listing(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Iterator[ListingServer]:
    root = tmp_path_factory.mktemp("listing")
    write_binance_listing(root, BINANCE_LISTED)
    with ListingServer(root) as server:
        monkeypatch.setenv("APERIODIC_BINANCE_LISTING_URL", server.url)
        yield server


@pytest.fixture
def dagster_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "dagster_home"
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    return home


def test_parser_accepts_every_subcommand() -> None:
    parser = cli.build_parser()
    args = parser.parse_args(["instruments", "add", "--exchange", "okx-perps", "--symbol", "BTC-USDT-SWAP"])
    assert (args.handler, args.exchange, args.symbol) == (cli.cmd_instruments_add, "okx-perps", "BTC-USDT-SWAP")
    assert parser.parse_args(["instruments", "list"]).handler is cli.cmd_instruments_list

    args = parser.parse_args(["materialize", "--exchange", "binance-futures", "--symbol", "BTCUSDT", "--month", "2024-01"])
    assert (args.handler, args.month, args.to) == (cli.cmd_materialize, "2024-01", None)

    args = parser.parse_args(
        ["backfill", "--exchange", "hyperliquid-perps", "--symbol", "BTC", "--from", "2024-01", "--to", "2024-03"]
    )
    assert (args.from_month, args.to, args.url, args.location) == (
        "2024-01",
        "2024-03",
        "http://127.0.0.1:3000",
        "aperiodic_pipelines",
    )
    args = parser.parse_args(["demo", "--trades", "5000"])
    assert (args.handler, args.trades, args.month, args.store) == (cli.cmd_demo, 5000, None, None)


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["instruments"],
        ["instruments", "add", "--exchange", "okx-perps"],
        ["materialize", "--exchange", "okx-perps", "--symbol", "BTC-USDT-SWAP"],
        ["backfill", "--exchange", "okx-perps", "--symbol", "BTC-USDT-SWAP", "--from", "2024-01"],
        ["demo", "--trades", "many"],
    ],
)
def test_parser_rejects_incomplete_commands(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as excinfo:
        cli.main(argv)
    assert excinfo.value.code == 2
    assert "usage:" in capsys.readouterr().err


def test_inverted_month_range_exits_2_naming_both_ends(dagster_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["materialize", "--exchange", "okx-perps", "--symbol", "BTC-USDT-SWAP", "--month", "2024-03",
                     "--to", "2024-01"])
    assert code == 2
    assert "2024-03..2024-01" in capsys.readouterr().err
    assert not dagster_home.exists()


def test_bad_month_exits_2_naming_it(dagster_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["materialize", "--exchange", "binance-futures", "--symbol", "BTCUSDT", "--month", "2024-13"])
    assert code == 2
    assert "'2024-13'" in capsys.readouterr().err
    assert not dagster_home.exists()


def test_demo_without_its_extra_exits_2_naming_what_to_install(
    dagster_home: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Installed without the `demo` extra (moto for the S3 mirror): one line saying what to install, before any
    mirror, instance or store exists (it used to end in a ModuleNotFoundError traceback after generating tapes)."""
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "moto" else find_spec(name, *a))
    code = cli.main(["demo", "--trades", "1000"])
    err = capsys.readouterr().err
    assert code == 2
    assert "moto" in err and "pip install 'aperiodic-pipelines[demo]'" in err and "Traceback" not in err
    assert not dagster_home.exists()


def test_instruments_add_and_list(dagster_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["instruments", "list"]) == 0
    assert "no instruments registered" in capsys.readouterr().out

    assert cli.main(["instruments", "add", "--exchange", "binance-futures", "--symbol", "BTCUSDT"]) == 0
    out = capsys.readouterr().out
    assert "added: binance-futures BTCUSDT (perpetual-BTC-USDT:USDT) in binance_futures_instruments, from 2019-12" in out
    # The same instrument by its Atlas symbol is the same partition key (the native id).
    assert cli.main(["instruments", "add", "--exchange", "binance-futures", "--symbol", "perpetual-BTC-USDT:USDT"]) == 0
    assert "already registered: binance-futures BTCUSDT" in capsys.readouterr().out
    assert cli.main(["instruments", "add", "--exchange", "hyperliquid-perps", "--symbol", "BTC"]) == 0
    capsys.readouterr()

    instance = DagsterInstance.from_config(str(dagster_home))
    assert instance.get_dynamic_partitions("binance_futures_instruments") == ["BTCUSDT"]
    assert instance.get_dynamic_partitions("hyperliquid_perps_instruments") == ["BTC"]
    instance.dispose()

    assert cli.main(["instruments", "list"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines == [
        "binance-futures\tBTCUSDT\tperpetual-BTC-USDT:USDT\t2019-12",
        "hyperliquid-perps\tBTC\tperpetual-BTC-USDC:USDC\t2025-03",
    ]


@pytest.mark.parametrize(
    ("exchange", "symbol", "fragment"),
    [
        ("okx-perps", "FOO", "'FOO'"),
        ("binance-spot", "BTCUSDT", "'binance-spot'"),
        ("binance-futures", "perpetual-BTC-USD:BTC", "perpetual-BTC-USD:BTC"),
        # Well-formed, but not in the exchange's universe: refused with the reason, never registered.
        ("hyperliquid-perps", "BTCUSDT", "did you mean 'BTC'?"),
        ("hyperliquid-perps", "perpetual-BTCUSDT-USDC:USDC", "no coin 'BTCUSDT'"),
        ("binance-futures", "BTCXUSDT", "closest: BTCUSDT"),
        ("okx-perps", "BTCUSDT", "'BTCUSDT'"),
    ],
)
def test_instruments_add_rejects_unknown_symbols(
    exchange: str, symbol: str, fragment: str, dagster_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["instruments", "add", "--exchange", exchange, "--symbol", symbol]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and fragment in err
    assert not dagster_home.exists()  # nothing registered, no instance created


def test_default_dagster_home_is_created_with_the_project_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DAGSTER_HOME", "placeholder")  # so undo also removes the value the CLI sets
    monkeypatch.delenv("DAGSTER_HOME")
    (tmp_path / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    assert cli.main(["instruments", "add", "--exchange", "okx-perps", "--symbol", "BTC-USDT-SWAP"]) == 0
    home = tmp_path / ".dagster_home"
    assert (home / "dagster.yaml").read_text() == "telemetry:\n  enabled: false\n"
    err = capsys.readouterr().err
    assert f"DAGSTER_HOME is not set; using {home}" in err
    # A hint that runs as printed: `dg dev` needs the workspace file (here the source tree's).
    assert f"See these runs in the UI with: DAGSTER_HOME={home} dg dev -w {REPO_ROOT / 'workspace.yaml'}" in err
    instance = DagsterInstance.from_config(str(home))
    assert instance.get_dynamic_partitions("okx_perps_instruments") == ["BTC-USDT-SWAP"]
    instance.dispose()


def test_a_set_dagster_home_without_config_gets_the_project_config(tmp_path: Path) -> None:
    """An existing, empty DAGSTER_HOME is seeded like the default one, so Dagster neither warns on every command
    nor runs on its bare defaults; the CLI says what it wrote."""
    import subprocess

    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "DAGSTER_HOME": str(home)}
    listed = subprocess.run([sys.executable, "-m", "aperiodic_pipelines.cli", "instruments", "list"], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr
    assert (home / "dagster.yaml").read_text() == (REPO_ROOT / "dagster.yaml").read_text()
    output = listed.stdout + listed.stderr
    assert "No dagster instance configuration file" not in output
    assert f"DAGSTER_HOME {home} had no dagster.yaml; wrote {REPO_ROOT / 'dagster.yaml'}" in listed.stderr
    again = subprocess.run([sys.executable, "-m", "aperiodic_pipelines.cli", "instruments", "list"], cwd=tmp_path,
                           env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "had no dagster.yaml" not in again.stderr  # an existing config is kept


# --- materialize: one run per month, in order, stopping at the first failure ------------------------------------


TOY_DEFINITIONS = """
from dagster import AssetKey, Definitions, RetryPolicy, asset, define_asset_job

from aperiodic_pipelines.defs.partitions import EXCHANGES_BY_NAME, split_partition_key
from aperiodic_pipelines.domain.errors import NotPublishedError

OKX = EXCHANGES_BY_NAME["okx-perps"]


@asset(key=AssetKey(["okx_perps", "toy_bars"]), partitions_def=OKX.partitions, retry_policy=RetryPolicy(max_retries=1))
def toy_bars(context):
    native, month = split_partition_key(context.partition_key)
    if month == "2024-02":
        raise NotPublishedError(f"okx-perps {native} {month} is not published (yet)")
    context.add_output_metadata({"month": month, "rows": 744})


defs = Definitions(assets=[toy_bars], jobs=[
    define_asset_job("okx_perps_flow_bars_job", selection=[toy_bars], partitions_def=OKX.partitions)
])
"""


def code_servers_for(home: Path) -> list[str]:
    """Live `dagster api grpc` processes whose command line (the instance reference) names `home`, from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if " api grpc " in command and str(home) in command and state != "Z":
            found.append(f"{entry.name}: {command[:200]}")
    return found


@pytest.fixture
def toy_workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A one-asset stand-in for the real graph on the real okx partitions, loaded as a code location from the
    current directory's workspace.yaml (what the CLI loads); fails on 2024-02 with a clear error."""
    location = tmp_path / "toy"
    location.mkdir()
    (location / "toy_defs.py").write_text(TOY_DEFINITIONS)
    (location / "workspace.yaml").write_text(
        "load_from:\n  - python_file:\n      relative_path: toy_defs.py\n      location_name: aperiodic_pipelines\n"
    )
    monkeypatch.chdir(location)
    return location


@pytest.mark.usefixtures("toy_workspace")
def test_materialize_submits_runs_the_ui_knows_in_order_and_stops_at_a_failure(
    dagster_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The project's instance config: the queued coordinator, and no daemon running, so runs are launched directly
    # (the demo test covers Dagster's default coordinator, which launches on submit).
    dagster_home.mkdir(parents=True)
    shutil.copyfile(REPO_ROOT / "dagster.yaml", dagster_home / "dagster.yaml")
    code = cli.main(
        ["materialize", "--exchange", "okx-perps", "--symbol", "BTC-USDT-SWAP", "--month", "2024-01", "--to", "2024-03"]
    )
    out, err = capsys.readouterr()
    assert code == 1, err
    assert out.index("BTC-USDT-SWAP 2024-01") < out.index("BTC-USDT-SWAP 2024-02")
    assert "2024-03" not in out  # stopped at the failure
    assert "okx_perps/toy_bars: month=2024-01, rows=744" in out
    assert "step okx_perps__toy_bars failed:" in err
    # The failed run's line carries the step's own error, not only the retry policy's "Exceeded max_retries".
    (failed_line,) = [line for line in err.splitlines() if " FAILED: " in line]
    assert "BTC-USDT-SWAP 2024-02 FAILED: step okx_perps__toy_bars failed: " in failed_line
    assert "okx-perps BTC-USDT-SWAP 2024-02 is not published (yet)" in failed_line
    assert "(gave up: exceeded max_retries of 1)" in failed_line
    assert out.count("no dagster-daemon is dequeuing runs: launching directly") == 1  # said once, not per run
    assert "registered instrument okx-perps BTC-USDT-SWAP (perpetual-BTC-USDT:USDT)" in out
    # The code server the command started (its instance reference names this DAGSTER_HOME) is gone when it
    # returns: a server left behind outlives a temporary instance directory and never exits.
    assert code_servers_for(dagster_home) == []

    instance = DagsterInstance.from_config(str(dagster_home))
    try:
        launched = list(reversed(instance.get_runs()))  # newest first -> launch order
        assert [r.tags["dagster/partition"] for r in launched] == [
            f"BTC-USDT-SWAP|{m}-01" for m in ("2024-01", "2024-02")
        ]
        assert [r.status.value for r in launched] == ["SUCCESS", "FAILURE"]
        for run in launched:  # submitted through the code location: the UI lists them under the job
            assert run.job_name == "okx_perps_flow_bars_job"
            assert run.remote_job_origin is not None and run.remote_job_origin.location_name == "aperiodic_pipelines"
            assert run.tags["aperiodic/exchange"] == "okx-perps" and run.tags["aperiodic/launched_by"] == "cli"
            assert run.tags["dagster/partition/instrument"] == "BTC-USDT-SWAP"
        assert instance.get_dynamic_partitions("okx_perps_instruments") == ["BTC-USDT-SWAP"]
    finally:
        instance.dispose()


# --- backfill: GraphQL against a real webserver -------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def webserver(dagster_home: Path, tmp_path: Path) -> Iterator[str]:
    """`dagster-webserver` on 127.0.0.1 loading the project's workspace, with the project's instance config."""
    dagster_home.mkdir(parents=True)
    shutil.copyfile(REPO_ROOT / "dagster.yaml", dagster_home / "dagster.yaml")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"

    def code_location_loaded() -> bool:
        try:
            find_repository(url, "aperiodic_pipelines")
            return True
        except (RunSetupError, requests.RequestException):
            return False

    with running_server(
        [str(Path(sys.executable).parent / "dagster-webserver"), "-h", "127.0.0.1", "-p", str(port),
         "-w", str(REPO_ROOT / "workspace.yaml")],
        ready=code_location_loaded, log_path=tmp_path / "webserver.log", name="dagster-webserver", cwd=tmp_path,
        timeout_s=120, poll_s=0.5, stop_timeout_s=20,
    ):
        yield url


@pytest.mark.slow
def test_backfill_is_submitted_to_the_webserver(
    webserver: str, dagster_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli.main(
        ["backfill", "--exchange", "binance-futures", "--symbol", "BTCUSDT", "--from", "2023-11", "--to", "2024-02",
         "--url", webserver]
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "registered instrument binance-futures BTCUSDT (perpetual-BTC-USDT:USDT) on the webserver's instance" in out
    backfill_id = out.split("backfill ", 1)[1].split(" ", 1)[0]
    assert f"{webserver}/runs/b/{backfill_id}" in out

    instance = DagsterInstance.from_config(str(dagster_home))
    try:
        assert instance.get_dynamic_partitions("binance_futures_instruments") == ["BTCUSDT"]
        backfill = instance.get_backfill(backfill_id)
        assert backfill is not None
        assert backfill.partition_set_origin.partition_set_name == "binance_futures_flow_bars_job_partition_set"
        assert list(backfill.partition_names) == [
            f"BTCUSDT|{m}-01" for m in ("2023-11", "2023-12", "2024-01", "2024-02")
        ]
        assert backfill.tags["aperiodic/exchange"] == "binance-futures"
        assert backfill.tags["aperiodic/launched_by"] == "cli"
    finally:
        instance.dispose()


@pytest.mark.slow
def test_backfill_of_hyperliquid_is_an_asset_backfill_of_the_venue_months_and_the_coins_partitions(
    webserver: str, dagster_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli.main(
        ["backfill", "--exchange", "hyperliquid-perps", "--symbol", "BTC", "--from", "2025-08", "--to", "2025-10",
         "--url", webserver]
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    backfill_id = out.split("backfill ", 1)[1].split(" ", 1)[0]
    instance = DagsterInstance.from_config(str(dagster_home))
    try:
        backfill = instance.get_backfill(backfill_id)
        assert backfill is not None and backfill.is_asset_backfill
        months = [f"2025-{m}-01" for m in ("08", "09", "10")]
        target = backfill.asset_backfill_data.target_subset
        by_asset = {key.to_user_string(): sorted(target.get_partitions_subset(key).get_partition_keys())
                    for key in target.asset_keys}
        # The daemon runs each venue month before the coin's partitions of that month (they depend on it).
        assert by_asset.pop("hyperliquid_perps/venue_hours") == months
        assert set(by_asset) == {f"hyperliquid_perps/{a}" for a in (
            "raw_trades", "second_stats", "flow_bars_exchange", "flow_bars_true", "published_flow_bars")}
        assert all(keys == [f"BTC|{m}" for m in months] for keys in by_asset.values()), by_asset
        assert backfill.tags["aperiodic/exchange"] == "hyperliquid-perps"
        assert instance.get_dynamic_partitions("hyperliquid_perps_instruments") == ["BTC"]
    finally:
        instance.dispose()


def test_backfill_reports_an_unreachable_webserver(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{_free_port()}"
    code = cli.main(["backfill", "--exchange", "okx-perps", "--symbol", "BTC-USDT-SWAP", "--from", "2024-01",
                     "--to", "2024-01", "--url", url])
    assert code == 2
    assert f"cannot reach the Dagster webserver at {url}/graphql" in capsys.readouterr().err


# --- demo: the whole platform offline ------------------------------------------------------------------------------


@pytest.mark.slow
def test_demo_publishes_two_months_for_three_exchanges(
    dagster_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    for name in ("APERIODIC_STORE", "APERIODIC_BINANCE_URL", "APERIODIC_OKX_URL", "APERIODIC_HYPERLIQUID_URL",
                 "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    store_root = tmp_path / "store"
    code = cli.main(["demo", "--trades", "3000", "--store", str(store_root), "--log-level", "WARNING"])
    out, err = capsys.readouterr()
    assert code == 0, err[-3000:]

    store = LocalStore(store_root)
    published = store.list("flow/")
    for exchange, native in (("binance-futures", "BTCUSDT"), ("okx-perps", "BTC-USDT-SWAP"),
                             ("hyperliquid-perps", "BTC")):
        for month, minutes in (("2025-08", 31 * 1440), ("2025-09", 30 * 1440)):
            for interval in INTERVALS:
                assert flow_key("exchange", exchange, interval, native, month) in published
            key = flow_key("exchange", exchange, "1m", native, month)
            meta = read_parquet_metadata(store.read_bytes(key))
            assert (meta["aperiodic.exchange"], meta["aperiodic.month"]) == (exchange, month)
            assert meta["aperiodic.row_count"] == str(minutes)
        assert f"{exchange} {native}: " in out
    # Only Hyperliquid's archives carry arrival times, so only it has the `true` variant.
    assert {k.split("/")[2] for k in published if k.startswith("flow/true/")} == {"hyperliquid-perps"}
    assert f"published flow bars in LocalStore(root='{store_root}')" in out
    # The environment that pointed at the mirrors is restored afterwards.
    assert "APERIODIC_BINANCE_URL" not in os.environ and "AWS_ENDPOINT_URL_S3" not in os.environ

    instance = DagsterInstance.from_config(str(dagster_home))
    try:
        every_run = instance.get_runs()
        # Then the open month: one daily run per instrument (defs/daily.py), saying which days it published.
        daily_runs = [r for r in every_run if r.job_name.endswith("_daily_flow_bars_job")]
        assert sorted(r.tags["dagster/partition"] for r in daily_runs) == ["BTC", "BTC-USDT-SWAP", "BTCUSDT"]
        assert all(r.status.value == "SUCCESS" and r.remote_job_origin is not None for r in daily_runs)
        assert f"publishing the open month {current_month()} day by day" in out
        assert out.count(f" {current_month()}: published days ") == 3
        demo_runs = [r for r in every_run if r not in daily_runs]
        # One run per instrument and month, and Hyperliquid's venue month (every coin's hours, parsed once) before
        # its coin's run of that month.
        assert len(demo_runs) == 8 and all(r.status.value == "SUCCESS" for r in demo_runs)
        # Runs the UI knows: each under its exchange's job, with the code location's origin and the exchange tag.
        assert {(r.job_name, r.tags["aperiodic/exchange"]) for r in demo_runs} == {
            (f"{e.replace('-', '_')}_flow_bars_job", e) for e in ("binance-futures", "okx-perps", "hyperliquid-perps")
        } | {("hyperliquid_perps_venue_job", "hyperliquid-perps")}
        for month in ("2025-08", "2025-09"):
            venue, coin = (
                next(r for r in demo_runs if r.job_name == job and r.tags["dagster/partition"].endswith(f"{month}-01"))
                for job in ("hyperliquid_perps_venue_job", "hyperliquid_perps_flow_bars_job")
            )
            venue_end = instance.get_run_record_by_id(venue.run_id).end_time
            assert venue_end <= instance.get_run_record_by_id(coin.run_id).start_time
        assert all(r.remote_job_origin is not None for r in demo_runs)
        for name, native in (("binance_futures", "BTCUSDT"), ("okx_perps", "BTC-USDT-SWAP"),
                             ("hyperliquid_perps", "BTC")):
            assert instance.get_dynamic_partitions(f"{name}_instruments") == [native]
    finally:
        instance.dispose()
