"""A real writer of daily files for tests/test_daily_publication.py (the approach of tests/publication_writer.py).

    python tests/daily_writer.py STORE GENERATION DAY [DAY ...] [--pause STEP] [--lease S]

Publishes each DAY of okx-perps BTC-USDT-SWAP (both variants × 8 intervals and a carry per variant) through
`storage.daily.publish_day`, every file and carry marked with `GENERATION` (bars: a `generation` column; carries: a
last price derived from it). Prints `STEP <name>` at each step; with `--pause STEP` prints `PAUSED <name>` there and
waits for a line on stdin, so the test can SIGKILL it at that point.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, date, datetime, timedelta

import numpy as np
import polars as pl

from aperiodic_pipelines.domain.intervals import INTERVALS
from aperiodic_pipelines.flow.daily import FlowCarry, SpanState
from aperiodic_pipelines.flow.grid import TOXICITY_WINDOW
from aperiodic_pipelines.storage import store_from_uri
from aperiodic_pipelines.storage.daily import publish_day

EXCHANGE, SYMBOL, NATIVE = "okx-perps", "perpetual-BTC-USDT:USDT", "BTC-USDT-SWAP"
TIMESTAMPS = ("exchange", "true")
RETAIN_SECONDS = 600.0


def price_of(generation: str, day: str) -> float:
    """The carry's last price says which generation and day it came from."""
    return 1000.0 * (1 + sum(map(ord, generation)) % 97) + int(day[8:])


def generation_of_price(price: float, candidates: tuple[str, ...], day: str) -> str:
    (found,) = [g for g in candidates if price_of(g, day) == price]
    return found


def carry(generation: str, timestamp: str, day: str, *, seed: int = 0) -> FlowCarry:
    """The carry a day hands on (for the day after `day`), with seeded window values including awkward floats."""
    rng = np.random.default_rng(seed + sum(map(ord, generation + timestamp + day)))
    awkward = np.array([-0.0, 5e-324, 1.7976931348623157e308, -2.2250738585072014e-308, 0.1 + 0.2])

    def windows(length: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        out = {}
        for n, interval in enumerate(INTERVALS):
            size = min(TOXICITY_WINDOW, max(0, length - n))
            flows = rng.normal(0, 1e6, size)
            flows[: min(size, awkward.size)] = awkward[: min(size, awkward.size)]
            out[interval] = (flows, np.abs(rng.normal(0, 1e-3, size)))
        return out

    following = (date.fromisoformat(day) + timedelta(days=1)).isoformat()
    return FlowCarry(following, timestamp, SpanState(price_of(generation, day), windows(TOXICITY_WINDOW)),
                     SpanState(None, windows(TOXICITY_WINDOW - 3)))


def day_bars(generation: str, day: str) -> dict[tuple[str, str], pl.DataFrame]:
    start = datetime.fromisoformat(day).replace(tzinfo=UTC)
    out = {}
    for timestamp in TIMESTAMPS:
        for interval in INTERVALS:
            rows = 4 + INTERVALS.index(interval)
            out[(timestamp, interval)] = pl.DataFrame({
                "time": [start + timedelta(hours=h) for h in range(rows)],
                "generation": [generation] * rows, "variant": [f"{timestamp}/{interval}/{day}"] * rows,
            })
    return out


def publish(  # noqa: ANN201
    store_uri: str, generation: str, day: str, on_step=None, retain_seconds: float = RETAIN_SECONDS,  # noqa: ANN001
    lease_seconds: float | None = None,
):
    return publish_day(
        store_from_uri(store_uri), exchange=EXCHANGE, symbol=SYMBOL, native_symbol=NATIVE, day=day,
        bars=day_bars(generation, day), carries={t: carry(generation, t, day) for t in TIMESTAMPS},
        sources={t: [{"location": f"mirror://{day}/{t}", "sha256": "0" * 64, "size": 1}] for t in TIMESTAMPS},
        retain_seconds=retain_seconds, lease_seconds=lease_seconds, on_step=on_step,
    )


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("store")
    parser.add_argument("generation")
    parser.add_argument("days", nargs="+")
    parser.add_argument("--pause", default=None)
    parser.add_argument("--lease", type=float, default=None)
    args = parser.parse_args()

    def on_step(name: str) -> None:
        print(f"STEP {name}", flush=True)
        if name == args.pause:
            print(f"PAUSED {name}", flush=True)
            sys.stdin.readline()

    for day in args.days:
        publish(args.store, args.generation, day, on_step, lease_seconds=args.lease)
        print(f"PUBLISHED {day}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
