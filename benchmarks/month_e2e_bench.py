"""A whole month end to end: a real Binance monthly aggTrades zip over HTTP → `aperiodic-pipelines materialize`
→ published flow bars, side by side with the floor a user would write by hand.

    .venv/bin/python benchmarks/month_e2e_bench.py                      # 2 M trades, a quick run
    .venv/bin/python benchmarks/month_e2e_bench.py --trades 50000000    # the issue's month

The zip is laid out and formatted as data.binance.vision publishes it (`data/futures/um/monthly/aggTrades/...`,
a header row, ms timestamps, `is_buyer_maker`, a `.CHECKSUM` sidecar) and served by `ArchiveMirror` on
127.0.0.1. It is written once per (month, trades, seed) under `--workdir` and reused.

Both cases run in a fresh process, one after the other (`--repeat` alternates them), against the same server:

  floor    download the zip, unzip it, `polars.read_csv` the member, canonical columns (µs, is_buy), write
           zstd parquet: the least any pipeline must do.
  ours     `aperiodic-pipelines materialize --exchange binance-futures --symbol BTCUSDT --month M` with a fresh
           DAGSTER_HOME and store: download + checksum + canonical parquet, second_stats, flow_bars_exchange and
           its checks (incl. the reconciliation with the month's 1m klines, which the mirror serves as Binance
           does), published_flow_bars. The month before is not on the mirror (404), so the month is the
           instrument's first, as for a fresh instrument (its monthly archive's 404 is asked 3 times, ~3 s).

Reported: wall seconds; CPU seconds and peak RSS of each case's whole process tree, sampled from /proc every
50 ms (ours runs in a worker the CLI's code server starts, which `wait4` of the CLI would not see); the largest
single process's peak RSS; and ours / floor. Targets (issue 9, goal 2): ≤ 2× the floor's wall time, ≤ 2 GB.
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
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SYMBOL = "BTCUSDT"
DATASET = "aggTrades"


def write_month_zip(root: Path, month: str, trades: int, seed: int) -> Path:
    """The monthly aggTrades zip (+ .CHECKSUM) of a generated month, written one day at a time."""
    from aperiodic_pipelines.mirror.archives import binance_csv
    from aperiodic_pipelines.sources import binance
    from aperiodic_pipelines.synthetic import iter_tape_days

    path = root / "binance" / binance.archive_path(SYMBOL, DATASET, month)
    stamp = path.with_name(path.name + ".bench.json")
    want = {"month": month, "trades": trades, "seed": seed}
    if path.exists() and stamp.exists() and json.loads(stamp.read_text()) == want:
        write_month_klines(root, month, trades, seed)
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    print(f"writing {trades:,} trades of {month} as {path.name} ...", flush=True)
    started = time.perf_counter()
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive, archive.open(
        f"{SYMBOL}-{DATASET}-{month}.csv", "w", force_zip64=True
    ) as member:
        for index, day in enumerate(iter_tape_days(month, trades, seed, start_price=60_000.0)):
            member.write(binance_csv(day, dataset=DATASET, header=index == 0))
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    path.with_name(path.name + ".CHECKSUM").write_text(f"{digest.hexdigest()}  {path.name}\n")
    stamp.write_text(json.dumps(want))
    print(f"  {path.stat().st_size / 1e6:.0f} MB zip in {time.perf_counter() - started:.0f} s", flush=True)
    write_month_klines(root, month, trades, seed)
    return path


def write_month_klines(root: Path, month: str, trades: int, seed: int) -> None:
    """The month's 1m klines zip (+ .CHECKSUM) of the same trades, as Binance publishes them next to the trades:
    without it binance-futures' klines reconciliation would wait out its 404 retries, which no real month pays."""
    import polars as pl

    from aperiodic_pipelines.mirror.klines import write_binance_klines_month
    from aperiodic_pipelines.sources.klines import klines_path
    from aperiodic_pipelines.synthetic import iter_tape_days

    if (root / "binance" / klines_path(SYMBOL, month)).exists():
        return
    print(f"writing the 1m klines of {month} ...", flush=True)
    days = iter_tape_days(month, trades, seed, start_price=60_000.0, with_arrival=False)
    write_binance_klines_month(root / "binance", SYMBOL, month, pl.concat(list(days)))


def floor_child(url: str, out: Path) -> None:
    """What a user would write by hand: fetch, unzip, read_csv, canonical columns, parquet."""
    import io
    import urllib.request

    import polars as pl

    with urllib.request.urlopen(url) as response:
        payload = response.read()
    with zipfile.ZipFile(io.BytesIO(payload)) as archive:
        raw = archive.read(archive.namelist()[0])
    del payload
    trades = pl.read_csv(raw)
    del raw
    canonical = trades.select(
        (pl.col("transact_time") * 1000).alias("ts_exchange"),
        pl.lit(None, dtype=pl.Int64).alias("ts_arrival"),
        pl.col("agg_trade_id").alias("trade_id"),
        pl.col("price").cast(pl.Float64),
        pl.col("quantity").cast(pl.Float64).alias("qty"),
        (~pl.col("is_buyer_maker")).alias("is_buy"),
    )
    canonical.write_parquet(out / "canonical.parquet", compression="zstd")


class ProcessTreeSampler:
    """Samples a child's whole process tree from /proc: `materialize` hands the run to a worker process started
    by the code server, which the child never waits for, so `wait4`'s usage of the child alone would miss it.

    Every `interval` seconds: the sum of the tree's resident sets (its peak is the tree's peak RSS), the largest
    single process's RSS, and each process's CPU seconds as last seen (a process's final < `interval` of CPU
    after its last sample is not counted)."""

    def __init__(self, root_pid: int, interval: float = 0.05) -> None:
        self.root_pid, self.interval = root_pid, interval
        self.peak_tree_mb = self.peak_process_mb = 0.0
        self.cpu_by_pid: dict[tuple[int, int], float] = {}  # (pid, start time) → CPU seconds
        self._ticks = os.sysconf("SC_CLK_TCK")
        self._page_mb = os.sysconf("SC_PAGE_SIZE") / 2**20
        self.timeline: list[tuple[float, float]] = []  # (epoch seconds, tree RSS MB): peaks per step

    def _stats(self) -> dict[int, list[str]]:
        stats = {}
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                try:
                    text = Path(entry.path, "stat").read_text()
                except OSError:
                    continue
                stats[int(entry.name)] = text[text.rindex(")") + 2 :].split()  # fields from `state` on
        return stats

    def sample(self) -> None:
        stats = self._stats()
        tree, frontier = set(), {self.root_pid}
        while frontier:
            tree |= frontier
            frontier = {pid for pid, fields in stats.items() if int(fields[1]) in frontier} - tree
        total = 0.0
        for pid in tree & stats.keys():
            fields = stats[pid]
            rss_mb = int(fields[21]) * self._page_mb  # fields 14/15 utime/stime, 22 starttime, 24 rss (1-based)
            total += rss_mb
            self.peak_process_mb = max(self.peak_process_mb, rss_mb)
            self.cpu_by_pid[(pid, int(fields[19]))] = (int(fields[11]) + int(fields[12])) / self._ticks
        self.peak_tree_mb = max(self.peak_tree_mb, total)
        self.timeline.append((time.time(), total))


def run_measured(command: list[str], env: dict[str, str], cwd: Path) -> dict:
    """Run a child; its wall time, and CPU seconds and peak RSS of its whole process tree (sampled)."""
    started = time.perf_counter()
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(command, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT)
        sampler = ProcessTreeSampler(process.pid)
        while process.poll() is None:
            sampler.sample()
            time.sleep(sampler.interval)
        wall = time.perf_counter() - started
        log.seek(0)
        output = log.read()
    if process.returncode:
        raise SystemExit(f"{' '.join(command[:4])} … failed ({process.returncode}):\n{output.decode()[-4000:]}")
    return {"wall_s": wall, "cpu_s": sum(sampler.cpu_by_pid.values()), "peak_rss_mb": sampler.peak_tree_mb,
            "peak_process_rss_mb": sampler.peak_process_mb, "timeline": sampler.timeline}


def run_floor(url: str, tmp: Path) -> dict:
    out = Path(tempfile.mkdtemp(dir=tmp, prefix="floor-"))
    command = [sys.executable, str(Path(__file__).resolve()), "--floor-child", url, "--out", str(out)]
    return run_measured(command, dict(os.environ), ROOT)


def run_ours(base_url: str, listing_url: str, month: str, tmp: Path) -> dict:
    out = Path(tempfile.mkdtemp(dir=tmp, prefix="ours-"))
    (out / "dagster_home").mkdir()
    (out / "dagster_home" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "DAGSTER_HOME": str(out / "dagster_home"),
        "APERIODIC_STORE": str(out / "store"),
        "APERIODIC_BINANCE_URL": f"{base_url}/binance",
        "APERIODIC_BINANCE_LISTING_URL": listing_url,  # the universe (which symbols, from which month)
        "APERIODIC_CACHE_DIR": str(out / "cache"),
    }
    cli = Path(sys.executable).with_name("aperiodic-pipelines")
    command = [str(cli), "materialize", "--exchange", "binance-futures", "--symbol", SYMBOL, "--month", month,
               "--log-level", "WARNING"]
    result = run_measured(command, env, out)
    published = sorted((out / "store" / "flow").rglob("*.parquet"))
    if len(published) != 8:
        raise SystemExit(f"expected 8 published files, found {len(published)}")
    result["steps"] = step_profile(step_windows(out / "dagster_home"), result.pop("timeline"))
    return result


def step_windows(home: Path) -> dict[str, tuple[float, float]]:
    """Dagster's own step timings of the run recorded in `home`: step name → (STEP_START, STEP_SUCCESS) epochs."""
    os.environ["DAGSTER_HOME"] = str(home)
    from dagster import DagsterInstance

    windows: dict[str, tuple[float, float]] = {}
    with DagsterInstance.get() as instance:
        for record in instance.get_run_records():
            started: dict[str, float] = {}
            for entry in instance.all_logs(record.dagster_run.run_id):
                event = entry.dagster_event
                if event is None or not event.step_key:
                    continue
                if event.event_type_value == "STEP_START":
                    started[event.step_key] = entry.timestamp
                elif event.event_type_value == "STEP_SUCCESS" and event.step_key in started:
                    windows[event.step_key.split(".")[0]] = (started[event.step_key], entry.timestamp)
    return windows


def step_profile(windows: dict[str, tuple[float, float]], timeline: list[tuple[float, float]]) -> str:
    """Each step's seconds and the tree's peak RSS while it ran."""
    parts = []
    for name, (start, end) in windows.items():
        peak = max((rss for at, rss in timeline if start <= at <= end), default=0.0)
        parts.append(f"{name.split('__')[-1]} {end - start:.2f} s (peak {peak:,.0f} MB)")
    return ", ".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trades", type=int, default=2_000_000, help="trades in the month (default 2,000,000)")
    parser.add_argument("--month", default="2024-03")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--repeat", type=int, default=1, help="alternate the two cases this many times")
    parser.add_argument("--workdir", type=Path, default=ROOT / "bench-data" / "e2e")
    parser.add_argument("--floor-child", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.floor_child:
        floor_child(args.floor_child, args.out)
        return 0

    from aperiodic_pipelines.mirror.http import ArchiveMirror
    from aperiodic_pipelines.mirror.listings import ListingServer
    from aperiodic_pipelines.sources import binance

    archive_root = args.workdir / f"{args.month}-{args.trades}-seed{args.seed}"
    zip_path = write_month_zip(archive_root, args.month, args.trades, args.seed)
    runs: dict[str, list[dict]] = {"floor": [], "ours": []}
    with ArchiveMirror(archive_root) as mirror, ListingServer(archive_root / "binance") as listing, \
            tempfile.TemporaryDirectory(prefix="e2e-bench-") as tmp:
        url = f"{mirror.url}/binance/{binance.archive_path(SYMBOL, DATASET, args.month)}"
        for repeat in range(args.repeat):
            print(f"run {repeat + 1}/{args.repeat}: floor ...", flush=True)
            runs["floor"].append(run_floor(url, Path(tmp)))
            runs["floor"][-1].pop("timeline")
            print(f"run {repeat + 1}/{args.repeat}: ours (aperiodic-pipelines materialize) ...", flush=True)
            runs["ours"].append(run_ours(mirror.url, listing.url, args.month, Path(tmp)))

    print(f"\n{args.trades:,} aggTrades in {args.month}, zip {zip_path.stat().st_size / 1e6:.0f} MB; "
          f"median of {args.repeat} run(s), cases alternated")
    print(f"{'case':<10}{'wall s':>10}{'cpu s':>10}{'peak RSS MB':>14}{'largest process MB':>20}{'vs floor':>10}")
    medians = {
        case: {key: statistics.median(r[key] for r in results) for key in ("wall_s", "cpu_s", "peak_rss_mb", "peak_process_rss_mb")}
        for case, results in runs.items()
    }
    for case, m in medians.items():
        ratio = m["wall_s"] / medians["floor"]["wall_s"]
        print(f"{case:<10}{m['wall_s']:>10.2f}{m['cpu_s']:>10.2f}{m['peak_rss_mb']:>14.0f}"
              f"{m['peak_process_rss_mb']:>20.0f}{ratio:>9.2f}x")
    print("targets: ours ≤ 2.00x the floor's wall time, peak RSS ≤ 2048 MB")
    steps = runs["ours"][len(runs["ours"]) // 2]["steps"]
    print(f"ours, Dagster step timings: {steps}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
