"""The operator's package: requests refused before any run exists, the registry (first months, removal), the
universe listing, waits that end, and the package's shape (who may touch Dagster's private API).

Real parts only: a Dagster instance in a temporary DAGSTER_HOME, the S3 listing served from a mirror directory on
127.0.0.1, a code location loaded from a one-asset workspace, and a real run process killed with SIGKILL.
"""

from __future__ import annotations

import ast
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from dagster import DagsterInstance

from aperiodic_pipelines import cli
from aperiodic_pipelines.domain.months import current_month, next_month
from aperiodic_pipelines.domain.settings import SourceSettings
from aperiodic_pipelines.mirror.listings import ListingServer
from aperiodic_pipelines.operator.instance import packaged_text
from aperiodic_pipelines.operator.registry import Instrument, recorded_first_month, resolve_instrument
from aperiodic_pipelines.sources.universe import ListingUnavailableError, find_listing, list_bucket
from tests.test_cli import binance_listing, dagster_home, write_binance_listing  # noqa: F401 - fixtures

REPO = Path(__file__).resolve().parents[1]
OPERATOR = REPO / "aperiodic_pipelines" / "operator"


# --- months refused before any run exists ------------------------------------------------------------------------


def _refusals() -> list[tuple[list[str], str]]:
    open_month = current_month()
    btc = ["--exchange", "binance-futures", "--symbol", "BTCUSDT"]
    return [
        ([*btc, "--month", "2019-01"], "2019-01 is before binance-futures's archive, which starts 2019-09"),
        (["--exchange", "binance-futures", "--symbol", "ETHUSDT", "--month", "2020-02", "--to", "2020-03"],
         "2020-03 is after binance-futures ETHUSDT's last month in the archive, 2020-02 (no monthly file since: "
         "delisted)"),
        ([*btc, "--month", "2019-10", "--to", "2020-02"],
         "2019-10 is before binance-futures BTCUSDT's first month in the archive, 2019-12"),
        (["--exchange", "okx-perps", "--symbol", "BTC-USDT-SWAP", "--month", "2019-01"],
         "2019-01 is before okx-perps's archive, which starts 2019-12"),
        ([*btc, "--month", "2024-01", "--to", next_month(next_month(open_month))],
         f"{next_month(next_month(open_month))} is in the future"),
        ([*btc, "--month", open_month],  # backfills only: `materialize` publishes its complete days
         f"{open_month} is the open month: its monthly file can be published from {next_month(open_month)}-01 UTC"),
    ]


def _refusals_by_command() -> list[tuple[str, list[str], str]]:
    # `materialize` of the open month publishes its complete days (tests/test_daily_cli.py): refused by backfill only.
    return [
        (command, argv, message)
        for command in ("materialize", "backfill")
        for argv, message in _refusals()
        if not (command == "materialize" and "is the open month" in message)
    ]


@pytest.mark.parametrize(("command", "argv", "message"), _refusals_by_command())
def test_a_month_no_run_can_publish_is_refused_in_one_line_before_any_run(
    command: str, argv: list[str], message: str, dagster_home: Path, capsys: pytest.CaptureFixture[str]  # noqa: F811
) -> None:
    if command == "backfill":  # an unreachable webserver: the refusal comes before any request to it
        argv = [a if a != "--month" else "--from" for a in argv]
        argv = [*argv, "--url", "http://127.0.0.1:9"] + ([] if "--to" in argv else ["--to", argv[argv.index("--from") + 1]])
    started = time.perf_counter()
    code = cli.main([command, *argv])
    elapsed = time.perf_counter() - started
    out, err = capsys.readouterr()
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err, err
    assert out == ""
    assert elapsed < 1.0, elapsed
    assert not dagster_home.exists()  # no instance opened, so no run and no registration


def test_the_refusal_from_a_fresh_interpreter_is_quick(tmp_path: Path, binance_listing: ListingServer) -> None:  # noqa: F811
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path / "home"), "PYTHONPATH": str(REPO)}
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "aperiodic_pipelines.cli", "materialize", "--exchange", "binance-futures",
         "--symbol", "BTCUSDT", "--month", "2019-10"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )
    elapsed = time.perf_counter() - started
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        "error: 2019-10 is before binance-futures BTCUSDT's first month in the archive, 2019-12; ask from 2019-12"
    ]
    assert not (tmp_path / "home").exists()
    # Interpreter start included; the machine is shared, so the bound has headroom (measured ~0.4 s when quiet).
    assert elapsed < 3.0, elapsed


# --- the registry ------------------------------------------------------------------------------------------------


def test_add_records_the_first_month_and_remove_unregisters_without_deleting(
    dagster_home: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path  # noqa: F811
) -> None:
    assert cli.main(["instruments", "add", "--exchange", "binance-futures", "--symbol", "ETHUSDT"]) == 0
    assert "from 2020-01" in capsys.readouterr().out
    instance = DagsterInstance.from_config(str(dagster_home))
    eth = resolve_instrument("binance-futures", "ETHUSDT")
    assert recorded_first_month(instance, eth) == "2020-01"
    instance.dispose()

    assert cli.main(["instruments", "remove", "--exchange", "binance-futures", "--symbol", "ETHUSDT"]) == 0
    out = capsys.readouterr().out
    assert "removed: binance-futures ETHUSDT from binance_futures_instruments" in out
    assert "Nothing is deleted" in out
    instance = DagsterInstance.from_config(str(dagster_home))
    assert instance.get_dynamic_partitions("binance_futures_instruments") == []
    assert recorded_first_month(instance, eth) is None
    instance.dispose()

    assert cli.main(["instruments", "remove", "--exchange", "binance-futures", "--symbol", "ETHUSDT"]) == 2
    assert "binance-futures ETHUSDT is not registered" in capsys.readouterr().err
    assert cli.main(["instruments", "list"]) == 0
    assert "no instruments registered" in capsys.readouterr().out


def test_a_registration_made_before_the_universe_check_can_be_removed(
    dagster_home: Path, capsys: pytest.CaptureFixture[str]  # noqa: F811
) -> None:
    # What an older CLI let through: Hyperliquid's BTCUSDT. The add is refused now; the remove still works.
    dagster_home.mkdir(parents=True)
    instance = DagsterInstance.from_config(str(dagster_home))
    instance.add_dynamic_partitions("hyperliquid_perps_instruments", ["BTCUSDT"])
    instance.dispose()
    assert cli.main(["instruments", "list"]) == 0
    assert capsys.readouterr().out.splitlines() == ["hyperliquid-perps\tBTCUSDT\tperpetual-BTCUSDT-USDC:USDC\t-"]
    assert cli.main(["instruments", "remove", "--exchange", "hyperliquid-perps", "--symbol", "BTCUSDT"]) == 0
    instance = DagsterInstance.from_config(str(dagster_home))
    assert instance.get_dynamic_partitions("hyperliquid_perps_instruments") == []
    instance.dispose()


# --- the universe listing ----------------------------------------------------------------------------------------


def test_listing_pages_through_a_truncated_bucket_listing(tmp_path: Path) -> None:
    symbols = {f"C{i:02d}USDT": ("2021-0" + str(1 + i % 9),) for i in range(7)}
    write_binance_listing(tmp_path, {**symbols, "BTCUSDT": ("2020-03", "2020-04", "2020-05")})
    with ListingServer(tmp_path, max_keys=2) as server:
        _, prefixes = list_bucket(server.url, "data/futures/um/monthly/aggTrades/")
        assert [p.split("/")[-2] for p in prefixes] == sorted([*symbols, "BTCUSDT"])
        settings = SourceSettings(binance_listing_url=server.url)
        listing = find_listing("binance-futures", "BTCUSDT", settings)
        assert listing.first_month == "2020-03" and "3 monthly file(s)" in listing.basis
        # Two pages for BTCUSDT's six files (zip + CHECKSUM), five for the 8 symbols' directories.
        assert server.requests.count("data/futures/um/monthly/aggTrades/BTCUSDT/") == 3


def test_an_unreachable_listing_names_the_url_and_the_setting(dagster_home: Path, capsys, monkeypatch) -> None:  # noqa: F811, ANN001
    monkeypatch.setenv("APERIODIC_BINANCE_LISTING_URL", "http://127.0.0.1:9/data.binance.vision")
    with pytest.raises(ListingUnavailableError, match="APERIODIC_BINANCE_LISTING_URL"):
        find_listing("binance-futures", "BTCUSDT", SourceSettings(binance_listing_url="http://127.0.0.1:9/x"))
    assert cli.main(["instruments", "add", "--exchange", "binance-futures", "--symbol", "BTCUSDT"]) == 2
    err = capsys.readouterr().err
    assert "cannot read the archive listing at http://127.0.0.1:9/data.binance.vision" in err
    assert not dagster_home.exists()


def test_the_dataset_setting_chooses_the_listing_folder(tmp_path: Path) -> None:
    folder = tmp_path / "data/futures/um/monthly/trades/BTCUSDT"
    folder.mkdir(parents=True)
    (folder / "BTCUSDT-trades-2020-07.zip").write_bytes(b"")
    with ListingServer(tmp_path) as server:
        settings = SourceSettings(binance_listing_url=server.url, binance_dataset="trades")
        assert find_listing("binance-futures", "BTCUSDT", settings).first_month == "2020-07"


# --- waits that end ----------------------------------------------------------------------------------------------


SLEEPY_DEFINITIONS = """
import time

from dagster import AssetKey, Definitions, asset, define_asset_job, in_process_executor

from aperiodic_pipelines.defs.partitions import EXCHANGES_BY_NAME

OKX = EXCHANGES_BY_NAME["okx-perps"]


@asset(key=AssetKey(["okx_perps", "sleepy_bars"]), partitions_def=OKX.partitions)
def sleepy_bars(context):
    time.sleep(120)


defs = Definitions(assets=[sleepy_bars], jobs=[
    define_asset_job("okx_perps_flow_bars_job", selection=[sleepy_bars], partitions_def=OKX.partitions,
                     executor_def=in_process_executor)  # as the project's jobs: the run's process runs the step
])
"""


@pytest.fixture
def sleepy_workspace(tmp_path: Path) -> Path:
    location = tmp_path / "sleepy"
    location.mkdir()
    (location / "sleepy_defs.py").write_text(SLEEPY_DEFINITIONS)
    workspace = location / "workspace.yaml"
    workspace.write_text(
        "load_from:\n  - python_file:\n      relative_path: sleepy_defs.py\n      location_name: aperiodic_pipelines\n"
    )
    return workspace


def _run_pid(instance: DagsterInstance, run_id: str, timeout: float = 120) -> int:
    """The pid of the run's process, once its step has started."""
    from dagster import DagsterEventType

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        records = instance.get_records_for_run(run_id, of_type={DagsterEventType.STEP_START}).records
        if records:
            (start,) = instance.get_records_for_run(run_id, of_type={DagsterEventType.RUN_START}).records
            return start.event_log_entry.dagster_event.pid
        time.sleep(0.2)
    raise AssertionError(f"run {run_id} did not start a step within {timeout} s")


@pytest.mark.slow
def test_wait_ends_at_its_deadline_and_when_the_run_worker_dies(
    sleepy_workspace: Path, dagster_home: Path  # noqa: F811
) -> None:
    from aperiodic_pipelines.operator import submission

    dagster_home.mkdir(parents=True)
    (dagster_home / "dagster.yaml").write_text((REPO / "dagster.yaml").read_text())  # queued coordinator, no daemon
    instance = DagsterInstance.from_config(str(dagster_home))
    instrument = Instrument("okx-perps", "perpetual-BTC-USDT:USDT", "BTC-USDT-SWAP")
    instance.add_dynamic_partitions(instrument.instruments_name, [instrument.native])
    said: list[str] = []
    try:
        with submission.code_location(instance, sleepy_workspace) as context:
            submitter = submission.Submitter(context, say=said.append)
            run_id = submitter.partition_run(instrument, "2024-01")
            assert run_id in submitter.launched_directly and len(said) == 1
            pid = _run_pid(instance, run_id)

            # A live worker passes the health checks (every HEALTH_CHECK_SECONDS); the wait ends at its deadline.
            deadline = submission.HEALTH_CHECK_SECONDS + 2
            started = time.monotonic()
            end = submission.wait_for_runs(instance, [run_id], deadline_seconds=deadline,
                                           launched_directly=submitter.launched_directly)[run_id]
            assert deadline <= time.monotonic() - started < deadline + 5
            assert not end.success and f"still STARTED after {deadline:.0f} s, the wait's deadline" in end.gave_up

            # kill -9 of the run's process and of the code server that launched it (its parent, which otherwise
            # notices and fails the run): what a lost machine or an OOM kill of the process tree leaves behind.
            code_server = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
            os.kill(code_server, signal.SIGKILL)
            os.kill(pid, signal.SIGKILL)
            started = time.monotonic()
            end = submission.wait_for_runs(instance, [run_id], deadline_seconds=60,
                                           launched_directly=submitter.launched_directly)[run_id]
            waited = time.monotonic() - started
            assert end.run.status.value == "STARTED"  # nothing is left to fail it; the wait still ends
            # Said by the launcher's health check (dagster.yaml's HealthCheckedDefaultRunLauncher) or, under a
            # launcher without one, by the wait's own look at the pid: either way the worker and its pid are named.
            assert "worker" in end.gave_up and str(pid) in end.gave_up, end.gave_up
            assert waited < submission.HEALTH_CHECK_SECONDS + 5, waited
            assert submission.outcome_lines(instance, end) == [f"run {run_id}: {end.gave_up}"]
    finally:
        instance.dispose()


# --- short, useful lines -----------------------------------------------------------------------------------------


def test_a_long_list_is_summarised_and_a_given_up_retry_shows_its_cause() -> None:
    from dagster._utils.error import SerializableErrorInfo

    from aperiodic_pipelines.operator.outcomes import shorten, step_error

    files = ", ".join(f"data/futures/um/daily/aggTrades/BTCUSDT/BTCUSDT-aggTrades-2024-01-{d:02d}.zip" for d in range(1, 32))
    line = shorten(f"missing days: {files}")
    assert len(line) <= 400 and line.endswith(" more)") and "BTCUSDT-aggTrades-2024-01-01.zip" in line
    assert shorten("short\nand plain") == "short and plain"

    cause = SerializableErrorInfo("NotPublishedError: okx-perps BTC-USDT-SWAP 2019-01 is not published", [], "X", None)
    gave_up = SerializableErrorInfo("Exceeded max_retries of 3\n", [], "RetryRequestedFromPolicy", cause)
    assert step_error(gave_up) == (
        "NotPublishedError: okx-perps BTC-USDT-SWAP 2019-01 is not published (gave up: exceeded max_retries of 3)"
    )
    assert step_error(cause) == "NotPublishedError: okx-perps BTC-USDT-SWAP 2019-01 is not published"


# --- the package's shape -----------------------------------------------------------------------------------------


def _private_dagster_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(("dagster._", "dagster_")):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("dagster._")}
    return found


def test_only_submission_and_the_run_launchers_use_dagsters_private_api() -> None:
    users = {
        path.name
        for path in [*OPERATOR.glob("*.py"), REPO / "aperiodic_pipelines" / "cli.py"]
        if _private_dagster_imports(path)
    }
    # Run launchers (and the Celery worker built on one) are Dagster's extension point: private types by nature.
    # So is an instance storage: `pg_storage` pools the PostgreSQL storages' private engines.
    assert users == {"submission.py", "launchers.py", "celery_launcher.py", "worker.py", "pg_storage.py"}


def test_the_cli_loads_dagster_only_when_a_command_needs_it() -> None:
    probe = "import sys, aperiodic_pipelines.cli; print(sorted(m for m in sys.modules if m.split('.')[0] == 'dagster'))"
    done = subprocess.run([sys.executable, "-c", probe], env={**os.environ, "PYTHONPATH": str(REPO)},
                          capture_output=True, text=True, check=True, timeout=60)
    assert done.stdout.strip() == "[]"


def test_the_installed_instance_settings_are_the_projects() -> None:
    # A fresh DAGSTER_HOME outside the source tree gets the copy installed with the package.
    assert packaged_text("dagster.yaml") == (REPO / "dagster.yaml").read_text()
    for name in ("dagster.yaml", "dagster.postgres.yaml"):
        assert "  module: aperiodic_pipelines.operator.coordinator\n" in (REPO / name).read_text()
    from aperiodic_pipelines.operator.coordinator import (
        ExchangeTaggingRunCoordinator,  # loadable by that path
    )

    assert ExchangeTaggingRunCoordinator.__module__ == "aperiodic_pipelines.operator.coordinator"
