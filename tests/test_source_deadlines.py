# ruff: noqa: F811 - pytest fixtures imported from tests.http_fixtures are redefined as arguments
"""Deadlines on upstreams (issue 16 item 4): a server that hangs or trickles fails the download, naming the URL,
within the deadline set through `HttpSettings`. Real servers on 127.0.0.1 (the archive mirror's fault switches)."""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import polars as pl
import pytest

from aperiodic_pipelines.domain.settings import HttpSettings
from aperiodic_pipelines.mirror.archives import write_binance_month
from aperiodic_pipelines.sources import fetch_month
from aperiodic_pipelines.sources.download import Downloader, DownloadError, RetryPolicy
from tests.http_fixtures import cached_files, tiny_tape

pytestmark = pytest.mark.slow  # starts a web server

BODY = bytes(range(256)) * 64  # 16 KB
SLACK = 1.5  # seconds: thread start-up and a loaded machine, on top of the deadline


def _publish(mirror_root: Path, name: str = "data/file.bin") -> str:
    path = mirror_root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(BODY)
    return name


def _downloader(config, *, slow_attempts: int = 1000, **settings: float) -> Downloader:
    """Stalls and trickles retried (almost) without limit unless `slow_attempts` says otherwise: the deadline
    alone then ends them."""
    http = HttpSettings(**{"backoff_seconds": 0.01, **settings})
    retry = replace(RetryPolicy.from_settings(http), slow_attempts=slow_attempts)
    return Downloader(config.cache_dir, http=http, retry=retry, progress=False)


def test_a_hanging_server_fails_within_the_deadline(archive_mirror, mirror_root, source_config) -> None:
    """Accepts, then says nothing: however many attempts are allowed, the deadline ends the download."""
    name = _publish(mirror_root)
    archive_mirror.stall_next(name, times=1000)
    downloader = _downloader(source_config, attempts=1000, read_timeout_seconds=0.4, deadline_seconds=2.0)
    url = f"{archive_mirror.url}/{name}"
    started = time.monotonic()
    with pytest.raises(DownloadError, match=rf"^GET {url} failed: no complete answer within the deadline of 2 s"):
        downloader.fetch(url, "stalled/file.bin")
    elapsed = time.monotonic() - started
    assert 1.9 <= elapsed < 2.0 + SLACK, elapsed
    assert 3 <= archive_mirror.count(name) <= 6  # one attempt per read timeout, then no more
    assert cached_files(source_config.cache_dir) == []


def test_a_hanging_server_costs_slow_attempts_times_the_read_timeout(archive_mirror, mirror_root,
                                                                    source_config) -> None:
    """The other bound, with the default policy: `slow_attempts` (2) silences of `read_timeout_seconds` each,
    however many attempts other failures get and however long the deadline."""
    name = _publish(mirror_root)
    archive_mirror.stall_next(name, times=5)
    http = HttpSettings(attempts=5, backoff_seconds=0.01, read_timeout_seconds=0.3, deadline_seconds=60.0)
    downloader = Downloader(source_config.cache_dir, http=http, progress=False)
    assert downloader.retry.slow_attempts == 2
    url = f"{archive_mirror.url}/{name}"
    started = time.monotonic()
    with pytest.raises(DownloadError, match=rf"^GET {url} failed: stalled or too slow 2 times in .* s \(read timeout "
                       r"0\.3 s, .*(Timeout|timed out)"):
        downloader.fetch(url, "stalled/file.bin")
    assert time.monotonic() - started < 2 * 0.3 + SLACK
    assert archive_mirror.count(name) == 2


def test_a_trickling_server_fails_on_the_minimum_throughput(archive_mirror, mirror_root, source_config) -> None:
    """One byte every 0.2 s never trips a 1 s read timeout; the throughput floor does, the deadline bounds it all."""
    name = _publish(mirror_root)
    archive_mirror.trickle_next(name, times=1000, interval=0.2)
    downloader = _downloader(
        source_config, attempts=1000, read_timeout_seconds=1.0, deadline_seconds=3.0, min_bytes_per_second=1024
    )
    url = f"{archive_mirror.url}/{name}"
    started = time.monotonic()
    with pytest.raises(DownloadError, match=rf"^GET {url} failed: .*deadline of 3 s.*too slow: \d+ bytes in"):
        downloader.fetch(url, "trickled/file.bin")
    assert time.monotonic() - started < 3.0 + SLACK
    assert cached_files(source_config.cache_dir) == []


def test_a_trickle_without_a_throughput_floor_still_meets_the_deadline(archive_mirror, mirror_root,
                                                                      source_config) -> None:
    name = _publish(mirror_root)
    archive_mirror.trickle_next(name, times=1000, interval=0.2)
    downloader = _downloader(
        source_config, attempts=1000, read_timeout_seconds=1.0, deadline_seconds=2.0, min_bytes_per_second=0
    )
    url = f"{archive_mirror.url}/{name}"
    started = time.monotonic()
    with pytest.raises(DownloadError, match=rf"^GET {url} failed: no complete answer within the deadline of 2 s"):
        downloader.fetch(url, "trickled/file.bin")
    assert time.monotonic() - started < 2.0 + SLACK
    assert archive_mirror.count(name) == 1  # one slow attempt took the whole deadline


def test_a_healthy_download_passes_under_the_same_settings(archive_mirror, mirror_root, source_config) -> None:
    name = _publish(mirror_root)
    downloader = _downloader(
        source_config, attempts=2, read_timeout_seconds=1.0, deadline_seconds=3.0, min_bytes_per_second=1024
    )
    got = downloader.fetch(f"{archive_mirror.url}/{name}", "healthy/file.bin")
    assert got.path.read_bytes() == BODY


def test_an_endless_checksum_answer_is_refused(archive_mirror, mirror_root, source_config) -> None:
    """A sidecar is ~100 bytes: a huge answer is not read into memory to the end."""
    name = "data/huge.CHECKSUM"
    (mirror_root / "data").mkdir(parents=True)
    (mirror_root / name).write_bytes(b"0" * (3 << 20))
    downloader = _downloader(source_config)
    with pytest.raises(DownloadError, match=r"huge\.CHECKSUM: answer larger than 1048576 bytes"):
        downloader.fetch_text(f"{archive_mirror.url}/{name}")


def test_the_registry_passes_http_settings_to_a_month_whose_checksum_hangs(archive_mirror, mirror_root,
                                                                          source_config, tmp_path) -> None:
    """Through `sources.fetch_month`: the settings reach the download; the error names the hanging URL."""
    write_binance_month(mirror_root, "BTCUSDT", "2024-01", tiny_tape())
    archive_mirror.stall_next("data/futures/um/monthly/aggTrades/BTCUSDT/*.CHECKSUM", times=1000)
    http = HttpSettings(attempts=5, backoff_seconds=0.01, read_timeout_seconds=0.3, deadline_seconds=30)
    started = time.monotonic()
    with pytest.raises(DownloadError, match=r"BTCUSDT-aggTrades-2024-01\.zip\.CHECKSUM failed: stalled or too slow "
                       r"2 times .*read timeout 0\.3 s"):
        fetch_month("binance-futures", "BTCUSDT", "2024-01", dest=tmp_path / "out.parquet", config=source_config,
                    http=http)
    assert time.monotonic() - started < 2 * 0.3 + SLACK
    archive_mirror.clear_faults()
    result = fetch_month("binance-futures", "BTCUSDT", "2024-01", dest=tmp_path / "out.parquet",
                         config=source_config, http=http)
    assert pl.read_parquet(result.path).height == tiny_tape().height


def test_settings_come_from_their_one_owner() -> None:
    http = HttpSettings.from_env({"APERIODIC_HTTP_DEADLINE_SECONDS": "90", "APERIODIC_HTTP_MIN_BYTES_PER_SECOND": "0",
                                  "APERIODIC_HTTP_READ_TIMEOUT_SECONDS": "7"})
    downloader = Downloader(Path("unused"), http=http)
    assert (downloader.http.deadline_seconds, downloader.http.min_bytes_per_second) == (90.0, 0.0)
    assert downloader.http.read_timeout_seconds == 7.0 and downloader.retry.attempts == 5


# --- Hyperliquid's S3 objects: the same deadline and throughput floor ------------------------------------------


class _SlowS3(threading.Thread):
    """An S3 endpoint on 127.0.0.1 whose GET answers the headers of a 16 KB object, then trickles its body one byte
    every `interval` seconds (HEAD and listing are not needed by `BucketReader._download`)."""

    def __init__(self, interval: float) -> None:
        super().__init__(daemon=True)
        stopping = self.stopping = threading.Event()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass

            def do_GET(self) -> None:  # noqa: N802
                self.send_response(200)
                self.send_header("Content-Length", str(len(BODY)))
                self.send_header("ETag", f'"{hashlib.md5(BODY, usedforsecurity=False).hexdigest()}"')
                self.end_headers()
                self.close_connection = True
                try:
                    for byte in BODY:
                        self.wfile.write(bytes([byte]))
                        self.wfile.flush()
                        if stopping.wait(interval):
                            return
                except OSError:
                    return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def run(self) -> None:
        self.server.serve_forever(0.05)

    def stop(self) -> None:
        self.stopping.set()
        self.server.shutdown()
        self.server.server_close()


def _s3_client(url: str):
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id="k", aws_secret_access_key="s",
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}, read_timeout=5, connect_timeout=2),
    )


@pytest.mark.parametrize(("interval", "floor", "why"), [(0.2, 1024, "too slow"), (2.0, 0, "stalled")])
def test_a_trickling_or_stalling_s3_object_fails_within_the_deadline(tmp_path: Path, interval: float, floor: int,
                                                                     why: str) -> None:
    from aperiodic_pipelines.domain.errors import AperiodicError
    from aperiodic_pipelines.sources.hyperliquid.bucket import BucketReader

    server = _SlowS3(interval)
    server.start()
    try:
        http = HttpSettings(read_timeout_seconds=0.5, deadline_seconds=3.0, min_bytes_per_second=floor)
        reader = BucketReader(_s3_client(server.url), "hl-test", tmp_path / "cache", http=http)
        etag = hashlib.md5(BODY, usedforsecurity=False).hexdigest()
        started = time.monotonic()
        with pytest.raises(AperiodicError, match=rf"^could not download s3://hl-test/node/0\.lz4: stalled, too slow or "
                           rf"out of time after .* s \(deadline 3 s.*{why}"):
            reader._download("node/0.lz4", etag, len(BODY))
        assert time.monotonic() - started < 3.0 + SLACK
        assert not list((tmp_path / "cache").rglob("*.part-*"))
    finally:
        server.stop()


def test_a_server_trickling_its_headers_fails_within_the_deadline(tmp_path: Path) -> None:
    """Status line and headers a byte at a time: no single read times out, the deadline's watchdog ends it."""
    import socket

    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                listener.settimeout(0.1)
                conn, _ = listener.accept()
            except OSError:
                continue
            with conn:
                conn.recv(65536)
                try:
                    for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"z" * 100_000:
                        conn.sendall(bytes([byte]))
                        if stop.wait(0.1):
                            return
                except OSError:
                    continue

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/slow-headers.bin"
        http = HttpSettings(attempts=1000, backoff_seconds=0.01, read_timeout_seconds=1.0, deadline_seconds=2.0)
        downloader = Downloader(tmp_path, http=http, retry=replace(RetryPolicy.from_settings(http), slow_attempts=1000),
                                progress=False)
        started = time.monotonic()
        with pytest.raises(DownloadError, match=rf"^GET {url} failed: no complete answer within the deadline of 2 s"):
            downloader.fetch(url, "slow-headers.bin")
        assert 1.9 <= time.monotonic() - started < 2.0 + SLACK
    finally:
        stop.set()
        thread.join(5)
        listener.close()
