"""A real writer process for the whole-publication tests (tests/test_publication.py).

    python tests/publication_writer.py STORE GENERATION [--pause STEP] [--staged] [--rounds N] [--lease S]

Publishes one instrument-month (okx-perps BTC-USDT-SWAP 2024-01, both timestamp variants × 8 intervals) whose
files all carry `GENERATION` (their bars and their footer's code version), through the same code as the Dagster
asset (`--staged`: stage each variant, then `storage.staging.publish_month`) or `publish_month_bars`. It prints
every step of the publication as `STEP <name>`; with `--pause STEP` it prints `PAUSED <name>` at that step and
waits for a line on stdin, so the test can SIGKILL it there (or let it go on). `STORE` is a directory or
`s3://bucket/prefix` (the S3 endpoint comes from the environment, as in production).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl

from aperiodic_pipelines.domain.intervals import INTERVALS
from aperiodic_pipelines.storage import bars_metadata, store_from_uri, write_parquet_deterministic
from aperiodic_pipelines.storage.index import publish_month_bars
from aperiodic_pipelines.storage.staging import StagedFile, publish_month, stage_variant

EXCHANGE, SYMBOL, NATIVE, MONTH = "okx-perps", "perpetual-BTC-USDT:USDT", "BTC-USDT-SWAP", "2024-01"
TIMESTAMPS = ("exchange", "true")
RETAIN_SECONDS = 600.0  # longer than any test: nothing a reader was shown is deleted while it reads


def frame(generation: str, timestamp: str, interval: str) -> pl.DataFrame:
    """A small frame that says which generation, variant and interval it is in every row."""
    rows = 24 + INTERVALS.index(interval)
    start = datetime(2024, 1, 1, tzinfo=UTC)
    return pl.DataFrame(
        {
            "time": [start + timedelta(hours=h) for h in range(rows)],
            "generation": [generation] * rows,
            "variant": [f"{timestamp}/{interval}"] * rows,
            "value": [float(sum(map(ord, generation)) + h) for h in range(rows)],
        }
    )


def bars(generation: str) -> dict[tuple[str, str], pl.DataFrame]:
    return {(t, i): frame(generation, t, i) for t in TIMESTAMPS for i in INTERVALS}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("store")
    parser.add_argument("generation")
    parser.add_argument("--pause", default=None)
    parser.add_argument("--staged", action="store_true")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--lease", type=float, default=None)
    args = parser.parse_args()
    store = store_from_uri(args.store)

    def on_step(name: str) -> None:
        print(f"STEP {name}", flush=True)
        if name == args.pause:
            print(f"PAUSED {name}", flush=True)
            sys.stdin.readline()

    for round_number in range(args.rounds):
        generation = args.generation if args.rounds == 1 else f"{args.generation}{round_number}"
        if args.staged:
            with tempfile.TemporaryDirectory() as tmp:
                for timestamp in TIMESTAMPS:
                    files = []
                    for interval in INTERVALS:
                        data = frame(generation, timestamp, interval)
                        path = Path(tmp) / f"{timestamp}-{interval}.parquet"
                        write_parquet_deterministic(data, path, metadata=bars_metadata(
                            exchange=EXCHANGE, symbol=SYMBOL, native_symbol=NATIVE, interval=interval,
                            timestamp=timestamp, month=MONTH, row_count=data.height, code_version=generation,
                        ))
                        files.append(StagedFile(interval, path, data.height))
                    stage_variant(store, exchange=EXCHANGE, symbol=SYMBOL, native_symbol=NATIVE, month=MONTH,
                                  timestamp=timestamp, files=files, checks_passed=True)
            publish_month(store, exchange=EXCHANGE, symbol=SYMBOL, native_symbol=NATIVE, month=MONTH,
                          timestamps=TIMESTAMPS, retain_seconds=RETAIN_SECONDS, lease_seconds=args.lease,
                          on_step=on_step)
        else:
            publish_month_bars(store, exchange=EXCHANGE, symbol=SYMBOL, native_symbol=NATIVE, month=MONTH,
                               bars=bars(generation), retain_seconds=RETAIN_SECONDS, lease_seconds=args.lease,
                               on_step=on_step)
        print(f"PUBLISHED {generation}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
