"""What one small partition costs, step by step: old code against new, interleaved in one run.

    .venv/bin/python benchmarks/partition_cost_bench.py --base /tmp/perf-base        # 200 k trades a month
    .venv/bin/python benchmarks/partition_cost_bench.py --trades 2000000 --repeat 5 --base /tmp/perf-base

The phases are what the `second_stats`, `flow_bars_exchange` and `published_flow_bars` steps do for one
instrument-month (raw month m and m−1 already in a local store), without Dagster's own per-step overhead:

  second_stats  compute_second_stats(scan m, scan m−1) + write the per-second parquet
  bars          read the per-second parquet, bars_from_second_stats (8 dense tables, 36 fields)
  imports       the libraries and modules the phases use, pandera included (a run imports it once, wherever
                its first validation is; both trees are measured alike)
  checks        run_bar_checks (the three blocking checks of the flow_bars step)
  writes        the 8 staged parquet files (write_parquet_deterministic + bars_metadata) into the store
  publish       verify each staged file's sha256 and publish it (LocalStore)

Each code tree (`--base` = a checkout of the old code, and this checkout) runs in a fresh process per repeat,
alternating, so that both see the same machine load; wall and CPU seconds (all threads) are reported, median
over the repeats. The script also proves the two trees' files hold equal content and that each tree writes
byte-identical files on every repeat.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PHASES = ("imports", "second_stats", "bars", "checks", "writes", "publish")


def child(workdir: Path, month: str, out: Path) -> None:
    """Run the phases with the code on PYTHONPATH; print one JSON line of timings."""
    timings: dict[str, tuple[float, float]] = {}
    clock = [time.perf_counter(), time.process_time()]

    def lap(name: str) -> None:
        wall, cpu = time.perf_counter(), time.process_time()
        timings[name] = (wall - clock[0], cpu - clock[1])
        clock[:] = [wall, cpu]

    import pandera.polars  # noqa: F401  # a run imports it once, wherever its first validation is: count it here
    import polars as pl
    from dagster import AssetKey

    from aperiodic_pipelines.defs.checks import run_bar_checks
    from aperiodic_pipelines.flow import INTERVALS, SecondStats, bars_from_second_stats, compute_second_stats
    from aperiodic_pipelines.storage import (
        LocalStore,
        bars_metadata,
        sha256_file,
        write_parquet_deterministic,
    )

    lap("imports")
    store = LocalStore(out / "store")
    stats = compute_second_stats(
        pl.scan_parquet(workdir / "current.parquet"), pl.scan_parquet(workdir / "previous.parquet"), month=month
    )
    seconds = out / "seconds.parquet"
    write_parquet_deterministic(stats.frame, seconds, metadata={"aperiodic.month": month})
    lap("second_stats")
    frame = pl.read_parquet(seconds)
    bars = bars_from_second_stats(SecondStats(frame, month, "exchange", True), intervals=INTERVALS)
    lap("bars")
    results = run_bar_checks(AssetKey("flow_bars_exchange"), bars, month)
    failed = [r.check_name for r in results if not r.passed]
    if failed:
        raise SystemExit(f"checks failed: {failed}: {[r.metadata for r in results]}")
    lap("checks")
    staged = {}
    for interval, table in bars.items():
        path = out / f"{interval}.parquet"
        write_parquet_deterministic(
            table, path,
            metadata=bars_metadata(exchange="binance-futures", symbol="BINANCE_FUTURES:BTCUSDT", native_symbol="BTCUSDT",
                                   interval=interval, timestamp="exchange", month=month, row_count=table.height),
        )
        staged[interval] = store.publish_file(path, f"staging/{interval}/{month}.parquet")
    lap("writes")
    for interval, obj in staged.items():
        local = store.download(obj.key, out / f"pub-{interval}.parquet")
        if sha256_file(local)[1] != obj.sha256:
            raise SystemExit(f"{interval}: staged file changed")
        store.publish_file(local, f"flow/{interval}/{month}.parquet")
        local.unlink()
    lap("publish")
    print(json.dumps({name: list(value) for name, value in timings.items()}))


def ensure_inputs(workdir: Path, month: str, trades: int, seed: int) -> None:
    from aperiodic_pipelines.flow import shift_month
    from aperiodic_pipelines.synthetic import generate_tape_to_parquet

    stamp = workdir / "inputs.json"
    want = {"month": month, "trades": trades, "seed": seed}
    if stamp.exists() and json.loads(stamp.read_text()) == want:
        return
    previous = generate_tape_to_parquet(workdir / "previous.parquet", shift_month(month, -1), trades, seed=seed + 1)
    generate_tape_to_parquet(workdir / "current.parquet", month, trades, seed=seed, first_trade_id=previous + 1)
    stamp.write_text(json.dumps(want))


def run_tree(tree: Path, workdir: Path, month: str, out: Path) -> dict[str, list[float]]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    command = [sys.executable, str(Path(__file__).resolve()), "--child", str(out), "--workdir", str(workdir),
               "--month", month]
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tree)
    if done.returncode:
        raise SystemExit(f"{tree}: child failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def file_digests(out: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((out / "store" / "flow").rglob("*.parquet"))}


def same_content(left: Path, right: Path) -> list[str]:
    """Intervals whose published files differ in columns, dtypes, values or key-value metadata."""
    import polars as pl

    from aperiodic_pipelines.storage import read_parquet_metadata

    differ = []
    for path in sorted((left / "store" / "flow").rglob("*.parquet")):
        other = right / path.relative_to(left)
        if not pl.read_parquet(path).equals(pl.read_parquet(other), null_equal=True):
            differ.append(f"{path.parent.name}: values")
        ours, theirs = read_parquet_metadata(path), read_parquet_metadata(other)
        if ours != theirs:
            differ.append(f"{path.parent.name}: metadata {set(ours.items()) ^ set(theirs.items())}")
    return differ


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trades", type=int, default=200_000, help="trades per raw month (default 200,000)")
    parser.add_argument("--month", default="2024-03")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--base", type=Path, help="a checkout of the old code to compare with (git worktree add)")
    parser.add_argument("--workdir", type=Path, default=ROOT / "bench-data" / "partition")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.workdir, args.month, args.child)
        return 0

    workdir = args.workdir / f"{args.month}-{args.trades}-seed{args.seed}"
    workdir.mkdir(parents=True, exist_ok=True)
    ensure_inputs(workdir, args.month, args.trades, args.seed)
    trees = {"new": ROOT} if args.base is None else {"old": args.base.resolve(), "new": ROOT}
    runs: dict[str, list[dict[str, list[float]]]] = {name: [] for name in trees}
    digests: dict[str, set[str]] = {name: set() for name in trees}
    with tempfile.TemporaryDirectory(prefix="partition-bench-") as tmp:
        for repeat in range(args.repeat):
            for name, tree in trees.items():
                out = Path(tmp) / f"{name}-{repeat}"
                runs[name].append(run_tree(tree, workdir, args.month, out))
                digests[name].add(json.dumps(file_digests(out), sort_keys=True))
        differences = same_content(Path(tmp) / "old-0", Path(tmp) / "new-0") if "old" in trees else []

    print(f"one partition: {args.trades:,} trades in raw month {args.month} (and as many in the month before); "
          f"median of {args.repeat} runs per tree, interleaved")
    header = f"{'phase':<14}" + "".join(f"{name + ' wall s':>12}{name + ' cpu s':>12}" for name in trees)
    print(header)
    totals = {name: [0.0, 0.0] for name in trees}
    for phase in PHASES:
        line = f"{phase:<14}"
        for name in trees:
            wall = statistics.median(run[phase][0] for run in runs[name])
            cpu = statistics.median(run[phase][1] for run in runs[name])
            if phase != "imports":
                totals[name][0] += wall
                totals[name][1] += cpu
            line += f"{wall:>12.3f}{cpu:>12.3f}"
        print(line)
    print(f"{'steps total':<14}" + "".join(f"{w:>12.3f}{c:>12.3f}" for w, c in totals.values()))
    for name in trees:
        print(f"{name}: files byte-identical on every repeat: {len(digests[name]) == 1}")
    if "old" in trees:
        print(f"old vs new: same content (values, dtypes, metadata): {not differences}" +
              (f" {differences}" if differences else ""))
    return 0 if all(len(d) == 1 for d in digests.values()) and not differences else 1


if __name__ == "__main__":
    sys.exit(main())
