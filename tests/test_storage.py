"""Storage layer against a real directory and a real S3 API (moto's server over HTTP on 127.0.0.1)."""

from __future__ import annotations

import hashlib
import json
import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import boto3
import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest

from aperiodic_pipelines.domain.errors import StoreError
from aperiodic_pipelines.domain.settings import ConfigError
from aperiodic_pipelines.flow.grid import FLOW_COLUMNS, FLOW_SCHEMA, NULLABLE_FIELDS
from aperiodic_pipelines.storage import (
    LocalStore,
    ObjectNotFoundError,
    ObjectStore,
    S3Store,
    bars_metadata,
    flow_key,
    raw_key,
    read_parquet_metadata,
    seconds_key,
    store_from_uri,
    write_parquet_deterministic,
)
from aperiodic_pipelines.storage.local import PIN_STALE_SECONDS, PINS_DIR
from aperiodic_pipelines.storage.parquet import ROW_GROUP_SIZE


def bars_frame(rows: int = 1_000, seed: int = 3) -> pl.DataFrame:
    """A small frame shaped like flow bars: `time` first, floats with nulls, counts."""
    rng = np.random.default_rng(seed)
    start = datetime(2024, 1, 1, tzinfo=UTC)
    volume = rng.exponential(2.0, rows)
    return pl.DataFrame(
        {
            "time": pl.datetime_range(
                start, start + timedelta(minutes=rows - 1), "1m", time_zone="UTC", eager=True
            ),
            "taker_buy_volume": volume,
            "taker_buy_count": rng.integers(0, 50, rows),
            "flow_entropy": pl.Series(np.where(volume > 1.0, rng.random(rows), np.nan)).fill_nan(None),
        }
    )


def write_bars(path: Path, df: pl.DataFrame | None = None, *, interval: str = "1m") -> Path:
    df = bars_frame() if df is None else df
    meta = bars_metadata(
        exchange="binance-futures",
        symbol="perpetual-BTC-USDT:USDT",
        native_symbol="BTCUSDT",
        interval=interval,
        timestamp="exchange",
        month="2024-01",
        row_count=df.height,
        sources=[{"location": "http://127.0.0.1/BTCUSDT-aggTrades-2024-01.zip", "size": 10, "sha256": "ab" * 32}],
    )
    write_parquet_deterministic(df, path, metadata=meta)
    return path


def temp_leftovers(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.startswith(".tmp-")]


# --- keys --------------------------------------------------------------------------------------------------------


def test_keys_follow_the_published_layout() -> None:
    assert (
        flow_key("exchange", "binance-futures", "1h", "BTCUSDT", "2024-01")
        == "flow/exchange/binance-futures/1h/BTCUSDT/2024-01.parquet"
    )
    assert flow_key("true", "okx-perps", "1s", "BTC-USDT-SWAP", "2023-12") == (
        "flow/true/okx-perps/1s/BTC-USDT-SWAP/2023-12.parquet"
    )
    assert raw_key("hyperliquid-perps", "BTC", "2024-02") == "raw/trades/hyperliquid-perps/BTC/2024-02.parquet"
    assert seconds_key("exchange", "binance-futures", "BTCUSDT", "2024-01") == (
        "intermediate/seconds/exchange/binance-futures/BTCUSDT/2024-01.parquet"
    )


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("exchange", "binance-futures", "2h", "BTCUSDT", "2024-01"), "interval"),
        (("arrival", "binance-futures", "1h", "BTCUSDT", "2024-01"), "timestamp"),
        (("exchange", "binance-futures", "1h", "BTCUSDT", "2024-13"), "month"),
        (("exchange", "binance-futures", "1h", "BTCUSDT", "2024-1"), "month"),
        (("exchange", "binance-futures", "1h", "../etc", "2024-01"), "native symbol"),
        (("exchange", "binance/futures", "1h", "BTCUSDT", "2024-01"), "exchange"),
    ],
)
def test_keys_reject_bad_parts(args: tuple[str, ...], fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        flow_key(*args)


# --- deterministic parquet ---------------------------------------------------------------------------------------


def test_parquet_is_byte_identical_and_independent_of_chunking(tmp_path: Path) -> None:
    df = bars_frame()
    first = write_bars(tmp_path / "a.parquet", df).read_bytes()
    second = write_bars(tmp_path / "b.parquet", df).read_bytes()
    # The same rows built from two chunks must not change the bytes either.
    rechunked = pl.concat([df.head(400), df.tail(600)], rechunk=False)
    assert rechunked.n_chunks() > 1
    third = write_bars(tmp_path / "c.parquet", rechunked).read_bytes()
    assert first == second == third
    # ... while a different value does change them (the comparison above is not vacuous).
    changed = df.with_columns(pl.col("taker_buy_count") + 1)
    assert write_bars(tmp_path / "d.parquet", changed).read_bytes() != first
    assert temp_leftovers(tmp_path) == []


def test_parquet_metadata_columns_and_compression(tmp_path: Path) -> None:
    df = bars_frame()
    path = write_bars(tmp_path / "bars.parquet", df)
    meta = read_parquet_metadata(path)
    assert meta == read_parquet_metadata(path.read_bytes())
    assert meta["aperiodic.exchange"] == "binance-futures"
    assert meta["aperiodic.symbol"] == "perpetual-BTC-USDT:USDT"
    assert meta["aperiodic.interval"] == "1m"
    assert meta["aperiodic.timestamp"] == "exchange"
    assert meta["aperiodic.month"] == "2024-01"
    assert meta["aperiodic.row_count"] == str(df.height)
    assert meta["aperiodic.schema_version"] and meta["aperiodic.code_version"]
    assert '"sha256":"' + "ab" * 32 + '"' in meta["aperiodic.sources"]
    assert "ARROW:schema" not in meta

    parquet = pq.ParquetFile(path)
    assert parquet.schema_arrow.names == df.columns
    assert {parquet.metadata.row_group(0).column(i).compression for i in range(len(df.columns))} == {"ZSTD"}
    back = pl.read_parquet(path)
    assert back.equals(df)
    assert back.schema == df.schema


def test_parquet_pages_are_cut_by_size_not_every_20000_rows(tmp_path: Path) -> None:
    """pyarrow's default also cuts a page every 20,000 rows: 14 pages (14 zstd calls, 14 headers) per column of a
    262,144-row row group. Ours are cut at 1 MB only: two pages of 131,072 doubles."""
    rows = ROW_GROUP_SIZE
    rng = np.random.default_rng(5)
    time = pl.datetime_range(datetime(2024, 1, 1), datetime(2024, 1, 1) + timedelta(seconds=rows - 1), "1s",
                             time_unit="us", eager=True)
    frame = pl.DataFrame([
        time.alias(name) if name == "time" else pl.repeat(None if name in NULLABLE_FIELDS else 0, rows,
                                                           dtype=dtype, eager=True).alias(name)
        for name, dtype in FLOW_SCHEMA.items()
    ]).with_columns(pl.Series("taker_buy_volume", rng.normal(0, 1, rows) * (rng.random(rows) < 0.05)))
    path = tmp_path / "pages.parquet"
    write_parquet_deterministic(frame, path, metadata={"k": "v"})
    chunk = pq.ParquetFile(path).metadata.row_group(0).column(FLOW_COLUMNS.index("taker_buy_volume"))
    assert chunk.num_values == rows
    # A REQUIRED column, uncompressed: the 8-byte values plus each page's header (~25 bytes; 14 would be ~350).
    headers = chunk.total_uncompressed_size - 8 * rows
    assert 0 < headers < 100, headers
    assert pl.read_parquet(path).equals(frame)


def test_parquet_is_scratch_written_whole_without_fsync(tmp_path: Path, monkeypatch) -> None:
    """Parquet files are scratch, copied into the store, which fsyncs the copy: the write skips its own fsyncs,
    gives the same bytes as before, and still never appears half-written."""
    import os

    from aperiodic_pipelines import atomic

    df = bars_frame()
    first = write_bars(tmp_path / "first.parquet", df)
    synced = []
    monkeypatch.setattr(atomic.os, "fsync", lambda fd: synced.append(fd))
    scratch = tmp_path / "scratch.parquet"
    write_parquet_deterministic(df, scratch, metadata=read_parquet_metadata(first))
    assert synced == [] and scratch.read_bytes() == first.read_bytes()
    with pytest.raises(TypeError):
        write_parquet_deterministic(df, scratch, metadata={"row_count": 3})  # type: ignore[dict-item]
    assert scratch.read_bytes() == first.read_bytes()  # the failed rewrite left the file as it was
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(atomic.TEMP_PREFIX)) == []
    assert os.stat(scratch).st_mode & 0o777 == 0o644


def test_parquet_metadata_must_be_strings(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="row_count"):
        write_parquet_deterministic(bars_frame(), tmp_path / "x.parquet", metadata={"row_count": 3})  # type: ignore[dict-item]
    assert list(tmp_path.iterdir()) == []


# --- footers (spec §4 as amended, issue 14 item 5) ----------------------------------------------------------------

HOURLY_SOURCES = [  # a Hyperliquid month: one object per hour of two months
    {"location": f"s3://hl-mainnet-node-data/node_fills_by_block/hourly/{d:03d}/{h}.lz4", "size": 1_000_000 + d,
     "sha256": hashlib.sha256(f"{d}/{h}".encode()).hexdigest()}
    for d in range(61) for h in range(24)
]


def daily_bars_file(path: Path, sources: list[dict], **extra: str) -> Path:
    frame = bars_frame(rows=30)
    metadata = bars_metadata(
        exchange="hyperliquid-perps", symbol="perpetual-BTC-USDC:USDC", native_symbol="BTC", interval="1d",
        timestamp="exchange", month="2024-01", row_count=frame.height, sources=sources, **extra,
    )
    write_parquet_deterministic(frame, path, metadata=metadata)
    return path


def test_footer_lists_up_to_32_sources_inline(tmp_path: Path) -> None:
    path = daily_bars_file(tmp_path / "a.parquet", HOURLY_SOURCES[:32])
    meta = read_parquet_metadata(path)
    assert json.loads(meta["aperiodic.sources"]) == HOURLY_SOURCES[:32]
    assert meta["aperiodic.sources_count"] == "32"
    assert "aperiodic.sources_key" not in meta and "aperiodic.sources_sha256" not in meta


def test_footer_names_a_lineage_sidecar_beyond_32_sources_and_stores_nothing_twice(tmp_path: Path) -> None:
    from aperiodic_pipelines.storage.lineage import publish_sources_lineage, read_sources_lineage

    path = daily_bars_file(tmp_path / "a.parquet", HOURLY_SOURCES)
    meta = read_parquet_metadata(path)
    digest = hashlib.sha256(
        json.dumps(HOURLY_SOURCES, sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()
    assert meta["aperiodic.sources_count"] == str(len(HOURLY_SOURCES)) == "1464"
    assert meta["aperiodic.sources_sha256"] == digest
    assert meta["aperiodic.sources_key"] == f"lineage/sources/{digest}.json"
    assert "aperiodic.sources" not in meta
    # The Arrow schema pyarrow stores in the footer carries no copy of our metadata (it held 343 KB of it).
    raw = pq.read_metadata(path).metadata
    assert b"aperiodic" not in raw[b"ARROW:schema"] and len(raw[b"ARROW:schema"]) < 2_000
    assert pq.read_schema(path).metadata is None
    assert path.stat().st_size < 20_000  # 30 rows: was 611 KB with 1,460 sources inline twice
    # The sidecar: published before the files, named by its digest, its bytes hash to it, it reads back.
    store = LocalStore(tmp_path / "store")
    assert publish_sources_lineage(store, HOURLY_SOURCES[:32]) is None  # inline: no sidecar
    key = publish_sources_lineage(store, HOURLY_SOURCES)
    assert key == meta["aperiodic.sources_key"] and store.list("lineage/") == [key]
    assert hashlib.sha256(store.read_bytes(key)).hexdigest() == digest
    assert read_sources_lineage(store, meta) == HOURLY_SOURCES
    assert publish_sources_lineage(store, HOURLY_SOURCES) == key  # idempotent
    store.path(key).write_text("[]")
    with pytest.raises(StoreError, match="does not hash to the digest"):
        read_sources_lineage(store, meta)


def test_footer_is_byte_identical_across_processes_and_records_the_day(tmp_path: Path) -> None:
    import subprocess
    import sys

    script = (
        "import sys; from pathlib import Path; from tests.test_storage import HOURLY_SOURCES, daily_bars_file; "
        "daily_bars_file(Path(sys.argv[1]), HOURLY_SOURCES, day='2024-01-05')"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    for name in ("a", "b"):
        done = subprocess.run([sys.executable, "-c", script, str(tmp_path / f"{name}.parquet")], env=env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "a.parquet").read_bytes() == (tmp_path / "b.parquet").read_bytes()
    assert read_parquet_metadata(tmp_path / "a.parquet")["aperiodic.day"] == "2024-01-05"
    assert "aperiodic.day" not in read_parquet_metadata(daily_bars_file(tmp_path / "c.parquet", []))
    with pytest.raises(ValueError, match="not in month '2024-01'"):
        daily_bars_file(tmp_path / "d.parquet", [], day="2024-02-01")
    with pytest.raises(ValueError, match="day must look like"):
        daily_bars_file(tmp_path / "d.parquet", [], day="2024-1-5")


# --- local store -------------------------------------------------------------------------------------------------


def test_local_round_trip_listing_and_delete(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    assert isinstance(store, ObjectStore)
    assert store.list() == []
    key = flow_key("exchange", "binance-futures", "1m", "BTCUSDT", "2024-01")
    staged = write_bars(tmp_path / "staged.parquet")
    published = store.publish_file(staged, key)

    assert published.key == key
    assert published.uri == str(tmp_path / "store" / key) == store.uri(key)
    assert published.size == staged.stat().st_size
    assert published.sha256 == hashlib.sha256(staged.read_bytes()).hexdigest()
    assert (tmp_path / "store" / key).read_bytes() == staged.read_bytes()
    assert store.read_bytes(key) == staged.read_bytes()
    with store.open_read(key) as fh:
        assert fh.read(4) == b"PAR1"
    assert read_parquet_metadata(store.read_bytes(key))["aperiodic.interval"] == "1m"

    downloaded = store.download(key, tmp_path / "dl" / "x.parquet")
    assert downloaded.read_bytes() == staged.read_bytes()

    other = flow_key("exchange", "binance-futures", "1h", "BTCUSDT", "2024-01")
    store.publish_file(staged, other)
    (tmp_path / "notes.txt").write_text("hello")
    store.publish_file(tmp_path / "notes.txt", "a/notes.txt", content_type="text/plain")
    assert store.list() == sorted([key, other, "a/notes.txt"])
    assert store.list("flow/exchange/binance-futures/1h/") == [other]
    assert store.list("flow/exchange/binance-futures/1") == sorted([key, other])
    assert store.list("flow/true/") == []
    assert store.exists(key) and not store.exists("flow/nothing.parquet")

    store.delete(key)
    assert not store.exists(key)
    store.delete(key)  # deleting an absent key is not an error, as on S3
    with pytest.raises(ObjectNotFoundError, match="2024-01.parquet"):
        store.read_bytes(key)
    with pytest.raises(ObjectNotFoundError):
        store.download(key, tmp_path / "dl" / "y.parquet")
    assert not (tmp_path / "dl" / "y.parquet").exists()
    assert temp_leftovers(tmp_path) == []


def test_local_rejects_keys_outside_the_root(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    for key in ("../escape.parquet", "/abs.parquet", "a//b", ""):
        with pytest.raises(StoreError, match="invalid object key"):
            store.exists(key)
    with pytest.raises(StoreError, match="invalid list prefix"):
        store.list("../")


def test_local_failed_publishes_leave_previous_object_and_no_temp_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = LocalStore(tmp_path / "store")
    key = flow_key("exchange", "okx-perps", "1h", "BTC-USDT-SWAP", "2024-01")
    good = write_bars(tmp_path / "good.parquet")
    store.publish_file(good, key)
    before = store.read_bytes(key)

    # 1. A truncated parquet file is refused before anything is written.
    truncated = tmp_path / "truncated.parquet"
    truncated.write_bytes(good.read_bytes()[:-100])
    with pytest.raises(StoreError, match="not a complete parquet file"):
        store.publish_file(truncated, key)
    # 2. A missing source file.
    with pytest.raises(StoreError, match="is not a file"):
        store.publish_file(tmp_path / "missing.parquet", key)
    # 3. The process fails after the new bytes were fully written but before the swap.
    newer = write_bars(tmp_path / "newer.parquet", bars_frame(seed=4))

    def refuse_replace(src: str, dst: str) -> None:
        raise OSError("disk went away")

    monkeypatch.setattr(os, "replace", refuse_replace)
    with pytest.raises(OSError, match="disk went away"):
        store.publish_file(newer, key)
    monkeypatch.undo()

    assert store.read_bytes(key) == before
    assert temp_leftovers(tmp_path / "store") == []
    assert store.list() == [key]


def test_atomic_write_replaces_whole_or_not_at_all(tmp_path: Path) -> None:
    from aperiodic_pipelines.storage.atomic import atomic_path, atomic_write

    target = tmp_path / "d" / "file.bin"
    with atomic_write(target) as out:
        out.write(b"first")
    assert target.read_bytes() == b"first" and oct(target.stat().st_mode & 0o777) == "0o644"
    with pytest.raises(RuntimeError, match="writer failed"), atomic_write(target) as out:
        out.write(b"half of the sec")
        raise RuntimeError("writer failed")
    assert target.read_bytes() == b"first"  # untouched
    with atomic_path(target, suffix=".parquet") as tmp:
        assert tmp.parent == target.parent and tmp.name.startswith(".tmp-") and tmp.name.endswith(".parquet")
        tmp.write_bytes(b"second")
    assert target.read_bytes() == b"second"
    assert temp_leftovers(tmp_path) == []


# --- S3 store ----------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_s3_round_trip_exact_keys_and_listing(s3_client, s3_bucket: str, tmp_path: Path) -> None:  # noqa: F811
    store = S3Store(s3_client, s3_bucket, "platform/v1/")
    assert isinstance(store, ObjectStore)
    key = flow_key("exchange", "hyperliquid-perps", "5m", "BTC", "2024-02")
    staged = write_bars(tmp_path / "staged.parquet", interval="5m")
    published = store.publish_file(staged, key, content_type="application/vnd.apache.parquet")

    assert published.uri == f"s3://{s3_bucket}/platform/v1/{key}" == store.uri(key)
    assert published.sha256 == hashlib.sha256(staged.read_bytes()).hexdigest()
    raw = s3_client.list_objects_v2(Bucket=s3_bucket)["Contents"]
    assert [o["Key"] for o in raw] == [f"platform/v1/{key}"]
    head = s3_client.head_object(Bucket=s3_bucket, Key=f"platform/v1/{key}")
    assert head["ContentType"] == "application/vnd.apache.parquet"
    assert head["Metadata"]["sha256"] == published.sha256

    assert store.read_bytes(key) == staged.read_bytes()
    assert read_parquet_metadata(store.read_bytes(key))["aperiodic.interval"] == "5m"
    with store.open_read(key) as body:
        assert body.read(4) == b"PAR1"
    assert store.download(key, tmp_path / "dl" / "b.parquet").read_bytes() == staged.read_bytes()

    other = raw_key("hyperliquid-perps", "BTC", "2024-02")
    store.publish_file(staged, other)
    assert store.list() == sorted([key, other])
    assert store.list("raw/") == [other]
    assert store.exists(other) and not store.exists("raw/none.parquet")
    store.delete(other)
    assert store.list() == [key]
    with pytest.raises(ObjectNotFoundError, match=f"s3://{s3_bucket}/platform/v1/raw/none.parquet"):
        store.read_bytes("raw/none.parquet")
    with pytest.raises(ObjectNotFoundError):
        store.download("raw/none.parquet", tmp_path / "dl" / "none.parquet")
    assert temp_leftovers(tmp_path) == []


@pytest.mark.slow
def test_s3_multipart_publish_round_trip(s3_client, s3_bucket: str, tmp_path: Path) -> None:  # noqa: F811
    store = S3Store(s3_client, s3_bucket, multipart_threshold=6 * 2**20, part_size=5 * 2**20)
    big = tmp_path / "big.bin"
    big.write_bytes(np.random.default_rng(1).bytes(11 * 2**20 + 123))  # three parts
    published = store.publish_file(big, "blobs/big.bin")
    assert published.size == big.stat().st_size
    assert store.read_bytes("blobs/big.bin") == big.read_bytes()
    assert s3_client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []


@pytest.mark.slow
def test_s3_failed_publishes_leave_previous_object_and_no_parts(
    s3_client, s3_bucket: str, tmp_path: Path  # noqa: F811
) -> None:
    store = S3Store(s3_client, s3_bucket, "p", multipart_threshold=6 * 2**20, part_size=5 * 2**20)
    key = flow_key("exchange", "binance-futures", "1s", "BTCUSDT", "2024-01")
    good = write_bars(tmp_path / "good.parquet")
    store.publish_file(good, key)

    # A failure in the middle of a multipart upload: the second part never arrives.
    calls = {"parts": 0}

    def fail_second_part(params, **kwargs) -> None:  # noqa: ANN001 - botocore event signature
        calls["parts"] += 1
        if calls["parts"] == 2:
            raise ConnectionError("network dropped mid-upload")

    big = tmp_path / "big.parquet"
    big.write_bytes(b"PAR1" + np.random.default_rng(2).bytes(11 * 2**20) + b"PAR1")
    s3_client.meta.events.register("before-call.s3.UploadPart", fail_second_part)
    try:
        with pytest.raises(ConnectionError, match="mid-upload"):
            store.publish_file(big, key)
    finally:
        s3_client.meta.events.unregister("before-call.s3.UploadPart", fail_second_part)
    assert calls["parts"] == 2
    assert s3_client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []

    # An invalid parquet file is refused before any request.
    bogus = tmp_path / "bogus.parquet"
    bogus.write_bytes(b"not parquet at all")
    with pytest.raises(StoreError, match="not a complete parquet file"):
        store.publish_file(bogus, key)

    assert store.read_bytes(key) == good.read_bytes()
    assert store.list() == [key]


@pytest.mark.slow
def test_s3_errors_name_the_object_and_repr_hides_credentials(moto_endpoint: str) -> None:  # noqa: F811
    s3_endpoint = moto_endpoint
    client = boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        region_name="us-east-1",
        aws_access_key_id="AKIAVERYSECRETID",
        aws_secret_access_key="very-secret-key-value",
    )
    store = S3Store(client, "no-such-bucket-here", "x")
    text = repr(store) + str(store)
    assert "no-such-bucket-here" in text and s3_endpoint in text
    assert "AKIAVERYSECRETID" not in text and "very-secret-key-value" not in text
    with_userinfo = boto3.client(
        "s3", endpoint_url=s3_endpoint.replace("http://", "http://user:hunter2@"), region_name="us-east-1"
    )
    assert "hunter2" not in repr(S3Store(with_userinfo, "b-1"))
    with pytest.raises(StoreError, match="s3://no-such-bucket-here/x/") as excinfo:
        store.list("flow/")
    assert "very-secret-key-value" not in str(excinfo.value)


# --- store_from_uri ----------------------------------------------------------------------------------------------


def test_store_from_uri_local(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("APERIODIC_STORE", raising=False)
    default = store_from_uri()
    assert isinstance(default, LocalStore) and default.root == tmp_path / "data"
    monkeypatch.setenv("APERIODIC_STORE", str(tmp_path / "elsewhere"))
    assert store_from_uri().root == tmp_path / "elsewhere"  # type: ignore[attr-defined]
    assert store_from_uri(f"file://{tmp_path}/f").root == tmp_path / "f"  # type: ignore[attr-defined]
    with pytest.raises(StoreError, match="unsupported scheme 'gs'"):
        store_from_uri("gs://bucket/x")
    with pytest.raises(StoreError, match="no bucket"):
        store_from_uri("s3:///x")
    # Settings come from domain.settings (the one reader of APERIODIC_*), checked there.
    monkeypatch.setenv("APERIODIC_STALE_WRITE_SECONDS", "12.5")
    assert store_from_uri().stale_after == 12.5  # type: ignore[attr-defined]
    monkeypatch.setenv("APERIODIC_STALE_WRITE_SECONDS", "soon")
    with pytest.raises(ConfigError, match="APERIODIC_STALE_WRITE_SECONDS='soon'"):
        store_from_uri()
    from aperiodic_pipelines.domain.settings import StoreSettings

    explicit = store_from_uri(settings=StoreSettings(uri=str(tmp_path / "s"), stale_write_seconds=5))
    assert explicit.root == tmp_path / "s" and explicit.stale_after == 5  # type: ignore[attr-defined]


@pytest.mark.slow
def test_store_from_uri_s3_uses_endpoint_from_environment(
    s3_client, s3_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    # aws_env (via s3_client) set AWS_ENDPOINT_URL_S3 to the moto server and cleared AWS_ENDPOINT_URL.
    monkeypatch.setenv("APERIODIC_STORE", f"s3://{s3_bucket}/team/prefix")
    store = store_from_uri()
    assert isinstance(store, S3Store)
    assert (store.bucket, store.prefix) == (s3_bucket, "team/prefix")
    store.publish_file(write_bars(tmp_path / "x.parquet"), "k/x.parquet")
    assert [o["Key"] for o in s3_client.list_objects_v2(Bucket=s3_bucket)["Contents"]] == ["team/prefix/k/x.parquet"]


def test_published_index_round_trip_per_month(tmp_path: Path) -> None:
    from aperiodic_pipelines.storage.index import (
        PublishedFile,
        PublishedMonth,
        index_key,
        list_published_months,
        read_published_month,
        record_published_month,
    )

    store = LocalStore(tmp_path / "store")
    assert read_published_month(store, "binance-futures", "BTCUSDT", "2024-01") is None
    months = []
    for month in ("2024-02", "2024-01"):
        entry = PublishedMonth(
            exchange="binance-futures", symbol="perpetual-BTC-USDT:USDT", native_symbol="BTCUSDT", month=month,
            files=(PublishedFile("exchange", "1m", f"flow/exchange/binance-futures/1m/BTCUSDT/{month}.parquet",
                                 "ab" * 32, 41760 if month == "2024-02" else 44640, 1234),),
        )
        record_published_month(store, entry)
        months.append(entry)
    assert index_key("binance-futures", "BTCUSDT", "2024-01") == "index/flow/binance-futures/BTCUSDT/2024-01.json"
    assert [m.month for m in list_published_months(store, "binance-futures", "BTCUSDT")] == ["2024-01", "2024-02"]
    assert read_published_month(store, "binance-futures", "BTCUSDT", "2024-02") == months[0]
    with pytest.raises(ValueError, match="native symbol"):
        index_key("binance-futures", "../etc", "2024-01")


# --- issue 8, fact 11: a writer killed mid-publish leaves nothing behind for long --------------------------------

_KILLED_WRITER = """
import os, signal, sys
from pathlib import Path
from aperiodic_pipelines.storage import LocalStore, S3Store, s3_client_from_env

def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)  # a real kill at the kill point, no cleanup code runs

kind, source, key = sys.argv[1], sys.argv[2], sys.argv[3]
if kind == "local":
    os.replace = die  # killed after the temp file is written and fsynced, before the rename
    LocalStore(sys.argv[4]).publish_file(source, key)
else:
    client = s3_client_from_env()
    client.complete_multipart_upload = die  # killed after the parts are uploaded, before completion
    S3Store(client, sys.argv[4], "pre", multipart_threshold=5 * 1024 * 1024, part_size=5 * 1024 * 1024).publish_file(
        source, key
    )
"""


def kill_a_writer(*args: str) -> None:
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run([sys.executable, "-c", _KILLED_WRITER, *args], env=env, capture_output=True, timeout=120)
    assert done.returncode == -9, done.stderr.decode()[-2000:]


def test_fact11_stale_tmp_part_removed_by_next_publish(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    key = flow_key("exchange", "binance-futures", "1h", "BTCUSDT", "2024-01")
    neighbour = flow_key("exchange", "binance-futures", "1h", "BTCUSDT", "2024-02")
    other_dir = flow_key("exchange", "binance-futures", "1d", "BTCUSDT", "2024-01")
    good = write_bars(tmp_path / "good.parquet")
    store.publish_file(good, key)
    store.publish_file(good, other_dir)
    newer = write_bars(tmp_path / "newer.parquet", bars_frame(seed=9))
    kill_a_writer("local", str(newer), key, str(store.root))
    kill_a_writer("local", str(newer), other_dir, str(store.root))
    [dead] = [p for p in temp_leftovers(store.root) if p.parent == store.path(key).parent]
    assert dead.name.startswith(".tmp-") and dead.name.endswith(".part")
    assert store.read_bytes(key) == good.read_bytes()  # the published file stayed whole
    assert store.list() == sorted([key, other_dir])  # readers never see the leftover

    # A live writer's temp file (fresh) is left alone; the dead one is old enough to be removed.
    live = dead.with_name(".tmp-live-writer.part")
    live.write_bytes(b"being written")
    old = time.time() - 2 * 3600
    os.utime(dead, (old, old))
    store.publish_file(newer, neighbour)
    assert not dead.exists() and live.exists()
    assert [p.parent.name for p in temp_leftovers(store.root)] == sorted(["BTCUSDT", "BTCUSDT"])  # live + 1d's
    assert store.read_bytes(key) == good.read_bytes() and store.read_bytes(neighbour) == newer.read_bytes()

    # The maintenance form covers the whole store (or a prefix) with the same age rule.
    assert store.remove_stale_leftovers() == 0  # the 1d leftover is still younger than the safe age
    assert store.remove_stale_leftovers("flow/", older_than=0) == 2
    assert temp_leftovers(store.root) == []


@pytest.mark.slow
def test_fact11_stale_multipart_upload_aborted_by_next_publish_s3(
    s3_client, s3_bucket: str, tmp_path: Path  # noqa: F811
) -> None:
    store = S3Store(s3_client, s3_bucket, "pre")
    key = flow_key("exchange", "binance-futures", "1s", "BTCUSDT", "2024-01")
    elsewhere = flow_key("exchange", "binance-futures", "1s", "ETHUSDT", "2024-01")
    big = tmp_path / "big.parquet"  # > 5 MiB: a multipart upload in the killed writer
    write_parquet_deterministic(
        pl.DataFrame({"x": np.random.default_rng(1).random(900_000)}), big, metadata={"k": "v"}
    )
    kill_a_writer("s3", str(big), key, s3_bucket)
    kill_a_writer("s3", str(big), elsewhere, s3_bucket)
    uploads = s3_client.list_multipart_uploads(Bucket=s3_bucket)["Uploads"]
    assert sorted(u["Key"] for u in uploads) == [f"pre/{key}", f"pre/{elsewhere}"]
    assert not store.exists(key)  # nothing became visible

    # An upload initiated a minute ago may be a live writer's: left alone.
    initiated = next(u["Initiated"] for u in uploads if u["Key"] == f"pre/{key}")
    assert store.remove_stale_leftovers(key.rsplit("/", 1)[0] + "/", now=initiated + timedelta(minutes=1)) == 0
    # The next publish next to it aborts the dead writer's upload (older than the safe age), not others'.
    small = write_bars(tmp_path / "small.parquet")
    store.publish_file(small, flow_key("exchange", "binance-futures", "1s", "BTCUSDT", "2024-02"))
    remaining = s3_client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", [])
    assert [u["Key"] for u in remaining] == [f"pre/{elsewhere}"]
    assert store.remove_stale_leftovers("flow/") == 1
    assert s3_client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []


def _pinned_survives_republication(store: ObjectStore, tmp_path: Path) -> Path:
    """Pin an object, republish its key with other bytes inside the block: the pin keeps the first bytes."""
    key = raw_key("binance-futures", "BTCUSDT", "2024-01")
    first, second = tmp_path / "first.parquet", tmp_path / "second.parquet"
    first.write_bytes(b"PAR1 first version PAR1")  # parquet's magic at both ends: the store checks it
    second.write_bytes(b"PAR1 the second, longer version PAR1")
    store.publish_file(first, key)
    with store.pinned(key) as pin:
        store.publish_file(second, key)
        assert store.read_bytes(key) == second.read_bytes()
        assert pin.read_bytes() == first.read_bytes(), "a republication changed a pinned file"
        kept = pin
    assert not kept.exists(), "the pin outlived its block"
    with pytest.raises(ObjectNotFoundError), store.pinned(raw_key("binance-futures", "BTCUSDT", "2019-01")):
        pass
    return kept


def test_local_pins_are_hard_links_on_the_stores_filesystem_never_listed(tmp_path: Path) -> None:
    root = tmp_path / "store"
    store = LocalStore(root)
    kept = _pinned_survives_republication(store, tmp_path)
    assert kept.is_relative_to(root / PINS_DIR), "pinned beside the objects, so a link, not a copy"
    key = raw_key("binance-futures", "BTCUSDT", "2024-01")
    with store.pinned(key) as pin:
        assert pin.stat().st_ino == store.path(key).stat().st_ino, "no bytes copied"
        assert store.list() == [key], "pins are not objects"
    # A killed reader's pin directory is removed by the next pin once it is older than any step.
    orphan = root / PINS_DIR / "pin-killed"
    orphan.mkdir()
    (orphan / "2023-12.parquet").write_bytes(b"old bytes")
    stale = time.time() - PIN_STALE_SECONDS - 60
    os.utime(orphan, (stale, stale))
    young = root / PINS_DIR / "pin-live"
    young.mkdir()
    with store.pinned(key):
        pass
    assert not orphan.exists() and young.exists()


def test_s3_pins_are_private_downloads(s3_client, s3_bucket: str, tmp_path: Path) -> None:  # noqa: F811
    _pinned_survives_republication(S3Store(s3_client, s3_bucket, "platform/v1/"), tmp_path)


def test_flocked_waits_a_bounded_time_for_a_held_lock(tmp_path: Path) -> None:
    """The download cache's lock waits for the holder, but not for ever: past `wait_seconds` it says so (None)."""
    import time

    from aperiodic_pipelines.atomic import flocked

    path = tmp_path / "locks" / "k.lock"
    with flocked(path) as held:
        assert held is not None
        started = time.monotonic()
        with flocked(path, wait_seconds=0.3) as waited:
            assert waited is None and time.monotonic() - started >= 0.3
        with flocked(path, blocking=False) as other:
            assert other is None
    with flocked(path, wait_seconds=0.3) as free:
        assert free is not None
