"""Flow-bar benchmark: one synthetic month, four ways to read it, each in a fresh process.

    .venv/bin/python benchmarks/flow_bench.py --trades 50000000      # or: make bench  (TRADES=... to change)

Cases (each runs in its own subprocess, so the peak RSS reported is that case's alone):
  a  scan floor   read the parquet once and sum a few columns (the I/O + decode floor)
  b  polars 1m    a plain polars streaming pass: taker buy/sell volume per minute, nothing else
  c  pandas 1m    a straightforward pandas groupby computing the 36 fields at 1m only
  d  ours         second stats of pl.scan_parquet(path), then all 8 intervals, 36 fields each, the 1s table a
                 row group at a time as the flow-bars step derives it (the old code: compute_flow_bars, whole)
With --warm, each case also runs warm: once untimed, then timed, in the same process, as a long-lived worker
(`aperiodic-pipelines worker`) computes its second month: libraries loaded, numba's compiled loop in memory.
See docs/benchmarks.md for how to read the table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

CASES = {
    "a": "scan floor (read + sum columns)",
    "b": "polars streaming, 1m buy/sell volume",
    "c": "pandas groupby, 36 fields at 1m",
    "d": "ours: 8 intervals, 1s in row groups",
    "o": "ours, the --base checkout (old code)",
}
US_PER_MINUTE = 60_000_000
ROW_GROUP_ROWS = 1 << 18  # storage.parquet.ROW_GROUP_SIZE: the 1s slices the flow-bars step writes
# Wall seconds of each phase of case d, filled by `case_ours` and reported with its run: where the time goes.
PHASES: dict[str, float] = {}


def peak_rss_mb() -> float:
    """This process's peak resident set size (VmHWM), in MB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    import resource  # not Linux: ru_maxrss is KiB on Linux, bytes on macOS

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --- the cases, run inside the child process -------------------------------------------------------------


def case_scan(path: str, month: str) -> int:
    import polars as pl

    out = pl.scan_parquet(path).select(
        pl.len(), pl.col("qty").sum(), pl.col("price").sum(), pl.col("ts_exchange").max(),
        pl.col("is_buy").sum(),
    ).collect()
    return int(out.item(0, 0))


def case_polars_minutes(path: str, month: str) -> int:
    import polars as pl

    bars = (
        pl.scan_parquet(path)
        .group_by((pl.col("ts_exchange") // US_PER_MINUTE).alias("minute"))
        .agg(
            pl.col("qty").filter(pl.col("is_buy")).sum().alias("taker_buy_volume"),
            pl.col("qty").filter(~pl.col("is_buy")).sum().alias("taker_sell_volume"),
        )
        .sort("minute")
        .collect(engine="streaming")
    )
    return bars.height


def case_pandas_minutes(path: str, month: str) -> int:
    return len(pandas_minute_bars(path, month))


def pandas_minute_bars(path: str, month: str):  # noqa: ANN201 - pandas is imported lazily
    """The 36 fields at 1m the straightforward pandas way (no previous month: a first month)."""
    import numpy as np
    import pandas as pd

    from aperiodic_pipelines.synthetic import month_bounds_us

    start, end = month_bounds_us(month)
    trades = pd.read_parquet(path, columns=["ts_exchange", "price", "qty", "is_buy"])
    notional = trades["price"] * trades["qty"]
    buy = trades["is_buy"]
    bucket = np.select([notional < 100, notional < 1000], ["small", "medium"], "large")
    cols = {
        "taker_buy_volume": trades["qty"].where(buy, 0.0),
        "taker_sell_volume": trades["qty"].where(~buy, 0.0),
        "taker_buy_count": buy.astype("int64"),
        "taker_sell_count": (~buy).astype("int64"),
        "buy_notional": notional.where(buy, 0.0),
        "sell_notional": notional.where(~buy, 0.0),
    }
    for side, mask in (("buy", buy), ("sell", ~buy)):
        for name in ("small", "medium", "large"):
            in_bucket = mask & (bucket == name)
            cols[f"taker_{side}_{name}_order_volume"] = notional.where(in_bucket, 0.0)
            cols[f"taker_{side}_{name}_order_count"] = in_bucket.astype("int64")
    minute = (trades["ts_exchange"] - start) // US_PER_MINUTE
    grid = pd.RangeIndex((end - start) // US_PER_MINUTE)
    bars = pd.DataFrame(cols).groupby(minute.to_numpy()).sum().reindex(grid, fill_value=0)

    bars["volume_delta"] = bars["taker_buy_volume"] - bars["taker_sell_volume"]
    bars["volume_delta_notional"] = bars["buy_notional"] - bars["sell_notional"]
    volume = bars["taker_buy_volume"] + bars["taker_sell_volume"]
    trades_n = bars["taker_buy_count"] + bars["taker_sell_count"]
    p = bars["taker_buy_volume"] / volume.where(volume > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = -(p * np.log2(p)).fillna(0) - ((1 - p) * np.log2(1 - p)).fillna(0)
    bars["flow_entropy"] = entropy.where(volume > 0).clip(0, 1)
    bars["taker_buy_sell_ratio"] = bars["taker_buy_volume"] / bars["taker_sell_volume"].where(
        bars["taker_sell_volume"] > 0)
    bars["taker_buy_sell_count_ratio"] = bars["taker_buy_count"] / bars["taker_sell_count"].where(
        bars["taker_sell_count"] > 0)
    bars["taker_buy_sell_percentage"] = p
    bars["taker_buy_sell_count_percentage"] = bars["taker_buy_count"] / trades_n.where(trades_n > 0)
    for side in ("buy", "sell"):
        side_notional = bars[f"{side}_notional"]
        side_count = bars[f"taker_{side}_count"]
        for name in ("small", "medium", "large"):
            bars[f"taker_{side}_{name}_order_percentage"] = bars[f"taker_{side}_{name}_order_volume"] / (
                side_notional.where(side_notional > 0))
            bars[f"taker_{side}_{name}_order_count_percentage"] = bars[f"taker_{side}_{name}_order_count"] / (
                side_count.where(side_count > 0))

    # Realised volatility from per-second last prices carried forward, then the 20-bar past window.
    second = (trades["ts_exchange"] - start) // 1_000_000
    close = trades["price"].groupby(second.to_numpy()).last()
    close = close.reindex(pd.RangeIndex((end - start) // 1_000_000)).ffill()
    returns_sq = np.log(close / close.shift(1)) ** 2
    rv = np.sqrt(returns_sq.groupby(returns_sq.index // 60).sum())
    flow = bars["volume_delta_notional"]
    window = flow.shift(1).rolling(20)
    mean_rv = rv.shift(1).rolling(20).mean()
    std = window.std()
    bars["flow_toxicity_score"] = (flow - window.mean()) / std.where(std > 0) * (rv / mean_rv.where(mean_rv > 0))
    return bars


def case_ours(path: str, month: str) -> int:
    """What the flow-bars step computes: the 7 coarser tables whole, the 1s table a row group at a time (each
    slice dropped once counted, as the step drops it once written). A checkout without `second_bar_slices`
    (the old code) computes the 8 whole tables, as its step did."""
    import polars as pl

    from aperiodic_pipelines import flow

    if not hasattr(flow, "second_bar_slices"):
        bars = flow.compute_flow_bars(pl.scan_parquet(path), month=month)
        return sum(frame.height for frame in bars.values())
    started = time.perf_counter()
    stats = flow.compute_second_stats(pl.scan_parquet(path), None, month=month)
    PHASES["second stats"] = time.perf_counter() - started
    started = time.perf_counter()
    coarser = flow.bars_from_second_stats(stats, intervals=flow.INTERVALS[1:])
    PHASES["7 coarser tables"] = time.perf_counter() - started
    started = time.perf_counter()
    rows = sum(part.height for part in flow.second_bar_slices(stats, ROW_GROUP_ROWS))
    PHASES["1s slices"] = time.perf_counter() - started
    return sum(frame.height for frame in coarser.values()) + rows


CASE_FUNCTIONS = {"a": case_scan, "b": case_polars_minutes, "c": case_pandas_minutes, "d": case_ours, "o": case_ours}


def run_child(case: str, path: str, month: str, warm: bool = False) -> None:
    """Entry point of the child process: run one case (after an untimed run of it when `warm`), print one JSON
    line."""
    import polars  # noqa: F401  - imported before the clock starts: we time the work, not the imports

    if case == "c":
        import pandas  # noqa: F401
    if case in ("d", "o"):
        # The package (polars, pandera via the canonical schema); what the engine imports on first use is timed.
        import aperiodic_pipelines.flow  # noqa: F401
    if warm:
        CASE_FUNCTIONS[case](path, month)
        PHASES.clear()
    started, cpu_started = time.perf_counter(), time.process_time()
    rows = CASE_FUNCTIONS[case](path, month)
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    print(json.dumps({"case": case, "warm": warm, "wall_s": wall, "cpu_s": cpu, "peak_rss_mb": peak_rss_mb(),
                      "output_rows": rows, **({"phases_s": PHASES} if PHASES else {})}))


# --- the parent: data set, subprocesses, table -----------------------------------------------------------


def ensure_tape(workdir: Path, month: str, n_trades: int, seed: int) -> Path:
    from aperiodic_pipelines.synthetic import (
        GENERATOR_VERSION,
        generate_tape_to_parquet,
        synthetic_parquet_metadata,
    )

    path = workdir / f"trades-{month}-{n_trades}-seed{seed}.parquet"
    recorded = synthetic_parquet_metadata(path) if path.exists() else None
    wanted = {"month": month, "n_trades": n_trades, "seed": seed, "generator_version": GENERATOR_VERSION}
    if recorded and all(recorded.get(k) == v for k, v in wanted.items()):
        print(f"reusing {path} ({path.stat().st_size / 1e6:.0f} MB)", flush=True)
        return path
    print(f"generating {n_trades:,} trades for {month} into {path} ...", flush=True)
    started = time.perf_counter()
    rows = generate_tape_to_parquet(path, month, n_trades, seed)
    print(f"  {rows:,} rows, {path.stat().st_size / 1e6:.0f} MB in {time.perf_counter() - started:.1f} s",
          flush=True)
    return path


def run_case(case: str, path: Path, month: str, base: Path | None = None, warm: bool = False) -> dict:
    """One case in a fresh process (`warm`: timed on its second run there); case `o` imports the engine from
    the `base` checkout instead."""
    command = [sys.executable, os.path.abspath(__file__), "--run-case", case, "--path", str(path),
               "--month", month, *(["--warm-up"] if warm else [])]
    env = dict(os.environ)
    if case == "o":
        env["PYTHONPATH"] = str(base)
    elif "PYTHONPATH" not in env:
        env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent)
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        return {"case": case, "warm": warm, "error": (done.stderr.strip().splitlines() or ["?"])[-1],
                "returncode": done.returncode}
    return json.loads(done.stdout.strip().splitlines()[-1])


def median_run(runs: list[dict]) -> dict:
    """The run with the median wall time (a failed run, if any)."""
    failed = [r for r in runs if "error" in r]
    if failed:
        return failed[0]
    return sorted(runs, key=lambda r: r["wall_s"])[len(runs) // 2]


def format_table(results: list[dict], n_trades: int) -> str:
    by_case = {(r["case"], r.get("warm", False)): r for r in results}

    def ratio(result: dict, base: str) -> str:  # against the base case run the same way (cold or warm)
        other = by_case.get((base, result.get("warm", False)))
        if "wall_s" not in result or not other or "wall_s" not in other:
            return "-"
        return f"{result['wall_s'] / other['wall_s']:.2f}x"

    header = (f"{'case':<52} {'wall s':>8} {'cpu s':>8} {'peak RSS MB':>12} {'trades/s':>12} {'vs b':>8} "
              f"{'vs c':>8}")
    lines = [header, "-" * len(header)]
    for result in results:
        label = f"{result['case']}  {CASES[result['case']]}" + (" (warm)" if result.get("warm") else "")
        if "error" in result:
            lines.append(f"{label:<52} FAILED (exit {result['returncode']}): {result['error']}")
            continue
        lines.append(
            f"{label:<52} {result['wall_s']:>8.2f} {result.get('cpu_s', float('nan')):>8.2f} "
            f"{result['peak_rss_mb']:>12.0f} "
            f"{n_trades / result['wall_s']:>12,.0f} {ratio(result, 'b'):>8} {ratio(result, 'c'):>8}"
        )
        if result.get("phases_s"):
            lines.append("     phases (wall s): " + ", ".join(f"{name} {seconds:.2f}"
                                                               for name, seconds in result["phases_s"].items()))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trades", type=int, default=50_000_000, help="trades in the month (default 50M)")
    parser.add_argument("--month", default="2024-01", help="month to generate and compute (default 2024-01)")
    parser.add_argument("--workdir", type=Path, default=Path("bench-data"), help="where the tape is kept")
    parser.add_argument("--seed", type=int, default=7, help="generator seed (default 7)")
    parser.add_argument("--skip-pandas", action="store_true", help="leave out case c (needs lots of memory)")
    parser.add_argument("--cases", default="abcd", help="which cases to run, e.g. 'abc' (default abcd)")
    parser.add_argument("--base", type=Path, help="also run case o: the engine of this checkout (the old code)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="run the cases this many times, interleaved; the table shows each case's median run")
    parser.add_argument("--warm", action="store_true",
                        help="also time each case warm: its second run in one process (as a long-lived worker)")
    parser.add_argument("--run-case", choices=sorted(CASE_FUNCTIONS), help=argparse.SUPPRESS)
    parser.add_argument("--warm-up", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.run_case:
        run_child(args.run_case, args.path, args.month, args.warm_up)
        return 0

    cases = [c for c in args.cases if c in CASE_FUNCTIONS and c != "o" and not (args.skip_pandas and c == "c")]
    if args.base is not None:
        cases.append("o")
    path = ensure_tape(args.workdir, args.month, args.trades, args.seed)
    print(f"python {platform.python_version()}, {os.cpu_count()} CPUs, {platform.machine()}", flush=True)
    variants = [(case, warm) for warm in ((False, True) if args.warm else (False,)) for case in cases]
    runs: dict[tuple[str, bool], list[dict]] = {variant: [] for variant in variants}
    for repeat in range(args.repeat):
        for case, warm in variants:
            print(f"running {case}: {CASES[case]}{' (warm)' if warm else ''} ({repeat + 1}/{args.repeat}) ...",
                  flush=True)
            runs[case, warm].append(run_case(case, path, args.month, args.base, warm))
    results = [median_run(runs[variant]) for variant in variants]
    table = format_table(results, args.trades)
    print()
    print(table)
    record = {"trades": args.trades, "month": args.month, "seed": args.seed, "results": results}
    (args.workdir / "results.json").write_text(json.dumps(record, indent=2))
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
