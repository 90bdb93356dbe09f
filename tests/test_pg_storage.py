"""`PooledPostgresStorage` (dagster.postgres.yaml, deploy/celery/dagster.yaml) against a real PostgreSQL server:
storage calls reuse pooled connections instead of opening one each, in this process and in a process that opens
the instance from its reference (code servers, run workers)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from dagster import DagsterInstance, DagsterRunStatus, RunsFilter
from dagster._serdes import serialize_value

from aperiodic_pipelines.demo import patched_environ
from tests.postgres_fixtures import running_postgres, write_instance_home

REPO = Path(__file__).resolve().parents[1]
CALLS = 40


def connections_logged(server) -> int:
    """Connections the server has authorized so far, from its log (log_connections, set by `logging_connections`)."""
    return server.log.read_text(errors="replace").count("connection authorized")


def logging_connections(server) -> None:
    connection = server.connect()
    connection.autocommit = True  # ALTER SYSTEM cannot run in a transaction
    try:
        with connection.cursor() as cursor:
            cursor.execute("ALTER SYSTEM SET log_connections = 'authorization'")
            cursor.execute("SELECT pg_reload_conf()")
    finally:
        connection.close()


def wait_for_logged(server, at_least: int) -> int:
    deadline = time.monotonic() + 10
    while (count := connections_logged(server)) < at_least and time.monotonic() < deadline:
        time.sleep(0.2)
    return count


def test_storage_calls_reuse_pooled_connections_in_every_process(tmp_path: Path) -> None:
    home = write_instance_home(tmp_path / "home", "postgres")
    with running_postgres() as server, patched_environ({"DAGSTER_HOME": str(home), **server.environment()}):
        logging_connections(server)
        with DagsterInstance.get() as instance:
            assert type(instance._run_storage).__name__ == "PooledRunStorage"
            instance.get_runs_count()
            instance.all_logs("no-such-run")  # a first connection for the run and the event storage
            marker = wait_for_logged(server, 1)
            for _ in range(CALLS):
                instance.get_runs_count(RunsFilter(statuses=[DagsterRunStatus.QUEUED]))
                instance.all_logs("no-such-run")
            time.sleep(1)
            # Under dagster-postgres' own NullPool each of these 2 x CALLS calls opens a connection; pooled, none.
            assert connections_logged(server) - marker == 0

            # A process that opens the instance from its reference (as code servers and run workers do) pools too:
            # CALLS calls there open at most one connection more than none.
            ref = serialize_value(instance.get_ref())
            opened = [connections_opened_by_child(server, ref, calls) for calls in (0, CALLS)]
            assert opened[1] - opened[0] <= 1, opened


def connections_opened_by_child(server, ref: str, calls: int) -> int:
    script = (
        "import sys; from dagster import DagsterInstance; from dagster._serdes import deserialize_value\n"
        "with DagsterInstance.from_ref(deserialize_value(sys.stdin.read())) as instance:\n"
        "    assert type(instance._run_storage).__name__ == 'PooledRunStorage'\n"
        f"    for _ in range({calls}): instance.get_runs_count()\n"
    )
    marker = connections_logged(server)
    done = subprocess.run([sys.executable, "-c", script], input=ref, text=True, capture_output=True, timeout=120,
                          cwd=REPO, check=False)
    assert done.returncode == 0, done.stderr
    time.sleep(1)
    return connections_logged(server) - marker
