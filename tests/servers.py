"""Start a server process, wait until it answers, stop it: the one way the tests do it.

`running_server` logs the process to a file, waits for `ready()` until a deadline and fails at once, with the tail
of the log, when the process exits before it is ready (or when a process it is started beside, `watch`, does).
On leaving the block it sends `stop_signal`, waits, and kills what is still running after `stop_timeout_s`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

LOG_TAIL_CHARS = 3000


class ServerStartError(RuntimeError):
    """A server that exited before it was ready, or was not ready by its deadline."""


def log_tail(log_path: Path, chars: int = LOG_TAIL_CHARS) -> str:
    try:
        return log_path.read_text(errors="replace")[-chars:]
    except FileNotFoundError:
        return "(no log)"


def http_ok(url: str, timeout_s: float = 5) -> Callable[[], bool]:
    """A readiness probe: True once GET `url` answers 2xx."""
    import requests

    def probe() -> bool:
        try:
            return requests.get(url, timeout=timeout_s).ok
        except requests.RequestException:
            return False

    return probe


def await_ready(
    process: subprocess.Popen,
    ready: Callable[[], bool],
    *,
    name: str,
    log_path: Path,
    timeout_s: float,
    poll_s: float = 0.2,
    watch: Sequence[subprocess.Popen] = (),
) -> None:
    """Return once `ready()` is true; raise `ServerStartError` when `process` (or one of `watch`) exits first or
    the deadline passes."""
    deadline = time.monotonic() + timeout_s
    while True:
        for candidate in (process, *watch):
            if candidate.poll() is not None:
                which = name if candidate is process else f"{name}'s companion {candidate.args!r}"
                raise ServerStartError(f"{which} exited with {candidate.returncode}: {log_tail(log_path)}")
        if ready():
            return
        if time.monotonic() > deadline:
            raise ServerStartError(f"{name} was not ready within {timeout_s:g} s: {log_tail(log_path)}")
        time.sleep(poll_s)


def stop(
    process: subprocess.Popen, *, stop_signal: int = signal.SIGTERM, stop_timeout_s: float = 30, group: bool = False
) -> None:
    """Ask the process to stop; kill it when it has not after `stop_timeout_s`. With `group` (a process started
    with `start_new_session=True`), the signals go to its whole process group: servers that start servers."""

    def send(sig: int) -> None:
        with suppress(ProcessLookupError):
            os.killpg(process.pid, sig) if group else process.send_signal(sig)

    if process.poll() is None:
        send(stop_signal)
    try:
        process.wait(timeout=stop_timeout_s)
    except subprocess.TimeoutExpired:
        send(signal.SIGKILL)
        process.wait(timeout=10)
    if group:  # children that outlived their parent
        send(signal.SIGKILL)


@contextmanager
def running_server(
    command: Sequence[str],
    *,
    ready: Callable[[], bool],
    log_path: Path,
    name: str | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout_s: float = 60,
    poll_s: float = 0.2,
    watch: Sequence[subprocess.Popen] = (),
    stop_signal: int = signal.SIGTERM,
    stop_timeout_s: float = 30,
    **popen: Any,
) -> Iterator[subprocess.Popen]:
    """`command` running (stdout and stderr in `log_path`) and ready; stopped when the block ends."""
    name = name or Path(command[0]).name
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            list(command), cwd=cwd, env=dict(env) if env is not None else None, stdout=log,
            stderr=subprocess.STDOUT, **popen,
        )
        try:
            await_ready(process, ready, name=name, log_path=log_path, timeout_s=timeout_s, poll_s=poll_s, watch=watch)
            yield process
        finally:
            stop(process, stop_signal=stop_signal, stop_timeout_s=stop_timeout_s,
                 group=bool(popen.get("start_new_session")))
