"""A whole month end to end: a real Binance monthly aggTrades zip over HTTP → `aperiodic-pipelines materialize`
→ published flow bars, side by side with the floor a user would write by hand.

    .venv/bin/python benchmarks/month_e2e_bench.py                      # 2 M trades, a quick run
    .venv/bin/python benchmarks/month_e2e_bench.py --trades 50000000    # the issue's month
    .venv/bin/python benchmarks/month_e2e_bench.py --trades 200000000 --floor streaming  # memory flat in month size
    .venv/bin/python benchmarks/month_e2e_bench.py --trades 10000000 --dataset trades    # the `trades` dataset
    .venv/bin/python benchmarks/month_e2e_bench.py --trades 50000000 --ref main  # + the package as of `main`

The zip is laid out and formatted as data.binance.vision publishes it (`data/futures/um/monthly/aggTrades/...`,
a header row, ms timestamps, `is_buyer_maker`, a `.CHECKSUM` sidecar) and served by `ArchiveMirror` on
127.0.0.1. It is written once per (month, trades, seed, dataset) under `--workdir` and reused, generated and
compressed one day at a time (memory: one day of trades); so are the month's 1m klines.

Both cases run in a fresh process, one after the other (`--repeat` alternates them), against the same server:

  floor    download the zip, unzip it, `polars.read_csv` the member, canonical columns (µs, is_buy), write
           zstd parquet: the least any pipeline must do. `--floor streaming`: zip and CSV to disk, then
           `scan_csv` → `sink_parquet` (the eager floor holds the CSV and its frame: ~25 GB at 200 M trades).
  ours     `aperiodic-pipelines materialize --exchange binance-futures --symbol BTCUSDT --month M` with a fresh
           DAGSTER_HOME and store: download + checksum + canonical parquet, second_stats, flow_bars_exchange and
           its checks (incl. the reconciliation with the month's 1m klines, which the mirror serves as Binance
           does), published_flow_bars. The month is the instrument's first (the mirror's bucket listing holds
           only it), as for a fresh instrument: second_stats reads no month before it.

Reported: wall seconds; CPU seconds and peak RSS of each case's whole process tree, sampled from /proc every
50 ms (ours runs in a worker the CLI's code server starts, which `wait4` of the CLI would not see); the largest
single process's peak RSS; and ours / floor. Targets (issue 9, goal 2): ≤ 2× the floor's wall time, ≤ 2 GB.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

ROOT = Path(__file__).resolve().parent.parent
SYMBOL = "BTCUSDT"
CSV_PIECE_ROWS = 250_000  # generated trades turned into CSV text and klines at a time
# Canonical columns from each dataset's CSV columns, as the floor writes them.
FLOOR_COLUMNS = {
    "aggTrades": {"time": "transact_time", "trade_id": "agg_trade_id", "qty": "quantity"},
    "trades": {"time": "time", "trade_id": "id", "qty": "qty"},
}


def write_month_zip(root: Path, month: str, trades: int, seed: int, dataset: str) -> Path:
    """The monthly zip of `dataset` (+ .CHECKSUM) of a generated month and its 1m klines, generated and compressed
    one day at a time, in one pass (memory: one day of trades, whatever the month holds)."""
    import polars as pl

    from aperiodic_pipelines.mirror.archives import binance_csv
    from aperiodic_pipelines.mirror.klines import write_binance_klines_month
    from aperiodic_pipelines.sources import binance
    from aperiodic_pipelines.synthetic import iter_tape_days

    path = root / "binance" / binance.archive_path(SYMBOL, dataset, month)
    stamp = path.with_name(path.name + ".bench.json")
    want = {"month": month, "trades": trades, "seed": seed, "dataset": dataset}
    if path.exists() and stamp.exists() and json.loads(stamp.read_text()) == want:
        write_month_klines(root, month, trades, seed)
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    print(f"writing {trades:,} trades of {month} as {path.name} ...", flush=True)
    started = time.perf_counter()
    # No arrival times (the archive has none; the other columns do not depend on them), and a day's CSV text and
    # klines `CSV_PIECE_ROWS` at a time: at 200 M trades a busy day (~11 M trades) would take GBs for either.
    days = iter_tape_days(month, trades, seed, start_price=60_000.0, with_arrival=False)

    def zipped(member: IO[bytes]) -> Iterator[pl.DataFrame]:
        """Each piece of each day, once its rows are in the zip: the klines are computed from the same pass."""
        for index, day in enumerate(days):
            for offset in range(0, day.height, CSV_PIECE_ROWS):
                piece = day.slice(offset, CSV_PIECE_ROWS)
                member.write(binance_csv(piece, dataset=dataset, header=index == 0 and offset == 0))
                yield piece

    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive, archive.open(
        f"{SYMBOL}-{dataset}-{month}.csv", "w", force_zip64=True
    ) as member:
        write_binance_klines_month(root / "binance", SYMBOL, month, zipped(member))
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    path.with_name(path.name + ".CHECKSUM").write_text(f"{digest.hexdigest()}  {path.name}\n")
    stamp.write_text(json.dumps(want))
    print(f"  {path.stat().st_size / 1e6:.0f} MB zip and its 1m klines in {time.perf_counter() - started:.0f} s",
          flush=True)
    return path


def write_month_klines(root: Path, month: str, trades: int, seed: int) -> None:
    """The month's 1m klines zip (+ .CHECKSUM) of the same trades, as Binance publishes them next to the trades:
    without it binance-futures' klines reconciliation would wait out its 404 retries, which no real month pays."""
    from aperiodic_pipelines.mirror.klines import write_binance_klines_month
    from aperiodic_pipelines.sources.klines import klines_path
    from aperiodic_pipelines.synthetic import iter_tape_days

    if (root / "binance" / klines_path(SYMBOL, month)).exists():
        return
    print(f"writing the 1m klines of {month} ...", flush=True)
    # Day by day: a month of 200 M trades is never whole in memory.
    days = iter_tape_days(month, trades, seed, start_price=60_000.0, with_arrival=False)
    write_binance_klines_month(root / "binance", SYMBOL, month, days)


def floor_child(url: str, out: Path, dataset: str, streaming: bool) -> None:
    """What a user would write by hand: fetch, unzip, read_csv, canonical columns, parquet. `streaming`: the zip
    and its CSV go to disk and `scan_csv` streams them to parquet (a 200 M-trade month's CSV, ~14 GB, and its frame
    do not fit in 24 GB together)."""
    import io
    import shutil
    import urllib.request

    import polars as pl

    names = FLOOR_COLUMNS[dataset]

    def canonical(trades: pl.LazyFrame | pl.DataFrame):
        return trades.select(
            (pl.col(names["time"]) * 1000).alias("ts_exchange"),
            pl.lit(None, dtype=pl.Int64).alias("ts_arrival"),
            pl.col(names["trade_id"]).alias("trade_id"),
            pl.col("price").cast(pl.Float64),
            pl.col(names["qty"]).cast(pl.Float64).alias("qty"),
            (~pl.col("is_buyer_maker")).alias("is_buy"),
        )

    if streaming:
        with urllib.request.urlopen(url) as response, (out / "month.zip").open("wb") as handle:
            shutil.copyfileobj(response, handle, 1 << 22)
        with zipfile.ZipFile(out / "month.zip") as archive, archive.open(archive.namelist()[0]) as member, \
                (out / "month.csv").open("wb") as csv:
            shutil.copyfileobj(member, csv, 1 << 22)
        (out / "month.zip").unlink()
        canonical(pl.scan_csv(out / "month.csv")).sink_parquet(out / "canonical.parquet", compression="zstd")
        return
    with urllib.request.urlopen(url) as response:
        payload = response.read()
    with zipfile.ZipFile(io.BytesIO(payload)) as archive:
        raw = archive.read(archive.namelist()[0])
    del payload
    trades = pl.read_csv(raw)
    del raw
    canonical(trades).write_parquet(out / "canonical.parquet", compression="zstd")


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
        self.at_peak: dict[str, float] = {}  # each process's RSS MB at the tree's peak, by role

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
        total, by_pid = 0.0, {}
        for pid in tree & stats.keys():
            fields = stats[pid]
            rss_mb = int(fields[21]) * self._page_mb  # fields 14/15 utime/stime, 22 starttime, 24 rss (1-based)
            total += rss_mb
            by_pid[pid] = rss_mb
            self.peak_process_mb = max(self.peak_process_mb, rss_mb)
            self.cpu_by_pid[(pid, int(fields[19]))] = (int(fields[11]) + int(fields[12])) / self._ticks
        if total > self.peak_tree_mb:
            self.at_peak = {}
            for pid, rss_mb in by_pid.items():
                role = process_role(pid, self.root_pid)
                self.at_peak[role] = self.at_peak.get(role, 0.0) + rss_mb
        self.peak_tree_mb = max(self.peak_tree_mb, total)
        self.timeline.append((time.time(), total))


def process_role(pid: int, root_pid: int) -> str:
    """What a process of the tree is, from its command line: the CLI, its code server, a run worker."""
    if pid == root_pid:
        return "CLI"
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return "other"
    if " api grpc" in command:
        return "code server"
    if "multiprocessing" in command or "execute_run" in command or "execute_step" in command:
        return "run worker"
    return "other"


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
            "peak_process_rss_mb": sampler.peak_process_mb, "timeline": sampler.timeline,
            "at_peak_mb": sampler.at_peak}


def export_tree(ref: str, target: Path) -> Path:
    """The package as of git `ref` (`git archive`), for a case run with it instead of this tree."""
    target.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "aperiodic_pipelines"], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    return target


def run_floor(url: str, tmp: Path, dataset: str, floor: str) -> dict:
    out = Path(tempfile.mkdtemp(dir=tmp, prefix="floor-"))
    command = [sys.executable, str(Path(__file__).resolve()), "--floor-child", url, "--out", str(out),
               "--dataset", dataset, "--floor", floor]
    result = run_measured(command, dict(os.environ), ROOT)
    shutil.rmtree(out, ignore_errors=True)  # the disk a 200 M-trade month needs is the zip, one CSV and one set of outputs at a time
    return result


def run_ours(base_url: str, listing_url: str, month: str, tmp: Path, dataset: str, code: Path = ROOT) -> dict:
    """`materialize` of the month with the package under `code` (this tree, or `--ref`'s)."""
    out = Path(tempfile.mkdtemp(dir=tmp, prefix="ours-"))
    (out / "dagster_home").mkdir()
    (out / "dagster_home" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env = {
        **os.environ,
        "PYTHONPATH": str(code),
        "DAGSTER_HOME": str(out / "dagster_home"),
        "APERIODIC_STORE": str(out / "store"),
        "APERIODIC_BINANCE_URL": f"{base_url}/binance",
        "APERIODIC_BINANCE_LISTING_URL": listing_url,  # the universe (which symbols, from which month)
        "APERIODIC_BINANCE_DATASET": dataset,
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
    shutil.rmtree(out, ignore_errors=True)  # a lingering child of the tree may still write its logs there
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
    parser.add_argument("--dataset", choices=sorted(FLOOR_COLUMNS), default="aggTrades",
                        help="the Binance dataset the month is published as (trades: one row per trade)")
    parser.add_argument("--floor", choices=("eager", "streaming"), default="eager",
                        help="eager: read_csv of the member in memory (issue 17's floor); streaming: unzip to disk "
                        "and scan_csv → sink_parquet (needed from ~100 M trades on a 24 GB machine)")
    parser.add_argument("--ref", help="also run the package as of this git ref (e.g. main), alternated with ours")
    parser.add_argument("--workdir", type=Path, default=ROOT / "bench-data" / "e2e")
    parser.add_argument("--floor-child", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.floor_child:
        floor_child(args.floor_child, args.out, args.dataset, args.floor == "streaming")
        return 0

    from aperiodic_pipelines.mirror.http import ArchiveMirror
    from aperiodic_pipelines.mirror.listings import ListingServer
    from aperiodic_pipelines.sources import binance

    suffix = "" if args.dataset == "aggTrades" else f"-{args.dataset}"
    archive_root = args.workdir / f"{args.month}-{args.trades}-seed{args.seed}{suffix}"
    zip_path = write_month_zip(archive_root, args.month, args.trades, args.seed, args.dataset)
    runs: dict[str, list[dict]] = {"floor": [], **({args.ref: []} if args.ref else {}), "ours": []}
    with ArchiveMirror(archive_root) as mirror, ListingServer(archive_root / "binance") as listing, \
            tempfile.TemporaryDirectory(prefix="e2e-bench-") as tmp:
        url = f"{mirror.url}/binance/{binance.archive_path(SYMBOL, args.dataset, args.month)}"
        codes = {"ours": ROOT}
        if args.ref:
            codes = {args.ref: export_tree(args.ref, Path(tmp) / "ref"), **codes}
        for repeat in range(args.repeat):
            print(f"run {repeat + 1}/{args.repeat}: floor ...", flush=True)
            runs["floor"].append(run_floor(url, Path(tmp), args.dataset, args.floor))
            runs["floor"][-1].pop("timeline")
            for case, code in codes.items():
                print(f"run {repeat + 1}/{args.repeat}: {case} (aperiodic-pipelines materialize) ...", flush=True)
                runs[case].append(run_ours(mirror.url, listing.url, args.month, Path(tmp), args.dataset, code))

    print(f"\n{args.trades:,} {args.dataset} in {args.month} ({args.floor} floor), zip {zip_path.stat().st_size / 1e6:.0f} MB; "
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
    for case in codes:
        steps = runs[case][len(runs[case]) // 2]["steps"]
        print(f"{case}, Dagster step timings: {steps}")
        at_peak = runs[case][len(runs[case]) // 2].get("at_peak_mb", {})
        print(f"{case}, at the tree's peak: " + ", ".join(f"{role} {mb:,.0f} MB" for role, mb in sorted(at_peak.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
