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
           flow_bars_true with their checks, published_flow_bars. The month before is not on the mirror (404),
           so the month is the instrument's first, as for a fresh instrument.

Reported: wall and CPU seconds (user + system of the process and its children) and peak RSS of each case
(`wait4` of the child), and ours / floor. Targets (issue 9, goal 2): ≤ 2× the floor's wall time, ≤ 2 GB.
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
    return path


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


def run_measured(command: list[str], env: dict[str, str], cwd: Path) -> dict:
    """Run a child; its wall time, user + system CPU and peak RSS (from wait4)."""
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output = process.stdout.read() if process.stdout else b""
    _pid, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    code = os.waitstatus_to_exitcode(status)
    if code:
        raise SystemExit(f"{' '.join(command[:4])} … failed ({code}):\n{output.decode()[-4000:]}")
    return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime, "peak_rss_mb": usage.ru_maxrss / 1024}


def run_floor(url: str, tmp: Path) -> dict:
    out = Path(tempfile.mkdtemp(dir=tmp, prefix="floor-"))
    command = [sys.executable, str(Path(__file__).resolve()), "--floor-child", url, "--out", str(out)]
    return run_measured(command, dict(os.environ), ROOT)


def run_ours(base_url: str, month: str, tmp: Path) -> dict:
    out = Path(tempfile.mkdtemp(dir=tmp, prefix="ours-"))
    (out / "dagster_home").mkdir()
    (out / "dagster_home" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "DAGSTER_HOME": str(out / "dagster_home"),
        "APERIODIC_STORE": str(out / "store"),
        "APERIODIC_BINANCE_URL": f"{base_url}/binance",
        "APERIODIC_CACHE_DIR": str(out / "cache"),
    }
    cli = Path(sys.executable).with_name("aperiodic-pipelines")
    command = [str(cli), "materialize", "--exchange", "binance-futures", "--symbol", SYMBOL, "--month", month,
               "--log-level", "WARNING"]
    result = run_measured(command, env, out)
    published = sorted((out / "store" / "flow").rglob("*.parquet"))
    if len(published) != 8:
        raise SystemExit(f"expected 8 published files, found {len(published)}")
    result["steps"] = step_seconds(out / "dagster_home")
    return result


def step_seconds(home: Path) -> dict[str, float]:
    """Dagster's own step timings (STEP_START → STEP_SUCCESS) of the run recorded in `home`."""
    os.environ["DAGSTER_HOME"] = str(home)
    from dagster import DagsterInstance

    durations: dict[str, float] = {}
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
                    name = event.step_key.split(".")[0]
                    durations[name] = durations.get(name, 0.0) + entry.timestamp - started[event.step_key]
    return durations


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
    from aperiodic_pipelines.sources import binance

    archive_root = args.workdir / f"{args.month}-{args.trades}-seed{args.seed}"
    zip_path = write_month_zip(archive_root, args.month, args.trades, args.seed)
    runs: dict[str, list[dict]] = {"floor": [], "ours": []}
    with ArchiveMirror(archive_root) as mirror, tempfile.TemporaryDirectory(prefix="e2e-bench-") as tmp:
        url = f"{mirror.url}/binance/{binance.archive_path(SYMBOL, DATASET, args.month)}"
        for repeat in range(args.repeat):
            print(f"run {repeat + 1}/{args.repeat}: floor ...", flush=True)
            runs["floor"].append(run_floor(url, Path(tmp)))
            print(f"run {repeat + 1}/{args.repeat}: ours (aperiodic-pipelines materialize) ...", flush=True)
            runs["ours"].append(run_ours(mirror.url, args.month, Path(tmp)))

    print(f"\n{args.trades:,} aggTrades in {args.month}, zip {zip_path.stat().st_size / 1e6:.0f} MB; "
          f"median of {args.repeat} run(s), cases alternated")
    print(f"{'case':<10}{'wall s':>10}{'cpu s':>10}{'peak RSS MB':>14}{'vs floor':>10}")
    medians = {
        case: {key: statistics.median(r[key] for r in results) for key in ("wall_s", "cpu_s", "peak_rss_mb")}
        for case, results in runs.items()
    }
    for case, m in medians.items():
        ratio = m["wall_s"] / medians["floor"]["wall_s"]
        print(f"{case:<10}{m['wall_s']:>10.2f}{m['cpu_s']:>10.2f}{m['peak_rss_mb']:>14.0f}{ratio:>9.2f}x")
    print("targets: ours ≤ 2.00x the floor's wall time, peak RSS ≤ 2048 MB")
    steps = runs["ours"][len(runs["ours"]) // 2]["steps"]
    print("ours, Dagster step timings (s): " + ", ".join(f"{name} {seconds:.2f}" for name, seconds in steps.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
