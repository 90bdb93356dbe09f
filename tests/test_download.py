# ruff: noqa: F811 - pytest fixtures imported from tests.http_fixtures are redefined as arguments
"""Downloader against a real local HTTP server: retries, verification, cache and revalidation."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from aperiodic_pipelines.domain.errors import ChecksumMismatchError, CorruptArchiveError, NotPublishedError
from aperiodic_pipelines.mirror.archives import corrupt_zip, write_zip
from aperiodic_pipelines.mirror.http import ArchiveMirror
from aperiodic_pipelines.sources.download import (
    Downloader,
    DownloadError,
    RetryPolicy,
    check_zip,
    parse_checksum_sidecar,
)
from tests.http_fixtures import cached_files

pytestmark = pytest.mark.slow  # starts a web server


def _publish(root: Path, rel: str, payload: bytes) -> str:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(payload)
    return hashlib.sha256(payload).hexdigest()


PAYLOAD = os.urandom(300_000)


def test_download_is_verified_cached_and_not_fetched_again(archive_mirror, mirror_root, fast_downloader):
    digest = _publish(mirror_root, "a/file.bin", PAYLOAD)
    url = f"{archive_mirror.url}/a/file.bin"
    first = fast_downloader.fetch(url, "x/file.bin", expected_sha256=digest)
    assert (first.from_cache, first.size, first.sha256) == (False, len(PAYLOAD), digest)
    assert first.path.read_bytes() == PAYLOAD
    again = fast_downloader.fetch(url, "x/file.bin", expected_sha256=digest)
    assert again.from_cache and again.path == first.path
    assert archive_mirror.count("a/file.bin") == 1
    assert archive_mirror.count("a/file.bin", method="HEAD") == 0  # a published checksum needs no request


def test_concurrent_fetches_of_one_archive_download_it_once_and_never_evict_each_other(
    archive_mirror, mirror_root, fast_downloader
):
    """Runs of consecutive months fetch the same archive at once. The second waits for the first's fetch and
    then takes its verified file from the cache: it must not find it unverified and evict it while the first
    is opening it (seen in CI as "No such file or directory" on a just-downloaded zip)."""
    import threading
    import time

    digest = _publish(mirror_root, "k.bin", PAYLOAD)
    url = f"{archive_mirror.url}/k.bin"
    verifying, release = threading.Event(), threading.Event()
    results: dict = {}

    def slow_verify(_tmp: Path) -> None:
        verifying.set()
        release.wait(10)

    def fetch(name: str, **kwargs) -> None:
        results[name] = fast_downloader.fetch(url, "k.bin", expected_sha256=digest, **kwargs)

    first = threading.Thread(target=fetch, args=("first",), kwargs={"verify": slow_verify})
    first.start()
    assert verifying.wait(10)
    second = threading.Thread(target=fetch, args=("second",))
    second.start()
    time.sleep(0.5)
    assert second.is_alive()  # waiting for the first fetch, not downloading (or evicting) beside it
    release.set()
    first.join(10)
    second.join(10)
    assert not results["first"].from_cache and results["second"].from_cache
    assert results["second"].path == results["first"].path and results["first"].path.read_bytes() == PAYLOAD
    assert archive_mirror.count("k.bin") == 1


def test_without_checksum_a_head_request_revalidates_and_a_change_is_noticed(
    archive_mirror, mirror_root, fast_downloader
):
    _publish(mirror_root, "b.bin", PAYLOAD)
    url = f"{archive_mirror.url}/b.bin"
    fast_downloader.fetch(url, "b.bin")
    assert fast_downloader.fetch(url, "b.bin").from_cache
    assert archive_mirror.count("b.bin") == 1 and archive_mirror.count("b.bin", method="HEAD") == 1
    changed = PAYLOAD[::-1] + b"more"
    new_digest = _publish(mirror_root, "b.bin", changed)
    refreshed = fast_downloader.fetch(url, "b.bin")
    assert not refreshed.from_cache and refreshed.sha256 == new_digest
    assert refreshed.path.read_bytes() == changed
    assert archive_mirror.count("b.bin") == 2


def test_changed_published_checksum_triggers_a_new_download(archive_mirror, mirror_root, fast_downloader):
    digest = _publish(mirror_root, "c.bin", PAYLOAD)
    url = f"{archive_mirror.url}/c.bin"
    fast_downloader.fetch(url, "c.bin", expected_sha256=digest)
    new_digest = _publish(mirror_root, "c.bin", b"new content")
    got = fast_downloader.fetch(url, "c.bin", expected_sha256=new_digest)
    assert not got.from_cache and got.path.read_bytes() == b"new content"


@pytest.mark.parametrize("fault", ["fail", "drop", "truncate"])
def test_transient_faults_are_retried(archive_mirror, mirror_root, fast_downloader, fault):
    digest = _publish(mirror_root, "d.bin", PAYLOAD)
    if fault == "fail":
        archive_mirror.fail_next("d.bin", status=503, times=2)
    elif fault == "drop":
        archive_mirror.drop_next("d.bin", times=2)
    else:
        archive_mirror.truncate_next("d.bin", times=2)
    got = fast_downloader.fetch(f"{archive_mirror.url}/d.bin", "d.bin", expected_sha256=digest)
    assert got.path.read_bytes() == PAYLOAD
    assert archive_mirror.count("d.bin") == 3


@pytest.mark.parametrize("fault", ["fail", "truncate"])
def test_persistent_faults_end_in_one_error_and_nothing_cached(archive_mirror, mirror_root, source_config, fault):
    _publish(mirror_root, "e.bin", PAYLOAD)
    downloader = Downloader(source_config.cache_dir, retry=RetryPolicy(attempts=3, backoff_seconds=0.001))
    if fault == "fail":
        archive_mirror.fail_next("e.bin", status=500, times=10)
    else:
        archive_mirror.truncate_next("e.bin", times=10)
    with pytest.raises(DownloadError, match=r"e\.bin failed after 3 attempts"):
        downloader.fetch(f"{archive_mirror.url}/e.bin", "e.bin")
    assert archive_mirror.count("e.bin") == 3
    assert cached_files(source_config.cache_dir) == []


def test_missing_file_is_not_published(archive_mirror, fast_downloader, source_config):
    url = f"{archive_mirror.url}/nope/missing.zip"
    with pytest.raises(NotPublishedError, match=r"not published \(yet\).*nope/missing\.zip"):
        fast_downloader.fetch(url, "missing.zip")
    # asked again a few times (a CDN may 404 a file that appears seconds later), then final
    assert archive_mirror.count("nope/missing.zip") == fast_downloader.retry.not_found_attempts == 3
    assert cached_files(source_config.cache_dir) == []


def test_fact9_a_404_that_turns_into_the_file_is_retried(archive_mirror, mirror_root, fast_downloader):
    """OKX's CDN answers 404 for a file that appears seconds later: two 404s, then the file, is a download."""
    (mirror_root / "late.bin").write_bytes(b"here now")
    archive_mirror.fail_next("late.bin", status=404, times=2)
    got = fast_downloader.fetch(f"{archive_mirror.url}/late.bin", "late.bin")
    assert got.path.read_bytes() == b"here now"
    assert [status for _, path, status in archive_mirror.requests if path == "late.bin"] == [404, 404, 200]


def test_checksum_mismatch_names_file_and_both_digests(archive_mirror, mirror_root, fast_downloader, source_config):
    digest = _publish(mirror_root, "f.zip", PAYLOAD)
    wrong = "0" * 64
    with pytest.raises(ChecksumMismatchError) as raised:
        fast_downloader.fetch(f"{archive_mirror.url}/f.zip", "f.zip", expected_sha256=wrong)
    assert "f.zip" in str(raised.value) and wrong in str(raised.value) and digest in str(raised.value)
    assert cached_files(source_config.cache_dir) == []
    assert list(source_config.cache_dir.rglob("*.part")) == []


def test_stale_cache_entry_is_dropped_when_the_new_download_fails(archive_mirror, mirror_root, fast_downloader):
    digest = _publish(mirror_root, "g.zip", PAYLOAD)
    url = f"{archive_mirror.url}/g.zip"
    fast_downloader.fetch(url, "g.zip", expected_sha256=digest)
    with pytest.raises(ChecksumMismatchError):
        fast_downloader.fetch(url, "g.zip", expected_sha256="1" * 64)
    assert cached_files(fast_downloader.cache_dir) == []


def test_corrupt_zip_is_rejected_before_caching(archive_mirror, mirror_root, fast_downloader):
    path = mirror_root / "h.zip"
    write_zip(path, "h.csv", b"1,2,3\n" * 50_000)
    check_zip(path, name="h.zip")  # the intact archive passes
    corrupt_zip(path, update_checksum=False)
    with pytest.raises(CorruptArchiveError, match=r"h\.zip"):
        fast_downloader.fetch(f"{archive_mirror.url}/h.zip", "h.zip", verify=lambda p: check_zip(p, name="h.zip"))
    assert cached_files(fast_downloader.cache_dir) == []


def test_checksum_sidecar_parsing():
    digest = "ab" * 32
    assert parse_checksum_sidecar(f"{digest}  X-2024-01.zip\n", filename="X-2024-01.zip", url="u") == digest
    with pytest.raises(CorruptArchiveError, match="no sha256 line for X-2024-01.zip"):
        parse_checksum_sidecar(f"{digest}  other.zip\n", filename="X-2024-01.zip", url="u")
    with pytest.raises(CorruptArchiveError):
        parse_checksum_sidecar("<html>oops</html>", filename="X-2024-01.zip", url="u")


def test_mirror_serves_head_and_404(archive_mirror: ArchiveMirror, mirror_root):
    import requests

    _publish(mirror_root, "i.bin", b"abc")
    head = requests.head(f"{archive_mirror.url}/i.bin", timeout=5)
    assert head.status_code == 200 and head.headers["Content-Length"] == "3" and head.headers["ETag"]
    assert requests.get(f"{archive_mirror.url}/../etc/passwd", timeout=5).status_code == 404
    assert requests.get(f"{archive_mirror.url}/i.bin", timeout=5).content == b"abc"
