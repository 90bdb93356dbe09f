"""What one small partition costs in Dagster's own step timings (issue 9, goal 1): old code against new.

    .venv/bin/python benchmarks/partition_steps_bench.py --base /tmp/perf-base             # 200 k trades a month
    .venv/bin/python benchmarks/partition_steps_bench.py --exchanges binance-futures --repeat 3

Everything is real and local: generated months served in the exchanges' own formats (Binance monthly aggTrades
and 1m klines zips + `.CHECKSUM` by `ArchiveMirror` over HTTP on 127.0.0.1; Hyperliquid's hourly LZ4 node
archives in a moto S3 server on 127.0.0.1), a fresh DAGSTER_HOME with the project's `dagster.yaml`, a fresh
local store and download cache, and partition runs submitted through the code location exactly as
`aperiodic-pipelines materialize` submits them (`operator.submission.run_month_waves`, no daemon: the instance's run launcher
starts each run in its own process). Two consecutive months are materialised per exchange, one exchange after
the other, so the second month's `second_stats` reads the month before it (the first month's previous month is
not published: `APERIODIC_HTTP_404_ATTEMPTS=1` lets it count as such at once, without the retries a live CDN needs).

Per run, from the instance's event log: each step's STEP_START → STEP_SUCCESS (Dagster's own step timing), their
sum ("steps"), RUN_START → RUN_SUCCESS ("run"), and RUN_STARTING → RUN_START ("launch": a new Python process,
imports, loading the definitions). Each code tree (`--base` = a checkout of the old code, and this checkout)
runs in its own child process per repeat, alternating, so both see the same machine load; each run's process
(launch and steps) is sampled from /proc for its CPU seconds, printed beside the wall times. The figure of
goal 1 is "steps" of the second month (≤ 3 s wanted).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
INSTRUMENTS = {"binance-futures": "BTCUSDT", "hyperliquid-perps": "BTC"}
MONTHS = ("2025-08", "2025-09")  # Hyperliquid's newest node-archive format covers these
RESULT = "partition-steps-result: "  # marks the child's JSON line among whatever the code server prints


def write_archives(archives: Path, s3_mirror, exchanges: list[str], trades: int, seed: int) -> None:
    from aperiodic_pipelines.mirror.archives import write_binance_month
    from aperiodic_pipelines.mirror.klines import write_binance_klines_month
    from aperiodic_pipelines.synthetic import generate_tape

    for number, exchange in enumerate(exchanges):
        next_id, price = 1, 110_000.0
        for index, month in enumerate(MONTHS):
            tape = generate_tape(month, trades, seed=seed + 10 * number + index, start_price=price, first_trade_id=next_id)
            next_id, price = int(tape["trade_id"].max()) + 1, float(tape["price"][-1])
            if exchange == "binance-futures":
                write_binance_month(archives / "binance", INSTRUMENTS[exchange], month, tape)
                write_binance_klines_month(archives / "binance", INSTRUMENTS[exchange], month, tape)
            else:
                s3_mirror.write_month(INSTRUMENTS[exchange], month, tape)


class DescendantCpu:
    """Samples the CPU seconds (user + system) of every process below this one, every `period` seconds, so a run
    worker's CPU is known after it has exited (to within one period of its last moments)."""

    def __init__(self, period: float = 0.1) -> None:
        import threading

        self.cpu: dict[int, float] = {}
        self._period, self._stop = period, threading.Event()
        self._ticks = os.sysconf("SC_CLK_TCK")
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> DescendantCpu:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        me = os.getpid()
        while not self._stop.wait(self._period):
            parents, cpu = {}, {}
            for entry in os.scandir("/proc"):
                if not entry.name.isdigit():
                    continue
                try:
                    fields = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                pid = int(entry.name)
                parents[pid] = int(fields[1])
                cpu[pid] = (int(fields[11]) + int(fields[12])) / self._ticks
            for pid, seconds in cpu.items():
                ancestor = parents.get(pid)
                while ancestor not in (None, 0, 1, me):
                    ancestor = parents.get(ancestor)
                if ancestor == me:
                    self.cpu[pid] = seconds


def child(exchanges: list[str]) -> None:
    """Materialise both months of each exchange on a fresh instance (DAGSTER_HOME from the parent); print JSON."""
    from aperiodic_pipelines.operator.instance import get_instance

    instance = get_instance()
    out = []
    with DescendantCpu() as sampled:
        for exchange in exchanges:
            out.extend(materialise_months(instance, exchange))
    for run in out:
        run["cpu"] = sampled.cpu.get(run.pop("pid"), float("nan"))
    print(RESULT + json.dumps({"runs": out}), flush=True)


def materialise_months(instance, exchange: str) -> list[dict]:
    """Both months of one exchange, in order; per run its step timings and the pid of its worker."""
    from dagster import DagsterEventType

    from aperiodic_pipelines.operator.registry import resolve_instrument
    from aperiodic_pipelines.operator.submission import run_month_waves

    out = []
    instrument = resolve_instrument(exchange, INSTRUMENTS[exchange])
    for result in run_month_waves(instance, [instrument], list(MONTHS)):
        at: dict[str, float] = {}
        pid = None
        steps: dict[str, float] = {}
        step_start: dict[str, float] = {}
        for entry in instance.all_logs(result.run_id):
            event = entry.dagster_event
            if event is None:
                continue
            kind = event.event_type
            if kind in (DagsterEventType.RUN_STARTING, DagsterEventType.RUN_START, DagsterEventType.RUN_SUCCESS,
                        DagsterEventType.RUN_FAILURE):
                at.setdefault(kind.value, entry.timestamp)
            elif kind == DagsterEventType.STEP_START:
                step_start[event.step_key] = entry.timestamp
                pid = event.pid
            elif kind in (DagsterEventType.STEP_SUCCESS, DagsterEventType.STEP_FAILURE):
                steps[event.step_key] = entry.timestamp - step_start[event.step_key]
        end = at.get("PIPELINE_SUCCESS", at.get("PIPELINE_FAILURE"))
        out.append({
            "exchange": exchange, "month": result.month, "success": result.success,
            "failure": [] if result.success else list(result.lines)[:5],
            "steps": steps,
            "launch": at["PIPELINE_START"] - at["PIPELINE_STARTING"],
            "run": end - at["PIPELINE_START"],
            "pid": pid,
        })
    return out




def run_tree(tree: Path, workdir: Path, environment: dict[str, str], exchanges: list[str]) -> dict:
    home = workdir / "dagster_home"
    home.mkdir(parents=True)
    (home / "dagster.yaml").write_text((tree / "dagster.yaml").read_text())
    env = {**os.environ, **environment, "PYTHONPATH": str(tree), "DAGSTER_HOME": str(home),
           "APERIODIC_STORE": str(workdir / "store"), "APERIODIC_CACHE_DIR": str(workdir / "cache")}
    env.pop("APERIODIC_ALERT_WEBHOOK_URL", None)
    # The first month's previous month is not in the mirror: let its 404s count at once instead of being asked
    # again with growing waits (that wait is the first month's, not a partition's cost).
    env["APERIODIC_HTTP_404_ATTEMPTS"] = "1"
    command = [sys.executable, str(Path(__file__).resolve()), "--child", "--exchanges", ",".join(exchanges)]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tree)
    if done.returncode:
        raise SystemExit(f"{tree}: child failed:\n{done.stderr[-4000:]}")
    (line,) = [line for line in done.stdout.splitlines() if line.startswith(RESULT)]
    result = json.loads(line.removeprefix(RESULT))
    result["wall_s"] = time.perf_counter() - started
    failed = [r for r in result["runs"] if not r["success"]]
    if failed:
        raise SystemExit(f"{tree}: runs failed: {failed}")
    return result


def report(trees: dict[str, Path], results: dict[str, list[dict]], exchanges: list[str]) -> None:
    names = list(trees)
    for exchange in exchanges:
        for month in MONTHS:
            print(f"\n{exchange} {month}" + (" (reads the month before)" if month != MONTHS[0] else " (first month)"))
            print(f"{'step (s, Dagster timing)':<42}" + "".join(f"{name + ' median':>14}{'min':>8}" for name in names))
            per_tree: dict[str, dict[str, list[float]]] = {}
            for name in names:
                values: dict[str, list[float]] = collections.defaultdict(list)
                for result in results[name]:
                    (run,) = [r for r in result["runs"] if r["exchange"] == exchange and r["month"] == month]
                    for step, seconds in run["steps"].items():
                        values[step.split(".", 1)[-1] if "." in step else step].append(seconds)
                    values["= steps"].append(sum(run["steps"].values()))
                    values["run (RUN_START → RUN_SUCCESS)"].append(run["run"])
                    values["launch (RUN_STARTING → RUN_START)"].append(run["launch"])
                    values["CPU s of the run's process"].append(run["cpu"])
                per_tree[name] = values
            totals = ["= steps", "run (RUN_START → RUN_SUCCESS)", "launch (RUN_STARTING → RUN_START)",
                      "CPU s of the run's process"]
            keys = sorted({k for v in per_tree.values() for k in v if k not in totals})
            for key in [*keys, *totals]:
                line = f"{key:<42}"
                for name in names:
                    got = per_tree[name].get(key)
                    line += f"{statistics.median(got):>14.2f}{min(got):>8.2f}" if got else f"{'-':>14}{'-':>8}"
                print(line)
    print()
    for name in names:
        print(f"{name}: wall {statistics.median(r['wall_s'] for r in results[name]):.1f} s per repeat (median)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trades", type=int, default=200_000, help="trades per month (default 200,000)")
    parser.add_argument("--exchanges", default=",".join(INSTRUMENTS), help="comma-separated (default both)")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--base", type=Path, help="a checkout of the old code to compare with (git worktree add)")
    parser.add_argument("--new", type=Path, default=ROOT, help="the new code's checkout (default: this one)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    exchanges = [e for e in args.exchanges.split(",") if e]
    unknown = set(exchanges) - set(INSTRUMENTS)
    if unknown:
        parser.error(f"unknown exchanges {sorted(unknown)} (known: {', '.join(INSTRUMENTS)})")
    if args.child:
        child(exchanges)
        return 0

    from aperiodic_pipelines.mirror.http import ArchiveMirror
    from aperiodic_pipelines.mirror.s3 import hyperliquid_mirror

    new = args.new.resolve()
    trees = {"new": new} if args.base is None else {"old": args.base.resolve(), "new": new}
    results: dict[str, list[dict]] = {name: [] for name in trees}
    with tempfile.TemporaryDirectory(prefix="partition-steps-") as tmp:
        archives = Path(tmp) / "archives"
        with ArchiveMirror(archives) as http_mirror, hyperliquid_mirror() as s3_mirror:
            print(f"writing {len(MONTHS)} months x {args.trades:,} trades for {', '.join(exchanges)} ...", flush=True)
            write_archives(archives, s3_mirror, exchanges, args.trades, args.seed)
            environment = {**s3_mirror.environment(), "APERIODIC_BINANCE_URL": f"{http_mirror.url}/binance"}
            for repeat in range(args.repeat):
                for name, tree in trees.items():
                    print(f"repeat {repeat + 1}/{args.repeat}: {name} ({tree}) ...", flush=True)
                    workdir = Path(tmp) / f"{name}-{repeat}"
                    results[name].append(run_tree(tree, workdir, environment, exchanges))
    print(f"\none partition = one instrument-month of {args.trades:,} trades; load average now "
          f"{', '.join(f'{v:.1f}' for v in os.getloadavg())}")
    report(trees, results, exchanges)
    return 0


if __name__ == "__main__":
    sys.exit(main())
