"""The demo's first hour: its summary's example path is the file whose rows it shows, its last hint runs as printed,
and the code server's log lines carry no colour codes when piped (the whole demo runs in tests/test_cli.py)."""

from __future__ import annotations

import os
import shlex
import signal
import sys
from pathlib import Path

import polars as pl
import pytest
import requests

from aperiodic_pipelines.defs.summaries import summarise as summarise_text
from aperiodic_pipelines.demo import DEMO_INSTRUMENTS, PLAIN_LOG_ENVIRONMENT, browse_command, summarise
from aperiodic_pipelines.domain.layout import flow_key
from aperiodic_pipelines.flow import compute_flow_bars
from aperiodic_pipelines.storage import LocalStore, write_parquet_deterministic
from aperiodic_pipelines.synthetic import generate_tape
from tests.postgres_fixtures import free_port
from tests.servers import running_server

REPO = Path(__file__).resolve().parents[1]
MONTHS = ("2025-08", "2025-09")


def test_the_example_path_is_the_file_whose_rows_follow(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    instrument = DEMO_INSTRUMENTS[0]
    for index, month in enumerate(MONTHS):
        bars = compute_flow_bars(generate_tape(month, 300, seed=index), None, month=month, intervals=["1s", "1h"])
        for interval, frame in bars.items():
            path = tmp_path / f"{interval}-{month}.parquet"
            write_parquet_deterministic(frame, path, metadata={})
            store.publish_file(path, flow_key("exchange", instrument.exchange, interval, instrument.native_symbol, month))
    lines = summarise(store, MONTHS)
    sample = flow_key("exchange", instrument.exchange, "1h", instrument.native_symbol, MONTHS[-1])
    (example,) = [i for i, line in enumerate(lines) if "e.g." in line]
    assert lines[example].strip() == f"e.g. {store.uri(sample)} (first 3 of 720 rows):"
    first_times = pl.read_parquet(store.path(sample))["time"].head(3).to_list()
    assert [line.strip().split(",")[0] for line in lines[example + 1: example + 4]] == [
        f"time={t}" for t in first_times
    ]


def _workspace_loaded(url: str) -> bool:
    query = "{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus } } } }"
    try:
        answer = requests.post(f"{url}/graphql", json={"query": query}, timeout=5).json()
    except (requests.RequestException, ValueError):
        return False
    entries = answer.get("data", {}).get("workspaceOrError", {}).get("locationEntries") or []
    return [(e["name"], e["loadStatus"]) for e in entries] == [("aperiodic_pipelines", "LOADED")]


@pytest.mark.slow
def test_the_last_hint_runs_as_printed_from_any_directory(tmp_path: Path) -> None:
    home, elsewhere = tmp_path / "dagster_home", tmp_path / "elsewhere"
    home.mkdir()
    elsewhere.mkdir()
    (home / "dagster.yaml").write_text((REPO / "dagster.yaml").read_text())
    printed = browse_command(str(home), str(tmp_path / "store"))
    words = shlex.split(printed)
    assignments = dict(word.split("=", 1) for word in words[:2])
    assert set(assignments) == {"DAGSTER_HOME", "APERIODIC_STORE"}
    assert all(Path(value).is_absolute() for value in assignments.values())
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("APERIODIC_")}
    env.update(assignments, PYTHONPATH=str(REPO))
    # As printed (plus a free port), from a directory with no workspace or project in it.
    with running_server(
        [*words[2:], "-p", str(port)], ready=lambda: _workspace_loaded(url), log_path=tmp_path / "dev.log",
        name="dg dev", cwd=elsewhere, env=env, timeout_s=240, poll_s=1, stop_signal=signal.SIGINT,
        stop_timeout_s=30, start_new_session=True,
    ):
        pass
    assert "must be run inside a Dagster workspace" not in (tmp_path / "dev.log").read_text()


@pytest.mark.slow
def test_a_piped_code_server_logs_without_colour_codes(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("APERIODIC_")}
    env.update(PLAIN_LOG_ENVIRONMENT, PYTHONPATH=str(REPO), DAGSTER_HOME=str(tmp_path))
    log = tmp_path / "code_server.log"

    def answers() -> bool:
        return "Started Dagster code server" in log.read_text(errors="replace")

    with running_server(
        [sys.executable, "-m", "dagster", "api", "grpc", "-m", "aperiodic_pipelines.defs.definitions",
         "-h", "127.0.0.1", "-p", str(port)],
        ready=answers, log_path=log, name="code server", env=env, timeout_s=180, poll_s=0.5,
    ):
        pass
    text = log.read_text(errors="replace")
    assert "Started Dagster code server" in text and "\x1b[" not in text


def test_long_lists_in_log_lines_are_summarised() -> None:
    days = ", ".join(f"2025-07-{d:02d}" for d in range(1, 32))
    files = ", ".join(f"BTC-USDT-SWAP-trades-2025-07-{d:02d}.zip" for d in range(1, 32))
    message = f"okx-perps BTC-USDT-SWAP 2025-07 is incomplete upstream: 31 day(s): {days} (not published: {files})."
    assert len(message) > 1500
    short = summarise_text(message)
    assert short == (
        "okx-perps BTC-USDT-SWAP 2025-07 is incomplete upstream: 31 day(s): 2025-07-01, 2025-07-02, … (28 more), "
        "2025-07-31 (not published: BTC-USDT-SWAP-trades-2025-07-01.zip, BTC-USDT-SWAP-trades-2025-07-02.zip, … "
        "(28 more), BTC-USDT-SWAP-trades-2025-07-31.zip)."
    )
    assert summarise_text("a, b, c, d") == "a, b, c, d"  # short lists stay whole
    assert summarise_text("x" * 500).endswith("…") and len(summarise_text("x" * 500)) == 300
    assert summarise_text("first line\n  second line") == "first line second line"
