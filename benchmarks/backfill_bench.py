"""Backfill throughput: partitions per hour for small months through the Dagster daemon, and what bounds it.

    .venv/bin/python benchmarks/backfill_bench.py                               # 24 months x 20 k trades
    .venv/bin/python benchmarks/backfill_bench.py --months 24 --trades 200000 --base /tmp/perf-base

Everything is real and local: Binance monthly aggTrades and 1m klines zips (+ .CHECKSUM) for `--months`
consecutive months of one instrument and the month before them, served by `ArchiveMirror` on 127.0.0.1 (without
the klines every flow-bars step would wait out the 404 retries of `reconciles_with_exchange_klines`, and the first
month those of its previous month's 32 archives, which no real backfill of a published history pays); `dagster-webserver` + `dagster-daemon` with a fresh
DAGSTER_HOME configured by the project's `dagster.yaml` (queued runs, at most 2 runs per exchange at once) and
a local store; one job backfill of the months submitted with `aperiodic-pipelines`' own `submit_backfill`
(GraphQL `launchPartitionBackfill`). When it has finished, every run's event log says where the time went:

  queued      run created → RUN_STARTING (the daemon's queue and tag limits)
  launch      RUN_STARTING → RUN_START (a new Python process: interpreter, imports, loading the definitions)
  to 1st step RUN_START → the first STEP_START (resources, planning)
  steps       Σ STEP_START → STEP_SUCCESS/FAILURE over the run's steps (Dagster's own step timings)
  run         RUN_START → RUN_SUCCESS

Before the backfill it measures what a run pays before its first step can start: a bare interpreter, and
`import aperiodic_pipelines.defs.definitions` (wall, median of 3, and `-X importtime`'s heaviest packages).
With `--base` the same measurement is made for an old checkout afterwards (sequentially, so compare CPU too).
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXCHANGE, SYMBOL = "binance-futures", "BTCUSDT"
STARTUP_TIMEOUT_S = 900  # a loaded machine takes minutes to import Dagster and load the definitions
FINAL = {"COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "CANCELED"}


def month_list(first: str, count: int, *, offset: int = 0) -> list[str]:
    year, month = (int(part) for part in first.split("-"))
    out = []
    for step in range(offset, offset + count):
        index = year * 12 + month - 1 + step
        out.append(f"{index // 12:04d}-{index % 12 + 1:02d}")
    return out


def import_cost(tree: Path, repeat: int = 3) -> dict:
    """Wall seconds of a bare interpreter and of importing the definitions; the heaviest packages."""
    env = {**os.environ, "PYTHONPATH": str(tree)}

    def timed(code: str) -> float:
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], env=env, cwd=tree, check=True, capture_output=True)
        return time.perf_counter() - started

    bare = statistics.median(timed("pass") for _ in range(repeat))
    definitions = statistics.median(timed("import aperiodic_pipelines.defs.definitions") for _ in range(repeat))
    traced = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import aperiodic_pipelines.defs.definitions"],
        env=env, cwd=tree, check=True, capture_output=True, text=True,
    ).stderr
    by_package: dict[str, int] = collections.defaultdict(int)
    for line in traced.splitlines():
        match = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|(\s*)(\S+)", line)
        if match:
            by_package[match.group(4).strip().split(".")[0]] += int(match.group(1))  # self time, per top package
    heaviest = sorted(by_package.items(), key=lambda item: -item[1])[:10]
    return {"bare_s": bare, "definitions_s": definitions, "heaviest": heaviest}


def write_months(root: Path, months: list[str], trades: int, seed: int) -> None:
    """Each month's aggTrades and 1m klines zips (+ .CHECKSUM), as Binance publishes both; `months[0]` is the
    month before the backfill (an archive has history: the first backfilled month reads it)."""
    from aperiodic_pipelines.mirror.archives import write_binance_month
    from aperiodic_pipelines.mirror.klines import write_binance_klines_month
    from aperiodic_pipelines.synthetic import generate_tape

    next_id, price = 1, 60_000.0
    for index, month in enumerate(months):
        tape = generate_tape(month, trades, seed=seed + index, start_price=price, first_trade_id=next_id)
        write_binance_month(root, SYMBOL, month, tape)
        write_binance_klines_month(root, SYMBOL, month, tape)
        next_id = int(tape["trade_id"].max()) + 1
        price = float(tape["price"][-1])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_backfill(tree: Path, months: list[str], workdir: Path, mirror_url: str, timeout_s: float) -> dict:
    """Start webserver + daemon on `tree`'s code, submit the backfill, wait, and read the runs' event logs."""
    import requests

    home = workdir / "dagster_home"
    home.mkdir(parents=True)
    (home / "dagster.yaml").write_text((tree / "dagster.yaml").read_text())
    env = {
        **os.environ,
        "PYTHONPATH": str(tree),
        "DAGSTER_HOME": str(home),
        "APERIODIC_STORE": str(workdir / "store"),
        "APERIODIC_BINANCE_URL": mirror_url,
        "APERIODIC_CACHE_DIR": str(workdir / "cache"),
    }
    env.pop("APERIODIC_ALERT_WEBHOOK_URL", None)
    workspace = str(tree / "workspace.yaml")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    logs = [open(workdir / f"{name}.log", "wb") for name in ("webserver", "daemon")]  # noqa: SIM115
    processes = [
        subprocess.Popen([sys.executable, "-m", "dagster_webserver", "-h", "127.0.0.1", "-p", str(port), "-w",
                          workspace], cwd=workdir, env=env, stdout=logs[0], stderr=subprocess.STDOUT),
        subprocess.Popen([sys.executable, "-m", "dagster._daemon", "run", "-w", workspace],
                         cwd=workdir, env=env, stdout=logs[1], stderr=subprocess.STDOUT),
    ]
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            try:
                if requests.get(f"{url}/server_info", timeout=5).ok:
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline or any(p.poll() is not None for p in processes):
                raise SystemExit(f"webserver did not come up; see {workdir}/*.log")
            time.sleep(1)
        saved = dict(os.environ)
        os.environ.update(env)  # the CLI helpers resolve symbols and keys from the same environment
        try:
            from aperiodic_pipelines.operator.backfill import graphql, submit_backfill

            submitted = time.time()
            backfill_id = submit_backfill(url, EXCHANGE, SYMBOL, months)
            query = 'query($id: String!) { partitionBackfillOrError(backfillId: $id) { ... on PartitionBackfill { status } } }'
            status = ""
            deadline = time.monotonic() + timeout_s
            while status not in FINAL:
                if time.monotonic() > deadline:
                    raise SystemExit(f"backfill not finished after {timeout_s} s (status {status})")
                time.sleep(2)
                status = graphql(url, query, {"id": backfill_id})["partitionBackfillOrError"]["status"]
        finally:
            os.environ.clear()
            os.environ.update(saved)
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
        for handle in logs:
            handle.close()
    return {"status": status, "submitted": submitted, **read_runs(home, backfill_id)}


def read_runs(home: Path, backfill_id: str) -> dict:
    """Per-run phase durations from the instance's run records and event logs."""
    os.environ["DAGSTER_HOME"] = str(home)
    from dagster import DagsterInstance, RunsFilter

    phases: dict[str, list[float]] = collections.defaultdict(list)
    steps: dict[str, list[float]] = collections.defaultdict(list)
    ends, statuses, failures = [], collections.Counter(), []
    with DagsterInstance.get() as instance:
        records = instance.get_run_records(RunsFilter(tags={"dagster/backfill": backfill_id}))
        for record in records:
            statuses[record.dagster_run.status.value] += 1
            at: dict[str, float] = {}
            step_start: dict[str, float] = {}
            for entry in instance.all_logs(record.dagster_run.run_id):
                event = entry.dagster_event
                if event is None:
                    continue
                kind = event.event_type_value
                if kind in ("PIPELINE_STARTING", "PIPELINE_START", "PIPELINE_SUCCESS", "PIPELINE_FAILURE"):
                    at.setdefault(kind, entry.timestamp)
                elif kind == "STEP_START":
                    step_start[event.step_key] = entry.timestamp
                    at.setdefault("first_step", entry.timestamp)
                if kind in ("STEP_FAILURE", "PIPELINE_FAILURE") or (
                    kind == "ASSET_CHECK_EVALUATION" and not event.event_specific_data.passed
                ):
                    failures.append(f"{record.dagster_run.tags.get('dagster/partition', '?')} {kind} "
                                    f"{event.step_key or ''}: {(event.message or '')[:300]}")
                if kind in ("STEP_SUCCESS", "STEP_FAILURE") and event.step_key in step_start:
                    steps[event.step_key.split(".")[0]].append(entry.timestamp - step_start[event.step_key])
            created = record.create_timestamp.timestamp()
            end = at.get("PIPELINE_SUCCESS", at.get("PIPELINE_FAILURE"))
            if "PIPELINE_STARTING" in at:
                phases["queued"].append(at["PIPELINE_STARTING"] - created)
            if "PIPELINE_STARTING" in at and "PIPELINE_START" in at:
                phases["launch"].append(at["PIPELINE_START"] - at["PIPELINE_STARTING"])
            if "PIPELINE_START" in at and "first_step" in at:
                phases["to 1st step"].append(at["first_step"] - at["PIPELINE_START"])
            if "PIPELINE_START" in at and end:
                phases["run"].append(end - at["PIPELINE_START"])
            if end:
                ends.append(end)
    return {"runs": len(records), "statuses": dict(statuses), "failures": failures, "phases": dict(phases), "steps": dict(steps),
            "last_end": max(ends) if ends else None}


def report(label: str, imports: dict, result: dict | None, n_months: int) -> None:
    print(f"\n== {label}")
    print(f"python -c pass: {imports['bare_s']:.2f} s; import aperiodic_pipelines.defs.definitions: "
          f"{imports['definitions_s']:.2f} s (wall, median of 3)")
    print("heaviest packages at import (self time, -X importtime): " +
          ", ".join(f"{name} {us / 1e6:.2f} s" for name, us in imports["heaviest"]))
    if result is None:
        return
    elapsed = result["last_end"] - result["submitted"]
    print(f"backfill {result['status']}: {result['runs']} runs {result['statuses']} in {elapsed:.0f} s "
          f"-> {n_months / elapsed * 3600:.0f} partitions/hour")
    for failure in result["failures"]:
        print(f"  failed: {failure}")
    print(f"{'per run (s)':<22}{'median':>9}{'mean':>9}{'max':>9}")
    for name, values in [*result["phases"].items(), *sorted(result["steps"].items())]:
        print(f"{name:<22}{statistics.median(values):>9.2f}{statistics.fmean(values):>9.2f}{max(values):>9.2f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--months", type=int, default=24)
    parser.add_argument("--first-month", default="2022-01")
    parser.add_argument("--trades", type=int, default=20_000, help="trades per month (default 20,000)")
    parser.add_argument("--seed", type=int, default=40)
    parser.add_argument("--base", type=Path, help="an old checkout to measure the same way, after this one")
    parser.add_argument("--imports-only", action="store_true", help="only the import cost, no backfill")
    parser.add_argument("--timeout", type=float, default=3600)
    args = parser.parse_args(argv)

    from aperiodic_pipelines.mirror.http import ArchiveMirror

    trees = {"this checkout": ROOT, **({"--base": args.base.resolve()} if args.base else {})}
    months = month_list(args.first_month, args.months)
    with tempfile.TemporaryDirectory(prefix="backfill-bench-") as tmp:
        archives = Path(tmp) / "archives"
        if not args.imports_only:
            print(f"writing {len(months) + 1} months of {args.trades:,} trades (aggTrades + klines) ...", flush=True)
            write_months(archives, month_list(args.first_month, args.months + 1, offset=-1), args.trades, args.seed)
        with ArchiveMirror(archives) as mirror:
            for label, tree in trees.items():
                imports = import_cost(tree)
                result = None
                if not args.imports_only:
                    print(f"backfill of {months[0]}..{months[-1]} with {tree} ...", flush=True)
                    workdir = Path(tmp) / label.strip("-").replace(" ", "-")
                    workdir.mkdir()
                    started_cpu = os.times()
                    result = run_backfill(tree, months, workdir, mirror.url, args.timeout)
                    finished_cpu = os.times()
                    result["children_cpu_s"] = (finished_cpu.children_user - started_cpu.children_user
                                                + finished_cpu.children_system - started_cpu.children_system)
                report(f"{label} ({tree})", imports, result, len(months))
                if result:
                    print(f"CPU of webserver + daemon + runs: {result['children_cpu_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
