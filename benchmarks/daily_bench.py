"""Daily update vs recomputing the month to date (issue 15 item 2): one instrument, day 28 of the open month.

    .venv/bin/python benchmarks/daily_bench.py                          # 2 M-trade and 20 k-trade days
    .venv/bin/python benchmarks/daily_bench.py --busy 20000 --quiet 2000  # a quick check that it works

For each instrument (every day of months m−1 and m has exactly `--busy` or `--quiet` trades, synthetic, one
parquet file per raw day as a source stages them), in one invocation:

  setup      raw days written; the carry for day 28 built by chaining days 1–27 (not timed: the daily schedule
             has done that on the previous mornings) and saved as parquet, as the store would stage it
  daily      a fresh process loads the carry and raw day 28 and computes day 28's bars at all 8 intervals
             (`compute_day_flow_bars`): the cost of one morning's update
  recompute  a fresh process computes the month from raw days 1–28 of m and raw month m−1 (`compute_flow_bars`):
             what the update would cost if it recomputed the month to date

Each case runs in its own subprocess so its peak RSS (VmHWM) is its own. The day-28 rows of both are compared
bit for bit. `exchange` timestamps only. The table prints the 1-minute load average (`uptime`) before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MONTH = "2024-03"  # 31 days, after a 29-day February: the window reaches into a short month
US_PER_DAY = 86_400_000_000


def peak_rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def load_average() -> str:
    return Path("/proc/loadavg").read_text().split()[0]


def raw_day_path(workdir: Path, day: str) -> Path:
    return workdir / "raw" / f"{day}.parquet"


def write_raw_days(workdir: Path, days: list[str], per_day: int, seed: int) -> None:
    """Exactly `per_day` trades on each day, continuous in price and trade id; one parquet file per day."""
    import numpy as np

    from aperiodic_pipelines.domain.months import day_bounds_us
    from aperiodic_pipelines.synthetic import _Carry, _day_frame

    carry = _Carry(price_ticks=420_000, next_trade_id=1, buying=True)
    root = np.random.SeedSequence(seed).spawn(len(days))
    (workdir / "raw").mkdir(parents=True, exist_ok=True)
    for day, day_seed in zip(days, root, strict=True):
        frame = _day_frame(np.random.default_rng(day_seed), per_day, day_bounds_us(day)[0], carry, tick=0.1,
                           lot=0.001, price_decimals=1, lot_decimals=3, with_arrival=True, first_at_start=False,
                           last_at_end=False)
        frame.write_parquet(raw_day_path(workdir, day))


def build_carry(workdir: Path, day: int) -> float:
    """Chain days 1..day−1 from the carry read from raw month m−1; save the carry for `day`. Returns seconds."""
    import polars as pl

    from aperiodic_pipelines.domain.months import days_of_month, shift_month
    from aperiodic_pipelines.flow import compute_day_flow_bars, month_start_carry

    started = time.perf_counter()
    previous = pl.scan_parquet([raw_day_path(workdir, d) for d in days_of_month(shift_month(MONTH, -1))])
    carry = month_start_carry(previous, month=MONTH)
    for current in days_of_month(MONTH)[: day - 1]:
        carry = compute_day_flow_bars(pl.read_parquet(raw_day_path(workdir, current)), carry, day=current).carry
    carry.to_frame().write_parquet(workdir / "carry.parquet")
    return time.perf_counter() - started


# --- the cases, each in a fresh process -------------------------------------------------------------------


def case_daily(workdir: Path, day: int) -> dict[str, object]:
    import polars as pl

    from aperiodic_pipelines.flow import FlowCarry, compute_day_flow_bars

    started, cpu = time.perf_counter(), time.process_time()
    carry = FlowCarry.from_frame(pl.read_parquet(workdir / "carry.parquet"))
    trades = pl.read_parquet(raw_day_path(workdir, carry.day))
    result = compute_day_flow_bars(trades, carry, day=carry.day)
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    for interval, frame in result.bars.items():
        frame.write_parquet(workdir / f"daily-{interval}.parquet")
    return {"trades": trades.height, "seconds": elapsed, "cpu": cpu, "rss_mb": peak_rss_mb()}


def case_recompute(workdir: Path, day: int) -> dict[str, object]:
    import polars as pl

    from aperiodic_pipelines.domain.months import day_bounds_us, days_of_month, shift_month
    from aperiodic_pipelines.flow import compute_flow_bars

    this_month = [raw_day_path(workdir, d) for d in days_of_month(MONTH)[:day]]
    previous = [raw_day_path(workdir, d) for d in days_of_month(shift_month(MONTH, -1))]
    started, cpu = time.perf_counter(), time.process_time()
    bars = compute_flow_bars(pl.scan_parquet(this_month), pl.scan_parquet(previous), month=MONTH)
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    trades = pl.scan_parquet(this_month + previous).select(pl.len()).collect().item()
    lo, hi = day_bounds_us(days_of_month(MONTH)[day - 1])
    for interval, frame in bars.items():
        epoch = pl.col("time").dt.epoch("us")
        frame.filter((epoch >= lo) & (epoch < hi)).write_parquet(workdir / f"recompute-{interval}.parquet")
    return {"trades": trades, "seconds": elapsed, "cpu": cpu, "rss_mb": peak_rss_mb()}


def _day1_carry(workdir: Path, scanned: bool) -> dict[str, object]:
    """Day 1's carry from raw month m−1, the month read whole (before) or scanned (`defs.daily`'s way now)."""
    import polars as pl

    from aperiodic_pipelines.domain.months import days_of_month, shift_month
    from aperiodic_pipelines.flow import month_start_carry

    previous = [raw_day_path(workdir, d) for d in days_of_month(shift_month(MONTH, -1))]
    started, cpu = time.perf_counter(), time.process_time()
    trades = pl.scan_parquet(previous) if scanned else pl.read_parquet(previous)
    carry = month_start_carry(trades, month=MONTH)
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    carry.to_frame().write_parquet(workdir / f"day1-{'scan' if scanned else 'read'}.parquet")
    count = pl.scan_parquet(previous).select(pl.len()).collect().item()
    return {"trades": count, "seconds": elapsed, "cpu": cpu, "rss_mb": peak_rss_mb()}


def case_day1_read(workdir: Path, day: int) -> dict[str, object]:
    return _day1_carry(workdir, scanned=False)


def case_day1_scan(workdir: Path, day: int) -> dict[str, object]:
    return _day1_carry(workdir, scanned=True)


CASES = {"daily": case_daily, "recompute": case_recompute, "day1-read": case_day1_read,
         "day1-scan": case_day1_scan}


def run_case(case: str, workdir: Path, day: int) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, __file__, "--child", case, "--workdir", str(workdir), "--day", str(day)],
        capture_output=True, text=True, timeout=3_600, check=False,
    )
    if done.returncode:
        raise RuntimeError(f"case {case} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def same_rows(workdir: Path) -> bool:
    """The day's rows of both cases, bit for bit (floats compared as bytes, nulls in the same places)."""
    import polars as pl

    from aperiodic_pipelines.flow import INTERVALS

    for interval in INTERVALS:
        daily = pl.read_parquet(workdir / f"daily-{interval}.parquet")
        recompute = pl.read_parquet(workdir / f"recompute-{interval}.parquet")
        if daily.schema != recompute.schema or daily.height != recompute.height:
            return False
        for name, dtype in daily.schema.items():
            left, right = daily.get_column(name), recompute.get_column(name)
            if not (left.is_null() == right.is_null()).all():
                return False
            if dtype == pl.Float64:
                if left.fill_null(0.0).to_numpy().tobytes() != right.fill_null(0.0).to_numpy().tobytes():
                    return False
            elif not left.equals(right, null_equal=True):
                return False
    return True


def pl_read(path: Path):  # polars is imported lazily here, as in the cases
    import polars as pl

    return pl.read_parquet(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--busy", type=int, default=2_000_000, help="trades per day of the busy instrument")
    parser.add_argument("--quiet", type=int, default=20_000, help="trades per day of the quiet instrument")
    parser.add_argument("--day", type=int, default=28, help="the day of the open month to update")
    parser.add_argument("--workdir", type=Path, help="keep the generated files here (default: a temp dir)")
    parser.add_argument("--child", choices=sorted(CASES), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(CASES[args.child](args.workdir, args.day)))
        return

    from aperiodic_pipelines.domain.months import days_of_month, shift_month

    if not 2 <= args.day <= 28:
        parser.error("--day must be 2..28")
    days = days_of_month(shift_month(MONTH, -1)) + days_of_month(MONTH)[: args.day]
    rows = []
    with tempfile.TemporaryDirectory(prefix="daily-bench-") as scratch:
        base = args.workdir or Path(scratch)
        for label, per_day in (("busy", args.busy), ("quiet", args.quiet)):
            workdir = base / f"{label}-{per_day}"
            started = time.perf_counter()
            write_raw_days(workdir, days, per_day, seed=per_day)
            generated = time.perf_counter() - started
            chained = build_carry(workdir, args.day)
            print(f"{label}: {per_day:,} trades/day; generated {len(days)} raw days in {generated:.1f} s, chained "
                  f"days 1–{args.day - 1} in {chained:.1f} s; carry {os.path.getsize(workdir / 'carry.parquet'):,} "
                  "bytes", flush=True)
            for case in CASES:
                load_before = load_average()
                result = run_case(case, workdir, args.day)
                rows.append((label, per_day, case, result, load_before, load_average()))
            rows.append((label, per_day, "same", same_rows(workdir), "", ""))
            carries = [pl_read(workdir / f"day1-{how}.parquet") for how in ("read", "scan")]
            rows.append((label, per_day, "same carry", carries[0].equals(carries[1], null_equal=True), "", ""))

    print()
    print(f"day {args.day} of {MONTH}, exchange timestamps, all 8 intervals; nproc={os.cpu_count()}")
    print(f"{'instrument':<10} {'trades/day':>11} {'case':<24} {'trades read':>12} {'wall s':>8} {'cpu s':>8} "
          f"{'peak RSS MB':>12} {'load before/after':>18}")
    for label, per_day, case, result, before, after in rows:
        if case == "same carry":
            print(f"{label:<10} {per_day:>11,} day 1 carry, month read whole vs scanned, equal: "
                  f"{'yes' if result else 'NO'}")
            continue
        if case == "same":
            print(f"{label:<10} {per_day:>11,} day {args.day} rows bit for bit equal: {'yes' if result else 'NO'}")
            continue
        name = {"daily": f"daily step (day {args.day})", "recompute": f"recompute days 1–{args.day}",
                "day1-read": "day 1 carry, m−1 read", "day1-scan": "day 1 carry, m−1 scanned"}[case]
        print(f"{label:<10} {per_day:>11,} {name:<24} {result['trades']:>12,} {result['seconds']:>8.2f} "
              f"{result['cpu']:>8.2f} {result['rss_mb']:>12.0f} {before + ' / ' + after:>18}")
    if not all(row[3] for row in rows if row[2] in ("same", "same carry")):
        sys.exit(1)


if __name__ == "__main__":
    main()
