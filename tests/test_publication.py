"""Whole publication (issue 16 item 1, spec §4): real writer processes killed with SIGKILL at each step, two
writers of one partition at once, and a reader polling while a writer republishes, on a local directory and on
S3 (moto's server over HTTP on 127.0.0.1).

Invariant checked after every fault: the index names the whole old month or the whole new one (every variant
and interval of one generation), and every sha256 it shows is the sha256 of the bytes under the key it names.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import polars as pl
import pytest

from aperiodic_pipelines.domain.intervals import INTERVALS
from aperiodic_pipelines.domain.layout import flow_key
from aperiodic_pipelines.storage import LocalStore, ObjectStore, S3Store, store_from_uri
from aperiodic_pipelines.storage.index import (
    PublishedMonth,
    index_key,
    publish_month_bars,
    read_published_month,
    record_published_month,
)
from aperiodic_pipelines.storage.publication import (
    PublicationConflictError,
    is_version_key,
    lease_key,
    month_publication,
    month_versions_prefix,
    partition_lease,
    retention_seconds,
)
from tests.publication_writer import EXCHANGE, MONTH, NATIVE, SYMBOL, TIMESTAMPS, bars

WRITER = Path(__file__).with_name("publication_writer.py")
ROOT = Path(__file__).resolve().parents[1]
PARTITION = f"{EXCHANGE} {NATIVE} {MONTH}"
DEADLINE = 120.0


class Writer:
    """A writer process (tests/publication_writer.py) we can pause at a step, release, or SIGKILL."""

    def __init__(self, store_uri: str, generation: str, *args: str) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen(
            [sys.executable, str(WRITER), store_uri, generation, *args], env=env, cwd=ROOT,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self.steps: list[str] = []

    def wait_paused(self, step: str) -> None:
        deadline = time.monotonic() + DEADLINE
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise AssertionError(f"writer ended before {step!r}: {self.proc.wait(10)} {self.stderr()}")
            self.steps.append(line.strip())
            if line.strip() == f"PAUSED {step}":
                return
        raise AssertionError(f"writer did not reach {step!r} within {DEADLINE} s")

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        assert self.proc.wait(timeout=DEADLINE) == -signal.SIGKILL

    def release(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()

    def finish(self) -> tuple[int, str, str]:
        out, err = self.proc.communicate(timeout=DEADLINE)
        return self.proc.returncode, out, err

    def stderr(self) -> str:
        assert self.proc.stderr is not None
        return self.proc.stderr.read()[-3000:]


def run_writer(store_uri: str, generation: str, *args: str) -> tuple[int, str, str]:
    writer = Writer(store_uri, generation, *args)
    writer.release()  # nothing pauses; the newline is never read
    return writer.finish()


def generation_of(data: bytes) -> str:
    (generation,) = pl.read_parquet(io.BytesIO(data))["generation"].unique().to_list()
    return generation


def whole_month(store: ObjectStore) -> str | None:
    """The one generation the index describes (None: nothing published); fails on a mix or a wrong sha256."""
    entry = read_published_month(store, EXCHANGE, NATIVE, MONTH)
    if entry is None:
        return None
    assert sorted((f.timestamp, f.interval) for f in entry.files) == sorted(
        (t, i) for t in TIMESTAMPS for i in INTERVALS
    )
    generations = set()
    for f in entry.files:
        data = store.read_bytes(f.key)
        assert hashlib.sha256(data).hexdigest() == f.sha256, f"{f.key}: served bytes differ from the index"
        assert len(data) == f.size
        generations.add(generation_of(data))
    assert len(generations) == 1, f"the index mixes generations {sorted(generations)}"
    return generations.pop()


def stable_generations(store: ObjectStore) -> set[str]:
    """Generations a direct reader of the stable `flow/…` keys sees right now."""
    return {
        generation_of(store.read_bytes(flow_key(t, EXCHANGE, i, NATIVE, MONTH)))
        for t in TIMESTAMPS for i in INTERVALS if store.exists(flow_key(t, EXCHANGE, i, NATIVE, MONTH))
    }


@pytest.fixture(params=["local", "s3"])
def store_uri(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "local":
        yield str(tmp_path / "store")
    else:
        bucket = request.getfixturevalue("s3_bucket")
        yield f"s3://{bucket}/pre"


# Steps of one publication, in order, and whether the index already names the new month there.
KILL_POINTS = [
    ("leased", False),
    ("uploaded exchange/15m", False),  # 4 of 16 files uploaded
    ("uploaded true/1d", False),  # every file uploaded, nothing committed
    ("committing", False),
    ("committed", True),
    ("stable exchange/1h", True),  # 6 of 16 stable keys pointed at the new month
    ("retired", True),
    ("staging cleared", True),
]


@pytest.mark.parametrize(("step", "committed"), KILL_POINTS, ids=[s for s, _ in KILL_POINTS])
def test_writer_killed_at_each_step_leaves_a_whole_month(store_uri: str, step: str, committed: bool) -> None:
    store = store_from_uri(store_uri)
    assert run_writer(store_uri, "old", "--staged")[0] == 0
    assert whole_month(store) == "old" and stable_generations(store) == {"old"}

    writer = Writer(store_uri, "new", "--staged", "--pause", step, "--lease", "2")
    writer.wait_paused(step)
    writer.kill()  # SIGKILL at the step: no cleanup code runs, the S3 lease stays until it expires

    assert whole_month(store) == ("new" if committed else "old")
    if step.startswith("stable"):  # a direct reader of flow/… sees a mix until the rerun (documented)
        assert stable_generations(store) == {"old", "new"}

    # The rerun (after the dead writer's S3 lease expired) completes the publication whole.
    time.sleep(2.5 if isinstance(store, S3Store) else 0)
    code, out, err = run_writer(store_uri, "new", "--staged")
    assert code == 0, err[-3000:]
    assert whole_month(store) == "new" and stable_generations(store) == {"new"}
    entry = read_published_month(store, EXCHANGE, NATIVE, MONTH)
    assert all(is_version_key(f.key) for f in entry.files)
    # The old month's versions are retiring (URLs may name them), not deleted; nothing is left in staging.
    assert {r.key for r in entry.retiring} and all(store.exists(r.key) for r in entry.retiring)
    assert store.list("staging/") == []
    assert not store.exists(lease_key(EXCHANGE, NATIVE, MONTH))


def test_two_writers_of_one_partition_one_commits_the_other_fails_clearly(store_uri: str) -> None:
    store = store_from_uri(store_uri)
    first = Writer(store_uri, "first", "--staged", "--pause", "uploaded exchange/1m")
    first.wait_paused("uploaded exchange/1m")

    code, _out, err = run_writer(store_uri, "second", "--staged")
    assert code == 1
    assert f"PublicationConflictError: {PARTITION} is being published by another writer (pid {first.proc.pid}" in err
    assert read_published_month(store, EXCHANGE, NATIVE, MONTH) is None  # the loser committed nothing

    first.release()
    code, out, err = first.finish()
    assert code == 0, err[-3000:]
    assert "PUBLISHED first" in out
    # The second writer restaged while the first held the lease; the first verified every staged sha256 against
    # the manifest it read, so it published its own bytes or failed: here its own.
    assert whole_month(store) in {"first", "second"}


def test_a_commit_loses_when_the_index_changed_since_it_was_read(store_uri: str) -> None:
    """The conditional commit is the last line: even a writer whose lease was not respected cannot overwrite."""
    store = store_from_uri(store_uri)
    publish_month_bars(store, exchange=EXCHANGE, symbol=SYMBOL, native_symbol=NATIVE, month=MONTH, bars=bars("a"))
    with (
        pytest.raises(PublicationConflictError, match=f"{PARTITION} was published by another writer"),
        month_publication(store, EXCHANGE, NATIVE, MONTH) as publication,
    ):
        publication.keep(publication.previous.files)
        # Someone writes the index behind the lease's back (a tool, or a writer on a lost lease).
        record_published_month(store, PublishedMonth(EXCHANGE, SYMBOL, NATIVE, MONTH, ()))
        publication.commit(SYMBOL)
    assert read_published_month(store, EXCHANGE, NATIVE, MONTH).files == ()


def test_s3_lease_of_a_stalled_writer_is_taken_over_and_its_commit_refused(
    s3_bucket: str,  # noqa: F811
) -> None:
    """A writer stopped (SIGSTOP) past its lease loses it; when it resumes it must not commit over the new month."""
    store_uri = f"s3://{s3_bucket}/pre"
    store = store_from_uri(store_uri)
    stalled = Writer(store_uri, "stalled", "--lease", "1", "--pause", "uploaded true/1d")
    stalled.wait_paused("uploaded true/1d")
    stalled.proc.send_signal(signal.SIGSTOP)  # heartbeat and all: the lease is no longer renewed
    time.sleep(1.5)
    code, _out, err = run_writer(store_uri, "taker")
    assert code == 0, err[-3000:]
    assert whole_month(store) == "taker"
    stalled.proc.send_signal(signal.SIGCONT)
    stalled.release()
    code, _out, err = stalled.finish()
    assert code == 1 and "PublicationConflictError" in err and PARTITION in err
    assert whole_month(store) == "taker"


def test_reader_polling_while_a_writer_republishes_never_sees_a_mix(store_uri: str) -> None:
    store = store_from_uri(store_uri)
    assert run_writer(store_uri, "start")[0] == 0
    writer = Writer(store_uri, "g", "--rounds", "6")
    writer.release()
    seen: list[str] = []
    stable_mixes = 0
    failures: list[BaseException] = []

    def poll() -> None:
        nonlocal stable_mixes
        try:
            while writer.proc.poll() is None:
                seen.append(whole_month(store))  # asserts: one generation, every sha256 right
                stable_mixes += len(stable_generations(store)) > 1
        except BaseException as exc:  # reported in the main thread
            failures.append(exc)

    reader = threading.Thread(target=poll)
    reader.start()
    code, _out, err = writer.finish()
    reader.join(timeout=DEADLINE)
    assert not failures, failures[0]
    assert code == 0, err[-3000:]
    assert len(seen) >= 3 and len(set(seen)) >= 2, seen  # the reader saw republications happen
    assert whole_month(store) == "g5"
    # Versions of the six superseded months are all still there: URLs handed out may name them.
    entry = read_published_month(store, EXCHANGE, NATIVE, MONTH)
    assert len(entry.retiring) == 6 * len(entry.files)
    print(f"reads: {len(seen)}, direct-reader mixes of the stable keys: {stable_mixes}")


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_superseded_versions_retire_after_their_urls_expired(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if kind == "local":
        store: ObjectStore = LocalStore(tmp_path / "store")
    else:
        store = store_from_uri(f"s3://{request.getfixturevalue('s3_bucket')}/pre")

    def publish(generation: str, retain: float) -> PublishedMonth:
        return publish_month_bars(store, exchange=EXCHANGE, symbol=SYMBOL, native_symbol=NATIVE, month=MONTH,
                                  bars=bars(generation), retain_seconds=retain)

    a = publish("a", 1.0)
    b = publish("b", 1.0)  # a's versions retire at now + 1 s
    assert {r.key for r in b.retiring} == {f.key for f in a.files}
    assert all(store.exists(f.key) for f in a.files)  # a URL handed out a moment ago still works
    # An upload no entry names: a fresh one may be a live writer's (kept), an old one a dead writer's (deleted).
    orphan = f"{month_versions_prefix(EXCHANGE, NATIVE, MONTH)}exchange/1h/{'0' * 64}/{MONTH}.parquet"
    store.publish_file(_parquet(tmp_path), orphan)
    time.sleep(1.2)
    c = publish("c", 1.0)
    assert not any(store.exists(f.key) for f in a.files)  # due: deleted
    assert all(store.exists(f.key) for f in b.files) and {r.key for r in c.retiring} == {f.key for f in b.files}
    assert store.exists(orphan) is False  # older than the retention (1 s) and named by nobody
    # Republishing identical bytes reuses the current versions: nothing new retires (b's may be due by now).
    again = publish("c", 1.0)
    assert [f.key for f in again.files] == [f.key for f in c.files]
    assert {r.key for r in again.retiring} <= {f.key for f in b.files}
    assert all(store.exists(f.key) for f in c.files)


def _parquet(tmp_path: Path) -> Path:
    path = tmp_path / "orphan.parquet"
    pl.DataFrame({"x": [1]}).write_parquet(path)
    return path


def test_retention_covers_every_url_the_api_can_hand_out() -> None:
    from aperiodic_pipelines.domain.settings import ApiSettings

    # TTL 300 s + the API's reuse window (30 s) + its index cache (30 s) + 60 s margin.
    assert retention_seconds(ApiSettings()) == 420
    assert retention_seconds(ApiSettings(url_ttl_seconds=60, index_refresh_seconds=0)) == 60 + 6 + 0 + 60


def test_local_lease_is_released_by_a_killed_holder(tmp_path: Path) -> None:
    """flock dies with its holder: a SIGKILLed writer never blocks the next one."""
    store_uri = str(tmp_path / "store")
    writer = Writer(store_uri, "x", "--pause", "leased")
    writer.wait_paused("leased")
    store = store_from_uri(store_uri)
    with (
        pytest.raises(PublicationConflictError, match=f"{PARTITION} is being published by another writer"),
        partition_lease(store, EXCHANGE, NATIVE, MONTH),
    ):
        pass
    writer.kill()
    with partition_lease(store, EXCHANGE, NATIVE, MONTH) as lease:
        assert lease.partition == PARTITION
    assert store.list("") == []  # the lock file lives outside the listed keys


def test_index_readers_keep_working_on_entries_written_before_versions(tmp_path: Path) -> None:
    """An index entry naming the stable keys (written before this change) is served as is, and the next
    publication moves it to versions without deleting the stable keys."""
    store = LocalStore(tmp_path / "store")
    new = publish_month_bars(store, exchange=EXCHANGE, symbol=SYMBOL, native_symbol=NATIVE, month=MONTH,
                             bars=bars("legacy"))
    legacy_files = [
        {**asdict(f), "key": flow_key(f.timestamp, EXCHANGE, f.interval, NATIVE, MONTH)} for f in new.files
    ]
    store.path(index_key(EXCHANGE, NATIVE, MONTH)).write_text(json.dumps(  # the old format: no "retiring"
        {"exchange": EXCHANGE, "symbol": SYMBOL, "native_symbol": NATIVE, "month": MONTH, "files": legacy_files}
    ))
    for f in new.files:
        store.delete(f.key)
    assert whole_month(store) == "legacy"
    with month_publication(store, EXCHANGE, NATIVE, MONTH) as publication:
        publication.keep(publication.previous.files)
        entry = publication.commit(SYMBOL).month
    assert all(is_version_key(f.key) for f in entry.files) and entry.retiring == ()
    assert whole_month(store) == "legacy" and stable_generations(store) == {"legacy"}


# --- through the API: `serve`, a real HTTP reader polling while a writer republishes ---------------------


def expected_shas(generations: list[str], tmp_path: Path) -> dict[str, tuple[str, str, str]]:
    """sha256 → (generation, timestamp, interval) of every file the writer publishes (its bytes are deterministic)."""
    from aperiodic_pipelines.storage import bars_metadata, sha256_file, write_parquet_deterministic

    table = {}
    for generation in generations:
        for (timestamp, interval), frame in bars(generation).items():
            path = tmp_path / "expected.parquet"
            write_parquet_deterministic(frame, path, metadata=bars_metadata(
                exchange=EXCHANGE, symbol=SYMBOL, native_symbol=NATIVE, interval=interval, timestamp=timestamp,
                month=MONTH, row_count=frame.height,
            ))
            table[sha256_file(path)[1]] = (generation, timestamp, interval)
    return table


def test_api_reader_polling_during_republication_sees_whole_months_and_true_sha256(
    store_uri: str, tmp_path: Path
) -> None:
    import httpx

    from tests.api_fixtures import create_key, serve

    assert run_writer(store_uri, "start")[0] == 0
    known = expected_shas(["start", *(f"g{n}" for n in range(4))], tmp_path)
    env = {"APERIODIC_STORE": store_uri, "APERIODIC_API_KEYS": str(tmp_path / "keys.sqlite"),
           "APERIODIC_INDEX_REFRESH_SECONDS": "0", "APERIODIC_RATE_LIMIT_PER_SECOND": "1000",
           "APERIODIC_RATE_LIMIT_BURST": "1000"}
    key = create_key("poller", env)
    with serve(env, log_path=tmp_path / "serve.log") as base, httpx.Client(timeout=30) as http:
        headers = {"X-API-KEY": key}
        writer = Writer(store_uri, "g", "--rounds", "4")
        writer.release()
        rounds, generations_seen = 0, set()
        while writer.proc.poll() is None or rounds < 3:
            coverage = http.get(f"{base}/metadata/coverage", headers=headers,
                                params={"exchange": EXCHANGE, "symbol": SYMBOL})
            assert coverage.status_code == 200, coverage.text
            coverage = coverage.json()
            shas = [m["sha256"] for v in coverage["variants"] for m in v["months"]]
            assert len(shas) == len(TIMESTAMPS) * len(INTERVALS)
            generations = {known[s][0] for s in shas}  # every sha256 shown is one the writer published
            assert len(generations) == 1, f"coverage mixes {generations}"
            generations_seen |= generations
            for interval in ("1h", "1d"):
                listing = http.get(f"{base}/data/flow", headers=headers, params={
                    "timestamp": "exchange", "interval": interval, "exchange": EXCHANGE, "symbol": SYMBOL,
                    "start_date": "2024-01-01", "end_date": "2024-01-31",
                })
                assert listing.status_code == 200, listing.text
                (file,) = listing.json()["files"]
                data = http.get(file["url"]).raise_for_status().content
                sha = hashlib.sha256(data).hexdigest()
                assert known[sha][1:] == ("exchange", interval)
                assert f"/{sha}/{MONTH}.parquet" in file["url"]  # the URL names immutable bytes: what it serves
            rounds += 1
        code, _out, err = writer.finish()
    assert code == 0, err[-3000:]
    assert len(generations_seen) >= 2 and rounds >= 3, (rounds, generations_seen)
    print(f"API rounds: {rounds} (coverage + 2 listings + 2 downloads each), generations seen: {len(generations_seen)}")


def test_publishing_from_staging_hashes_each_staged_file_once_from_a_pin(tmp_path: Path, monkeypatch) -> None:
    """Each staged file is verified against its manifest and uploaded from one private pin (a hard link in a
    local store, no copy): hashed once before the upload, not again by the upload; no pin is left behind."""
    from aperiodic_pipelines.storage import publication as publication_module
    from aperiodic_pipelines.storage import staging
    from aperiodic_pipelines.storage.local import PINS_DIR
    from aperiodic_pipelines.storage.parquet import bars_metadata, write_parquet_deterministic
    from tests.publication_writer import frame

    store = LocalStore(tmp_path / "store")
    files = []
    for interval in INTERVALS:
        data = frame("g", "exchange", interval)
        path = tmp_path / f"{interval}.parquet"
        write_parquet_deterministic(data, path, metadata=bars_metadata(
            exchange=EXCHANGE, symbol=SYMBOL, native_symbol=NATIVE, interval=interval, timestamp="exchange",
            month=MONTH, row_count=data.height))
        files.append(staging.StagedFile(interval, path, data.height))
    manifest = staging.stage_variant(store, exchange=EXCHANGE, symbol=SYMBOL, native_symbol=NATIVE, month=MONTH,
                                     timestamp="exchange", files=files, checks_passed=True)
    verified, uploaded = [], []
    real_staging_hash, real_publication_hash = staging.sha256_file, publication_module.sha256_file
    monkeypatch.setattr(staging, "sha256_file", lambda p: verified.append(Path(p)) or real_staging_hash(p))
    monkeypatch.setattr(publication_module, "sha256_file", lambda p: uploaded.append(Path(p))
                        or real_publication_hash(p))

    outcome = staging.publish_month(store, exchange=EXCHANGE, symbol=SYMBOL, native_symbol=NATIVE, month=MONTH,
                                    timestamps=("exchange",))

    assert outcome.from_staging == ("exchange",) and outcome.problems == ()
    assert len(verified) == len(INTERVALS) and all(PINS_DIR in p.parts for p in verified)
    assert [p for p in uploaded if PINS_DIR in p.parts] == []  # the upload trusted the pin's verified hash
    assert not any((store.root / PINS_DIR).iterdir())
    published = {f.interval: f.sha256 for f in outcome.month.files}
    assert published == {entry["interval"]: entry["sha256"] for entry in manifest["files"]}
