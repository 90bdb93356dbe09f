"""A dead run worker never holds the queue under the embedded default (issue 16 item 2).

The instance is the project's `dagster.yaml` (SQLite, `HealthCheckedDefaultRunLauncher`, run monitoring, run
retries) with one change: one run at a time, so a single stuck run would block every other. A real
`dagster-daemon` runs a test-only code location (tests/blocking_job.py) whose runs wait for a gate.

What Dagster already handles: a run worker killed while its code server lives is reported by the code server.
What it did not: a worker whose code server is gone (the code server crashed or was OOM-killed, and its
supervisor restarted it while the run carried on as an orphan) dies later; nobody reports it and the run stayed
STARTED for ever. Here the launcher's health check lets run monitoring fail it, run retries re-run it, and the
next queued run starts. The code server is a separate service on a Unix socket (as a supervisor would run
`dagster api grpc`), so the test can restart it the way a supervisor does.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from dagster._core.launcher import WorkerStatus

from aperiodic_pipelines.operator.launchers import (
    HealthCheckedDefaultRunLauncher,
    RunWorker,
    process_state,
    recorded_run_worker,
    worker_process_alive,
)
from tests.postgres_fixtures import create_instance_storage, write_instance_home

REPO = Path(__file__).resolve().parents[1]
BLOCKING_JOB = Path(__file__).resolve().parent / "blocking_job.py"
# What this test holds the project to: dagster.yaml polls every 10 s; a pass takes well under a second even on a
# loaded 2-core box. The assertion leaves room for a slow machine; the measured figure is printed.
DETECTION_BOUND_S = 60
STEP_TIMEOUT_S = 120


# --- the liveness check on real processes -------------------------------------------------------------------------


def test_a_live_process_is_alive_and_a_killed_or_recycled_pid_is_not() -> None:
    process = subprocess.Popen(["sleep", "60"])
    try:
        recorded = RunWorker(pid=process.pid, started_at=time.time())  # the worker's event comes after its start
        assert worker_process_alive(recorded)
        # A pid whose process started long after the worker's event is someone else's (a recycled pid).
        assert not worker_process_alive(RunWorker(pid=process.pid, started_at=time.time() - 3600))
        process.send_signal(signal.SIGKILL)
        deadline = time.monotonic() + 10
        while (state := process_state(process.pid)) is not None and state[0] != "Z":
            assert time.monotonic() < deadline, state
            time.sleep(0.05)
        assert not worker_process_alive(recorded), "a killed, not yet reaped (zombie) worker counts as dead"
    finally:
        process.kill()
        process.wait(timeout=10)
    assert not worker_process_alive(recorded), "a reaped worker's pid is free"


def _dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait(timeout=10)
    return process.pid


def test_which_workers_are_judged_by_their_pid(tmp_path: Path) -> None:
    from dagster import DagsterInstance
    from dagster._core.events import EngineEventData
    from dagster._core.launcher import WorkerStatus
    from dagster._core.storage.tags import GRPC_INFO_TAG
    from dagster._core.test_utils import create_run_for_test

    socket_tag = {GRPC_INFO_TAG: '{"host": "localhost", "socket": "/tmp/code-server.sock"}'}
    port_tag = {GRPC_INFO_TAG: '{"host": "localhost", "port": 4000}'}
    remote_tag = {GRPC_INFO_TAG: '{"host": "code.example", "port": 4000}'}
    with DagsterInstance.ephemeral(tempdir=str(tmp_path)) as instance:
        launcher = HealthCheckedDefaultRunLauncher()
        launcher.register_instance(instance)

        def run_with_worker(tags: dict, pid: int | None):
            run = create_run_for_test(instance, job_name="j", tags=tags)
            if pid is not None:  # what Dagster's run worker records as it starts
                instance.report_engine_event(f"Started process for run (pid: {pid}).", run, EngineEventData.in_process(pid))
            return run

        def status(run) -> WorkerStatus:
            return launcher.check_run_worker_health(run).status

        # Under a code server on a Unix socket (started by this machine's daemon) a dead pid is a dead worker.
        assert status(run_with_worker(socket_tag, _dead_pid())) == WorkerStatus.FAILED
        # Before the worker has recorded its pid, and on another host, nothing is judged.
        assert status(run_with_worker(socket_tag, None)) == WorkerStatus.RUNNING
        assert status(run_with_worker(remote_tag, _dead_pid())) == WorkerStatus.RUNNING
        # A local TCP code server may be another container (another pid namespace): a pid never seen is not judged,
        assert status(run_with_worker(port_tag, _dead_pid())) == WorkerStatus.RUNNING
        # a worker seen alive and then gone is.
        process = subprocess.Popen(["sleep", "60"])
        try:
            seen = run_with_worker(port_tag, process.pid)
            assert recorded_run_worker(instance, seen.run_id).pid == process.pid
            assert status(seen) == WorkerStatus.RUNNING
        finally:
            process.kill()
            process.wait(timeout=10)
        assert status(seen) == WorkerStatus.FAILED


def test_a_dead_worker_fails_its_run_status_before_its_failure_event(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Dagster's retry daemon drops a RUN_FAILURE whose run it reads as still STARTED; the launcher's failure is
    never readable that way."""
    from dagster import DagsterInstance, DagsterRunStatus
    from dagster._core.events import EngineEventData
    from dagster._core.storage.tags import GRPC_INFO_TAG
    from dagster._core.test_utils import create_run_for_test

    with DagsterInstance.ephemeral(tempdir=str(tmp_path)) as instance:
        launcher = HealthCheckedDefaultRunLauncher()
        launcher.register_instance(instance)
        run = create_run_for_test(instance, job_name="j", status=DagsterRunStatus.STARTED,
                                  tags={GRPC_INFO_TAG: '{"host": "localhost", "socket": "/tmp/code-server.sock"}'})
        pid = _dead_pid()
        instance.report_engine_event(f"Started process for run (pid: {pid}).", run, EngineEventData.in_process(pid))

        status_when_stored: list[DagsterRunStatus] = []
        store_event = instance.event_log_storage.store_event

        def recording_store_event(event) -> None:
            if event.is_dagster_event and event.get_dagster_event().is_run_failure:
                status_when_stored.append(instance.get_run_by_id(event.run_id).status)
            store_event(event)

        monkeypatch.setattr(instance.event_log_storage, "store_event", recording_store_event)
        verdict = launcher.check_run_worker_health(run)
        assert verdict.status == WorkerStatus.FAILED and f"run worker process {pid} is gone" in verdict.msg
        assert status_when_stored == [DagsterRunStatus.FAILURE], "one failure event, stored after the status"
        assert instance.get_run_by_id(run.run_id).status == DagsterRunStatus.FAILURE


# --- the daemon, the queue and the retry --------------------------------------------------------------------------


def _parent_pid(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rindex(")") + 2:].split()[1])


class CodeServer:
    """`dagster api grpc` for the blocking job on a Unix socket, restartable like a supervised service."""

    def __init__(self, socket_path: Path, cwd: Path, env: dict[str, str]) -> None:
        self.socket_path, self.cwd, self.env = socket_path, cwd, env
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.socket_path.unlink(missing_ok=True)  # a killed server leaves its socket file behind
        self.process = subprocess.Popen(
            [sys.executable, "-m", "dagster", "api", "grpc", "--socket", str(self.socket_path),
             "--python-file", str(BLOCKING_JOB), "--location-name", "blocking"],
            cwd=self.cwd, env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
        )
        from dagster._grpc.client import DagsterGrpcClient

        client = DagsterGrpcClient(socket=str(self.socket_path), host="localhost")
        deadline = time.monotonic() + STEP_TIMEOUT_S
        while True:
            assert self.process.poll() is None, "the code server exited"
            try:
                client.ping("up")
                return
            except Exception:  # not listening yet
                assert time.monotonic() < deadline, "the code server did not start"
                time.sleep(0.2)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def _location_updates(log: Path) -> int:
    """How many times the daemon's workspace watcher has reloaded the code location after a (re)start."""
    return log.read_text(errors="replace").count("LOCATION_UPDATED event for location blocking")


def _daemon_log_tail(log: Path, lines: int = 40) -> str:
    """The daemon's last lines without the queue's once-a-second "won't launch more", which would hide the rest."""
    kept = [line for line in log.read_text(errors="replace").splitlines() if "won't launch more" not in line]
    return "\n".join(kept[-lines:])


def _wait(predicate: Callable[[], object], timeout_s: float, what: str, daemon: subprocess.Popen, log: Path,
          explain: Callable[[], str] = lambda: "") -> object:
    deadline = time.monotonic() + timeout_s
    while True:
        assert daemon.poll() is None, f"the daemon exited while {what}: {_daemon_log_tail(log)}"
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s {what}; {explain()}\n"
                                 f"daemon log tail:\n{_daemon_log_tail(log)}")
        time.sleep(0.5)


@pytest.fixture
def one_run_at_a_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict]:
    """The project's instance config (SQLite) allowing one run at a time, a workspace of the blocking job, and a
    running `dagster-daemon`."""
    home = write_instance_home(tmp_path / "dagster_home", "sqlite")
    config = yaml.safe_load((home / "dagster.yaml").read_text())
    assert config["run_launcher"]["class"] == "HealthCheckedDefaultRunLauncher"
    config["concurrency"]["runs"]["max_concurrent_runs"] = 1
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))
    # A short path: Unix socket paths are limited to ~100 bytes.
    socket_dir = Path(tempfile.mkdtemp(prefix="aperiodic-cs-"))
    socket_path = socket_dir / "code.sock"
    workspace = tmp_path / "workspace.yaml"
    workspace.write_text(yaml.safe_dump({"load_from": [
        {"grpc_server": {"socket": str(socket_path), "location_name": "blocking"}},
    ]}))
    gate = tmp_path / "gate"
    gate.mkdir()
    env = {**os.environ, "DAGSTER_HOME": str(home)}
    monkeypatch.setenv("DAGSTER_HOME", str(home))  # this process reads the same instance
    create_instance_storage({"DAGSTER_HOME": str(home)})
    code_server = CodeServer(socket_path, tmp_path, env)
    log = tmp_path / "daemon.log"
    daemon = None
    try:
        code_server.start()
        with open(log, "wb") as log_handle:
            daemon = subprocess.Popen([sys.executable, "-m", "dagster._daemon", "run", "-w", str(workspace)],
                                      cwd=tmp_path, env=env, stdout=log_handle, stderr=subprocess.STDOUT)
        yield {"home": home, "workspace": workspace, "gate": gate, "env": env, "daemon": daemon, "log": log,
               "tmp": tmp_path, "code_server": code_server}
    finally:
        (gate / "open").touch()  # let every surviving worker finish
        if daemon is not None:
            daemon.terminate()
            try:
                daemon.wait(timeout=30)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait(timeout=10)
        code_server.stop()
        shutil.rmtree(socket_dir, ignore_errors=True)


def _launch(services: dict, name: str) -> None:
    """Submit a run of the blocking job as an operator would (`dagster job launch`); it queues for the daemon."""
    config = services["tmp"] / f"{name}.yaml"
    config.write_text(yaml.safe_dump(
        {"ops": {"wait_for_gate": {"config": {"gate_dir": str(services["gate"]), "name": name}}}}
    ))
    launched = subprocess.run(
        [sys.executable, "-m", "dagster", "job", "launch", "-w", str(services["workspace"]), "-j", "blocking_job",
         "-c", str(config)],
        cwd=services["tmp"], env=services["env"], capture_output=True, text=True, timeout=STEP_TIMEOUT_S,
    )
    assert launched.returncode == 0, launched.stderr[-3000:]


@pytest.mark.slow
def test_a_run_whose_worker_died_is_failed_retried_and_frees_the_queue(one_run_at_a_time: dict) -> None:
    from dagster import DagsterInstance, DagsterRunStatus

    services, gate = one_run_at_a_time, one_run_at_a_time["gate"]
    daemon, log = services["daemon"], services["log"]

    with DagsterInstance.from_config(str(services["home"])) as instance:

        def runs_now() -> str:
            """What the instance holds when a wait times out: every run's status and tags, the last engine
            messages of each, so a failure says which daemon did not act."""
            lines = []
            for run in instance.get_runs():
                messages = [e.message for e in instance.all_logs(run.run_id) if e.message][-6:]
                lines.append(f"run {run.run_id} {run.status.value} tags={dict(run.tags)} last={messages}")
            return "runs:\n" + "\n".join(lines)

        def wait(predicate: Callable[[], object], timeout_s: float, what: str) -> object:
            return _wait(predicate, timeout_s, what, daemon, log, runs_now)

        _launch(services, "first")
        _launch(services, "second")

        def pid_file(name: str) -> Path | None:
            return next(iter(gate.glob(f"{name}.*.pid")), None)

        first_file = wait(lambda: pid_file("first"), STEP_TIMEOUT_S, "waiting for the first run to start")
        first_id = first_file.name.split(".")[1]
        worker_pid = int(first_file.read_text())
        assert instance.get_run_by_id(first_id).status == DagsterRunStatus.STARTED
        # The launcher finds the worker from Dagster's own engine event, not from this test's pid file.
        assert recorded_run_worker(instance, first_id).pid == worker_pid
        (second,) = [r for r in instance.get_runs() if r.run_id != first_id]
        assert second.status == DagsterRunStatus.QUEUED, "one run at a time: the second waits"

        # The code server dies (a crash, an OOM kill) and its supervisor restarts it; the run carries on as an
        # orphan of the old one.
        code_server: CodeServer = services["code_server"]
        assert _parent_pid(worker_pid) == code_server.process.pid
        os.kill(code_server.process.pid, signal.SIGKILL)
        code_server.process.wait(timeout=30)
        updates_before = _location_updates(log)
        code_server.start()
        # Dagster's retry daemon gives a run up for good ("Failed to retry run", will_retry=false) if the run fails
        # while the daemon still sees the code location as unreachable. Its watcher notices the restarted server
        # within seconds; the worker dies after that, as in any real sequence of a crash and a later death.
        wait(lambda: _location_updates(log) > updates_before, STEP_TIMEOUT_S,
             "waiting for the daemon to see the restarted code server")
        assert worker_process_alive(recorded_run_worker(instance, first_id)), "the orphaned worker runs on"
        assert instance.get_run_by_id(first_id).status == DagsterRunStatus.STARTED

        # Then the worker dies. Nobody who launched it is left to report it.
        os.kill(worker_pid, signal.SIGKILL)
        killed_at = time.monotonic()
        wait(lambda: instance.get_run_by_id(first_id).status == DagsterRunStatus.FAILURE, DETECTION_BOUND_S,
             "waiting for run monitoring to fail the run")
        detected_s = time.monotonic() - killed_at
        print(f"dead worker detected {detected_s:.1f} s after kill -9")
        failure_messages = [e.message for e in instance.all_logs(first_id) if e.message]
        assert any(f"run worker process {worker_pid} is gone" in m for m in failure_messages), failure_messages[-5:]

        def retry_of_first():
            runs = [r for r in instance.get_runs() if r.tags.get("dagster/parent_run_id") == first_id]
            return runs[0] if runs else None

        retry = wait(retry_of_first, STEP_TIMEOUT_S, "waiting for run retries to re-run the failed run")
        assert retry.tags.get("dagster/retry_number") == "1"
        # The queue moves: the second run (queued first) starts in the slot the dead run held.
        wait(lambda: pid_file("second"), STEP_TIMEOUT_S, "waiting for the queued run to start")

        (gate / "open").touch()
        for run_id in (second.run_id, retry.run_id):
            wait(lambda run_id=run_id: instance.get_run_by_id(run_id).status in
                 (DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE), STEP_TIMEOUT_S, f"waiting for run {run_id}")
            assert instance.get_run_by_id(run_id).status == DagsterRunStatus.SUCCESS
