"""Helpers for the API tests: published test months (computed by the real engine) and a live `serve` process."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import polars as pl

from aperiodic_pipelines.api.server import free_port
from aperiodic_pipelines.flow import compute_flow_bars
from aperiodic_pipelines.storage import ObjectStore
from aperiodic_pipelines.storage.index import publish_month_bars
from aperiodic_pipelines.synthetic import generate_tape
from tests.servers import running_server

REPO = Path(__file__).resolve().parents[1]
EXCHANGE, SYMBOL, NATIVE = "binance-futures", "perpetual-BTC-USDT:USDT", "BTCUSDT"
MONTHS = ("2024-01", "2024-02")
# Two intervals of the exchange variant and one of the true variant keep the suite fast.
VARIANTS = (("exchange", "1h"), ("exchange", "1d"), ("true", "1h"))

Bars = dict[tuple[str, str, str], pl.DataFrame]  # (timestamp, interval, month) -> bars


def compute_test_bars(trades_per_month: int = 20_000) -> Bars:
    """Two consecutive months of bars from seeded synthetic tapes, through the real flow engine."""
    january = generate_tape("2024-01", trades_per_month, seed=11)
    february = generate_tape("2024-02", trades_per_month, seed=12, first_trade_id=10_000_000)
    bars: Bars = {}
    for month, trades, previous in (("2024-01", january, None), ("2024-02", february, january)):
        for timestamp in ("exchange", "true"):
            intervals = [i for t, i in VARIANTS if t == timestamp]
            for interval, frame in compute_flow_bars(
                trades, previous, month=month, timestamp=timestamp, intervals=intervals
            ).items():
                bars[(timestamp, interval, month)] = frame
    return bars


def publish_test_bars(
    store: ObjectStore, bars: Bars, *, exchange: str = EXCHANGE, native: str = NATIVE, symbol: str = SYMBOL
) -> None:
    for month in MONTHS:
        publish_month_bars(
            store,
            exchange=exchange,
            symbol=symbol,
            native_symbol=native,
            month=month,
            bars={(t, i): frame for (t, i, m), frame in bars.items() if m == month},
        )


def cli(*args: str, env: dict[str, str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """`aperiodic-pipelines ARGS` in a subprocess running this worktree's code."""
    full_env = {**os.environ, **env, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.run(
        [sys.executable, "-m", "aperiodic_pipelines.cli", *args], env=full_env, cwd=cwd, capture_output=True,
        text=True, timeout=120,
    )


def create_key(name: str, env: dict[str, str]) -> str:
    done = cli("api-keys", "create", name, env=env)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]  # the last line of stdout is the key alone


@contextmanager
def serve(env: dict[str, str], *args: str, log_path: Path, healthy: bool = True) -> Iterator[str]:
    """`aperiodic-pipelines serve` on a free 127.0.0.1 port; yields the base URL once /healthz answers 200
    (with `healthy=False`: once it answers at all, e.g. 503 for a store that is not there)."""
    port = free_port()
    full_env = {**os.environ, **env, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}

    def answers() -> bool:
        try:
            status = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=30).status_code
        except httpx.TransportError:
            return False
        return status == 200 or not healthy

    with running_server(
        [sys.executable, "-m", "aperiodic_pipelines.cli", "serve", "--port", str(port), *args],
        ready=answers, log_path=log_path, name="serve", env=full_env, timeout_s=60, poll_s=0.1, stop_timeout_s=10,
    ):
        yield f"http://127.0.0.1:{port}/api/v1"


def expected_range(bars: Bars, timestamp: str, interval: str, start: str, end: str) -> pl.DataFrame:
    """What the client must return: the published months concatenated, trimmed to [start 00:00, end 23:59:59.999999]."""
    from datetime import date, datetime
    from datetime import time as dtime

    frames = [bars[(timestamp, interval, m)] for m in MONTHS]
    lo = datetime.combine(date.fromisoformat(start), dtime.min)
    hi = datetime.combine(date.fromisoformat(end), dtime.max)
    return pl.concat(frames).filter(pl.col("time").is_between(lo, hi)).sort("time")
