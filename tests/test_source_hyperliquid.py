"""hyperliquid-perps source against a real moto S3 server over HTTP on 127.0.0.1.

One module-wide bucket holds a month of each era (written once: a month is ~720 hourly objects); the fault tests
damage one object and restore it afterwards. Tests share one cache directory, so later tests mostly hit the cache.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from botocore.config import Config

from aperiodic_pipelines.domain.errors import (
    CorruptArchiveError,
    InvalidMonthError,
    NotPublishedError,
    SymbolError,
)
from aperiodic_pipelines.mirror.s3 import (
    CORRUPTIONS,
    corrupt_object,
    create_bucket,
    delete_hour,
    make_client,
    put_raw_lines,
    read_lines,
    write_hyperliquid_month,
)
from aperiodic_pipelines.sources import fetch_month as registry_fetch_month
from aperiodic_pipelines.sources.config import SourceConfig
from aperiodic_pipelines.sources.hyperliquid import (
    NODE_FILLS,
    NODE_FILLS_BY_BLOCK,
    NODE_TRADES,
    AmbiguousAggressorError,
    datasets_for_hour,
    fetch_month,
    fetch_months,
    hour_key,
    parse_s3_url,
    prepare_month,
)
from aperiodic_pipelines.sources.hyperliquid.parse import PARSER_VERSION
from aperiodic_pipelines.synthetic import generate_tape
from aperiodic_pipelines.trades import CANONICAL_COLUMNS
from tests.s3_fixtures import MOTO_REGION

pytestmark = pytest.mark.slow

BUCKET = "hl-node-data-test"
# node_trades: March 2025, of which the archive holds only the hours from 2025-03-22 10:00 on
BLOCK_MONTH, FILLS_MONTH, TRADES_MONTH = "2025-09", "2025-06", "2025-03"
ARCHIVE_START_US = int(datetime(2025, 3, 22, 10, tzinfo=UTC).timestamp()) * 1_000_000
US_PER_HOUR = 3_600_000_000


def _edge_trades(month: str, *, hours: int, first_id: int) -> pl.DataFrame:
    """Two trades per hour for the first `hours` hours: 5 ms after the hour starts and 5 ms before it ends, so the
    writer's delays file some of them in the neighbouring hour's object."""
    start = int(datetime.strptime(month, "%Y-%m").replace(tzinfo=UTC).timestamp()) * 1_000_000
    times = [start + h * US_PER_HOUR + offset for h in range(hours) for offset in (5_000, US_PER_HOUR - 5_000)]
    return pl.DataFrame(
        {
            "ts_exchange": times,
            "ts_arrival": [None] * len(times),
            "trade_id": list(range(first_id, first_id + len(times))),
            "price": [42000.5 + i for i in range(len(times))],
            "qty": [0.25] * len(times),
            "is_buy": [i % 3 == 0 for i in range(len(times))],
        },
        schema={"ts_exchange": pl.Int64, "ts_arrival": pl.Int64, "trade_id": pl.Int64, "price": pl.Float64,
                "qty": pl.Float64, "is_buy": pl.Boolean},
    )


def _tape(month: str, seed: int) -> pl.DataFrame:
    tape = pl.concat([generate_tape(month, n_trades=1500, seed=seed), _edge_trades(month, hours=48, first_id=10**9)])
    return tape.sort("ts_exchange", "trade_id")


def _expected(tape: pl.DataFrame) -> pl.DataFrame:
    """What the fills eras return: ms timestamps (the fills carry ms), sorted by (time, id)."""
    return tape.with_columns(ts_exchange=pl.col("ts_exchange") // 1000 * 1000).sort("ts_exchange", "trade_id")


@dataclass
class World:
    endpoint: str
    client: Any
    tapes: dict[str, pl.DataFrame]
    eth_keys: list[str]
    outside_ids: set[int]
    eth: pl.DataFrame


def _trades_at(times: list[int], *, first_id: int, price: float = 42000.5) -> pl.DataFrame:
    """One trade at each µs time, alternating buy and sell."""
    return pl.DataFrame(
        {
            "ts_exchange": times,
            "ts_arrival": [None] * len(times),
            "trade_id": list(range(first_id, first_id + len(times))),
            "price": [price + i for i in range(len(times))],
            "qty": [0.25] * len(times),
            "is_buy": [i % 2 == 0 for i in range(len(times))],
        },
        schema={"ts_exchange": pl.Int64, "ts_arrival": pl.Int64, "trade_id": pl.Int64, "price": pl.Float64,
                "qty": pl.Float64, "is_buy": pl.Boolean},
    )


class RequestLog:
    """Every HTTP request one boto3 client sends, seen through botocore's own event hooks."""

    def __init__(self, client: Any) -> None:
        self.requests: list[tuple[str, str, str | None]] = []
        self.gets: list[str] = []
        self._lock = threading.Lock()
        client.meta.events.register("before-send.s3", self._on_send)
        client.meta.events.register("before-parameter-build.s3.GetObject", self._on_get)

    def _on_send(self, request: Any, **_: Any) -> None:
        payer = request.headers.get("x-amz-request-payer")
        with self._lock:
            self.requests.append((request.method, request.url, payer.decode() if isinstance(payer, bytes) else payer))

    def _on_get(self, params: dict[str, Any], **_: Any) -> None:
        with self._lock:
            self.gets.append(params["Key"])


def _client(endpoint: str) -> Any:
    import boto3

    return boto3.client(
        "s3", endpoint_url=endpoint, region_name=MOTO_REGION, aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(retries={"max_attempts": 3, "mode": "standard"}, max_pool_connections=20),
    )


@pytest.fixture(scope="module")
def world(moto_endpoint: str) -> World:  # noqa: F811
    client = make_client(moto_endpoint, region=MOTO_REGION)
    create_bucket(client, BUCKET, region=MOTO_REGION)
    tapes = {
        BLOCK_MONTH: _tape(BLOCK_MONTH, 1),
        FILLS_MONTH: _tape(FILLS_MONTH, 2),
        # the archive's first hour (2025-03-22 10:00) from its first milliseconds on
        TRADES_MONTH: pl.concat([
            _tape(TRADES_MONTH, 3).filter(pl.col("ts_exchange") >= ARCHIVE_START_US),
            _trades_at([ARCHIVE_START_US + 5_000, ARCHIVE_START_US + US_PER_HOUR - 5_000], first_id=2 * 10**9),
        ]).sort("ts_exchange", "trade_id"),
    }
    for month, tape in tapes.items():
        write_hyperliquid_month(client, BUCKET, "BTC", month, tape, seed=11)
    # Trades of the neighbouring months inside the neighbour objects the September fetch must read and drop.
    before = _edge_trades("2025-08", hours=744, first_id=5 * 10**9).tail(2)
    after = _edge_trades("2025-10", hours=1, first_id=6 * 10**9)
    for month, extra in (("2025-08", before), ("2025-10", after)):
        write_hyperliquid_month(client, BUCKET, "BTC", month, extra, seed=12, cover_month=False)
    # Another coin sharing the September objects, which the BTC fetch must ignore.
    eth = _edge_trades(BLOCK_MONTH, hours=6, first_id=7 * 10**9).with_columns(price=pl.col("price") / 20)
    eth_keys = write_hyperliquid_month(client, BUCKET, "ETH", BLOCK_MONTH, eth, seed=13, cover_month=False)
    outside = set(before.get_column("trade_id").to_list()) | set(after.get_column("trade_id").to_list())
    return World(moto_endpoint, client, tapes, eth_keys, outside, eth)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("hl-cache")


def _config(cache_dir: Path) -> SourceConfig:
    return SourceConfig(hyperliquid_url=f"s3://{BUCKET}", cache_dir=cache_dir)


@pytest.fixture(scope="module")
def block_fetch(world: World, cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, RequestLog]:
    client = _client(world.endpoint)
    log = RequestLog(client)
    dest = tmp_path_factory.mktemp("hl-out") / "BTC-2025-09.parquet"
    result = fetch_month("perpetual-BTC-USDC:USDC", BLOCK_MONTH, dest=dest, config=_config(cache_dir), s3_client=client)
    return result, log


@contextmanager
def damaged(world: World, key: str) -> Iterator[None]:
    """Let a test damage `key`, then put the original bytes back."""
    original = world.client.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    try:
        yield
    finally:
        world.client.put_object(Bucket=BUCKET, Key=key, Body=original)


def _hour(month: str, day: int, hour: int) -> datetime:
    year, mon = (int(p) for p in month.split("-"))
    return datetime(year, mon, day, hour, tzinfo=UTC)


# --- each era, row by row --------------------------------------------------------------------------------------


def test_fills_by_block_row_by_row(world: World, block_fetch: tuple[Any, RequestLog]) -> None:
    result, _ = block_fetch
    got = pl.read_parquet(result.path)
    expected = _expected(world.tapes[BLOCK_MONTH])
    assert got.columns == CANONICAL_COLUMNS
    assert got.drop("ts_arrival").equals(expected.drop("ts_arrival"))
    assert result.trade_count == expected.height
    assert result.dataset == NODE_FILLS_BY_BLOCK
    assert (result.exchange, result.symbol, result.native_symbol, result.month) == (
        "hyperliquid-perps", "perpetual-BTC-USDC:USDC", "BTC", BLOCK_MONTH
    )
    assert result.duplicates_dropped == 0


def test_fills_by_block_arrival_is_local_time(block_fetch: tuple[Any, RequestLog]) -> None:
    result, _ = block_fetch
    got = pl.read_parquet(result.path)
    assert result.has_arrival_times
    assert got.get_column("ts_arrival").null_count() == 0
    delay = got.get_column("ts_arrival") - got.get_column("ts_exchange")
    # local_time = block_time + 20..400 ms (+ sub-ms), block_time within the fill's millisecond
    assert delay.min() >= 20_000
    assert delay.max() < 402_000
    # trades of one millisecond share a block, hence one arrival time
    per_ms = got.group_by("ts_exchange").agg(pl.col("ts_arrival").n_unique().alias("n"))
    assert per_ms.get_column("n").max() == 1


def test_fills_by_block_month_edges_and_other_coins(world: World, block_fetch: tuple[Any, RequestLog]) -> None:
    result, _ = block_fetch
    got = pl.read_parquet(result.path)
    start = int(_hour(BLOCK_MONTH, 1, 0).timestamp()) * 1_000_000
    end = int(_hour("2025-10", 1, 0).timestamp()) * 1_000_000
    times = got.get_column("ts_exchange")
    assert times.min() == start  # the tape's trade at the month's first µs
    assert times.max() == end - 1000  # its trade at the last µs, in ms like every fill
    ids = set(got.get_column("trade_id").to_list())
    assert not ids & world.outside_ids  # neighbour months' trades were read but dropped
    assert not any(tid >= 7 * 10**9 for tid in ids)  # ETH fills in the same blocks are ignored
    # the objects the fetch recorded: the month's 720 hours and one on each side
    assert len(result.objects) == 722
    assert result.objects[0].location == f"s3://{BUCKET}/node_fills_by_block/hourly/20250831/23.lz4"
    assert result.objects[-1].location == f"s3://{BUCKET}/node_fills_by_block/hourly/20251001/0.lz4"
    assert all(len(o.sha256) == 64 and o.size > 0 for o in result.objects)


def test_hour_spill_over_both_ways_is_read(world: World, block_fetch: tuple[Any, RequestLog]) -> None:
    forward = backward = 0
    for h in range(48):
        hour = _hour(BLOCK_MONTH, 1 + h // 24, h % 24)
        for line in read_lines(world.client, BUCKET, hour_key(NODE_FILLS_BY_BLOCK, hour)):
            if b'"coin":"BTC"' not in line:
                continue
            fill_hour = int(line.split(b'"time":')[1].split(b",")[0]) // 3_600_000
            file_hour = int(hour.timestamp()) // 3600
            forward += fill_hour < file_hour
            backward += fill_hour > file_hour
    assert forward > 5 and backward > 5
    result, _ = block_fetch
    edge_ids = set(_edge_trades(BLOCK_MONTH, hours=48, first_id=10**9).get_column("trade_id").to_list())
    assert edge_ids <= set(pl.read_parquet(result.path).get_column("trade_id").to_list())


def test_every_request_is_requester_pays(block_fetch: tuple[Any, RequestLog]) -> None:
    _, log = block_fetch
    methods = Counter(method for method, _, _ in log.requests)
    assert methods["GET"] >= 722 and set(methods) <= {"GET", "HEAD"}
    assert all(payer == "requester" for _, _, payer in log.requests)
    assert all(url.startswith("http://127.0.0.1:") for _, url, _ in log.requests)


def test_node_fills_row_by_row_taker_is_crossed(world: World, cache_dir: Path, tmp_path: Path) -> None:
    # Each trade is stored as two fills sharing tid; the maker's side is the opposite one.
    lines = read_lines(world.client, BUCKET, hour_key(NODE_FILLS, _hour(FILLS_MONTH, 1, 0)))
    assert lines and all(line.startswith(b'["0x') for line in lines)
    tids = Counter(line.split(b'"tid":')[1].split(b",")[0] for line in lines)
    assert max(tids.values()) <= 2

    result = fetch_month("BTC", FILLS_MONTH, dest=tmp_path, config=_config(cache_dir), s3_client=_client(world.endpoint))
    got = pl.read_parquet(result.path)
    assert result.path == tmp_path / f"{FILLS_MONTH}.parquet"
    assert got.equals(_expected(world.tapes[FILLS_MONTH]).with_columns(ts_arrival=pl.lit(None, pl.Int64)))
    assert result.dataset == NODE_FILLS and not result.has_arrival_times


def test_node_trades_row_by_row_with_built_ids(world: World, cache_dir: Path, tmp_path: Path) -> None:
    result = fetch_month("BTC", TRADES_MONTH, dest=tmp_path, config=_config(cache_dir), s3_client=_client(world.endpoint))
    got = pl.read_parquet(result.path)
    tape = world.tapes[TRADES_MONTH]  # node_trades keeps µs (the ISO time has ns)
    expected = tape.with_columns(
        ts_arrival=pl.lit(None, pl.Int64),
        trade_id=pl.col("ts_exchange") * 1000 + pl.int_range(pl.len(), dtype=pl.Int64).over("ts_exchange"),
    )
    assert got.equals(expected)
    assert result.dataset == NODE_TRADES and got.get_column("trade_id").is_unique().all()
    # nothing exists before 2025-03-22 10:00, so only the hours from then on are read
    assert len(result.objects) == 14 + 9 * 24 + 1
    assert result.objects[0].location.endswith("/node_trades/hourly/20250322/10.lz4")


def test_node_trades_archive_starts_at_20250322_hour_10_partial_first_month(
    world: World, block_fetch: tuple[Any, RequestLog], cache_dir: Path, tmp_path: Path
) -> None:
    # The mirror publishes what the bucket holds: 2025-03-22 starts with 10.lz4.
    listed = world.client.list_objects_v2(Bucket=BUCKET, Prefix="node_trades/hourly/20250322/")["Contents"]
    assert sorted(int(item["Key"].rsplit("/", 1)[1].split(".")[0]) for item in listed) == list(range(10, 24))
    result = fetch_month("BTC", TRADES_MONTH, dest=tmp_path, config=_config(cache_dir), s3_client=_client(world.endpoint))
    assert result.metadata["first_hour"] == "2025-03-22T10:00:00Z"
    assert result.metadata["partial_month"] is True
    times = pl.read_parquet(result.path).get_column("ts_exchange")
    assert times.min() == ARCHIVE_START_US + 5_000  # the first hour's trades are in
    assert result.trade_count == world.tapes[TRADES_MONTH].height
    full, _ = block_fetch
    assert full.metadata["first_hour"] == "2025-09-01T00:00:00Z" and full.metadata["partial_month"] is False
    assert full.to_metadata()["metadata"]["partial_month"] is False  # reaches the asset's metadata


def test_each_hour_is_parsed_once_for_every_coin(
    world: World, block_fetch: tuple[Any, RequestLog], cache_dir: Path, tmp_path: Path
) -> None:
    client = _client(world.endpoint)
    log = RequestLog(client)
    prepared = prepare_month(BLOCK_MONTH, config=_config(cache_dir), s3_client=client)
    # the BTC fetch parsed every hour for every coin: nothing is downloaded or parsed again
    assert len(prepared.hours) == 722 and not any(hour.parsed_now for hour in prepared.hours)
    assert log.gets == []
    assert {"BTC", "ETH"} <= set(prepared.coins())
    results = fetch_months(["ETH", "perpetual-BTC-USDC:USDC"], BLOCK_MONTH, dest=tmp_path,
                           config=_config(cache_dir), s3_client=client)
    assert log.gets == []
    eth = results["ETH"]
    assert eth.path == tmp_path / "ETH" / f"{BLOCK_MONTH}.parquet"
    assert pl.read_parquet(eth.path).drop("ts_arrival").equals(_expected(world.eth).drop("ts_arrival"))
    btc = results["perpetual-BTC-USDC:USDC"]
    assert btc.path.read_bytes() == block_fetch[0].path.read_bytes()
    # a parsed hour: one parquet per object and ETag, every coin, sorted by coin
    hour = next(h for h in prepared.hours if h.source.location.endswith("/20250901/2.lz4"))
    key = hour.source.location.removeprefix(f"s3://{BUCKET}/")
    etag = world.client.head_object(Bucket=BUCKET, Key=key)["ETag"].strip('"')
    assert hour.path.name == f"2.lz4.{etag}.p{PARSER_VERSION}.parquet"
    coins = pl.read_parquet(hour.path).get_column("coin")
    assert set(coins) == {"BTC", "ETH"} and coins.is_sorted()


# --- cache, registry, upstream changes -------------------------------------------------------------------------


def test_rerun_hits_the_cache_through_the_registry_and_env(
    world: World, block_fetch: tuple[Any, RequestLog], cache_dir: Path, tmp_path: Path, aws_env: str  # noqa: F811
) -> None:
    first, _ = block_fetch
    # No client injected: boto3 finds the moto endpoint and fake credentials in the environment itself.
    import boto3

    gets: list[str] = []
    boto3.DEFAULT_SESSION = None
    session = boto3.Session()
    session.events.register("before-parameter-build.s3.GetObject", lambda params, **_: gets.append(params["Key"]))
    boto3.DEFAULT_SESSION = session
    try:
        again = registry_fetch_month(
            "hyperliquid-perps", "perpetual-BTC-USDC:USDC", BLOCK_MONTH, dest=tmp_path / "again.parquet",
            config=_config(cache_dir),
        )
    finally:
        boto3.DEFAULT_SESSION = None
    assert gets == []
    assert again.path.read_bytes() == first.path.read_bytes()  # same inputs, same bytes
    assert [o.sha256 for o in again.objects] == [o.sha256 for o in first.objects]


def test_changed_upstream_object_is_fetched_again(
    world: World, block_fetch: tuple[Any, RequestLog], cache_dir: Path, tmp_path: Path
) -> None:
    first, _ = block_fetch
    more_eth = _edge_trades(BLOCK_MONTH, hours=2, first_id=8 * 10**9).with_columns(price=pl.col("price") / 20)
    changed = write_hyperliquid_month(world.client, BUCKET, "ETH", BLOCK_MONTH, more_eth, seed=14, cover_month=False)
    client = _client(world.endpoint)
    log = RequestLog(client)
    prepared = prepare_month(BLOCK_MONTH, config=_config(cache_dir), s3_client=client)
    assert sorted(log.gets) == sorted(changed)
    reparsed = {hour.source.location for hour in prepared.hours if hour.parsed_now}
    assert reparsed == {f"s3://{BUCKET}/{key}" for key in changed}
    again = fetch_month("BTC", BLOCK_MONTH, dest=tmp_path, prepared=prepared)
    assert pl.read_parquet(again.path).equals(pl.read_parquet(first.path))
    changed_uris = {f"s3://{BUCKET}/{key}" for key in changed}
    for old, new in zip(first.objects, again.objects, strict=True):
        assert (old.sha256 != new.sha256) == (old.location in changed_uris)


# --- bad input -------------------------------------------------------------------------------------------------


def test_missing_hour_is_not_published(world: World, cache_dir: Path, tmp_path: Path) -> None:
    key = hour_key(NODE_FILLS_BY_BLOCK, _hour(BLOCK_MONTH, 17, 5))
    client = _client(world.endpoint)
    log = RequestLog(client)
    with damaged(world, key):
        delete_hour(world.client, BUCKET, key)
        with pytest.raises(NotPublishedError, match=f"s3://{BUCKET}/{key} is not published"):
            fetch_month("BTC", BLOCK_MONTH, dest=tmp_path / "x.parquet", config=_config(cache_dir), s3_client=client)
    assert log.gets == []  # found from the listing, before any download
    assert not (tmp_path / "x.parquet").exists()


def test_missing_month_is_not_published(world: World, cache_dir: Path, tmp_path: Path) -> None:
    client = _client(world.endpoint)
    first_key = hour_key(NODE_FILLS_BY_BLOCK, _hour("2026-01", 31, 23))
    with pytest.raises(NotPublishedError, match=f"s3://{BUCKET}/{first_key}"):
        fetch_month("BTC", "2026-02", dest=tmp_path, config=_config(cache_dir), s3_client=client)
    with pytest.raises(NotPublishedError, match="starts 2025-03-22"):
        fetch_month("BTC", "2024-01", dest=tmp_path, config=_config(cache_dir), s3_client=client)
    assert list(tmp_path.iterdir()) == []


def _cache_files(cache_dir: Path, key: str) -> list[Path]:
    """Everything the cache holds for `key`: the raw copy, its sidecar, parsed hours, partial downloads."""
    path = cache_dir / "hyperliquid" / BUCKET / key
    return sorted(path.parent.glob(path.name + "*")) if path.parent.exists() else []


def _fails_once_caches_nothing(world: World, cache_dir: Path, tmp_path: Path, key: str, match: str) -> str:
    """Fetch September with `key` damaged: one CorruptArchiveError matching `match`, the object downloaded once
    (never retried), nothing of it left in the cache, no output written. Returns the message."""
    for stale in _cache_files(cache_dir, key):  # forget any cached copy, so this key is fetched anew
        stale.unlink()
    client = _client(world.endpoint)
    log = RequestLog(client)
    with pytest.raises(CorruptArchiveError, match=match) as info:
        fetch_month("BTC", BLOCK_MONTH, dest=tmp_path / "x.parquet", config=_config(cache_dir), s3_client=client)
    assert log.gets.count(key) == 1
    assert _cache_files(cache_dir, key) == []
    assert not (tmp_path / "x.parquet").exists()
    return str(info.value)


@pytest.mark.parametrize("mode", CORRUPTIONS)
def test_corrupt_lz4_frame_is_one_permanent_error(
    world: World, block_fetch: tuple[Any, RequestLog], cache_dir: Path, tmp_path: Path, mode: str
) -> None:
    """Truncated frame, bad magic, bad content checksum, garbled blocks, not LZ4 at all."""
    key = hour_key(NODE_FILLS_BY_BLOCK, _hour(BLOCK_MONTH, 9, 13))
    with damaged(world, key):
        corrupt_object(world.client, BUCKET, key, mode=mode)
        message = _fails_once_caches_nothing(world, cache_dir, tmp_path, key, f"s3://{BUCKET}/{key}")
        assert "LZ4 frame" in message
    if mode != "flip":
        return  # the recovery below is the same for every kind of damage
    # once upstream is fixed, only that object is fetched again
    client = _client(world.endpoint)
    log = RequestLog(client)
    fixed = fetch_month("BTC", BLOCK_MONTH, dest=tmp_path / "x.parquet", config=_config(cache_dir), s3_client=client)
    assert log.gets == [key]
    assert fixed.trade_count == _expected(world.tapes[BLOCK_MONTH]).height


_GOOD_FILL = '{"coin":"BTC","px":"1.0","sz":"1.0","side":"B","time":1757000000000,"crossed":true,"hash":"0x01","tid":1}'


@pytest.mark.parametrize(
    ("bad_fill", "why"),
    [
        pytest.param(_GOOD_FILL.replace('"0x01"', '"0x<NOT-UTF-8>"'), "not UTF-8", id="invalid-utf8"),
        pytest.param(_GOOD_FILL[:-1], "invalid JSON", id="invalid-json"),
        pytest.param(_GOOD_FILL.replace(',"tid":1', ""), "missing required field `tid`", id="missing-field"),
        pytest.param(_GOOD_FILL.replace('1757000000000', '"soon"'), "Expected `int`, got `str`.*time",
                     id="ill-typed-time"),
        pytest.param(_GOOD_FILL.replace('"crossed":true', '"crossed":"yes"'), "Expected `bool`.*crossed",
                     id="ill-typed-crossed"),
        pytest.param(_GOOD_FILL.replace('"side":"B"', '"side":"X"'), "side", id="unknown-side"),
        pytest.param(_GOOD_FILL.replace('"px":"1.0"', '"px":"abc"'), "px='abc' is not a positive number",
                     id="px-not-a-number"),
        pytest.param(_GOOD_FILL.replace('"sz":"1.0"', '"sz":"-2"'), "sz='-2' is not a positive number",
                     id="sz-not-positive"),
    ],
)
def test_malformed_ndjson_line_is_one_permanent_error_naming_key_and_line(
    world: World, block_fetch: tuple[Any, RequestLog], cache_dir: Path, tmp_path: Path, bad_fill: str, why: str
) -> None:
    key = hour_key(NODE_FILLS_BY_BLOCK, _hour(BLOCK_MONTH, 3, 7))
    good = read_lines(world.client, BUCKET, key)
    bad = (
        '{"local_time":"2025-09-03T07:10:00.100000000","block_time":"2025-09-03T07:10:00.000000000",'
        f'"block_number":1,"events":[["0xabc",{bad_fill}]]}}'
    ).encode().replace(b"<NOT-UTF-8>", b"\xff\xfe")
    with damaged(world, key):
        put_raw_lines(world.client, BUCKET, key, [*good[:1], bad, *good[1:]])
        _fails_once_caches_nothing(
            world, cache_dir, tmp_path, key, rf"s3://{BUCKET}/{key} line 2: malformed record .*{why}"
        )


def test_registry_rejects_bad_arguments_before_io(tmp_path: Path) -> None:
    with pytest.raises(SymbolError, match="binance-futures, okx-perps, hyperliquid-perps"):
        registry_fetch_month("bybit", "BTC", "2025-09", dest=tmp_path)
    with pytest.raises(InvalidMonthError, match="'2025-9'"):
        registry_fetch_month("hyperliquid-perps", "BTC", "2025-9", dest=tmp_path)
    with pytest.raises(SymbolError, match="'@107'"):
        registry_fetch_month("hyperliquid-perps", "@107", "2025-09", dest=tmp_path)
    with pytest.raises(SymbolError, match="hyperliquid-perps has no instrument"):
        registry_fetch_month("hyperliquid-perps", "perpetual-BTC-USDT:USDT", "2025-09", dest=tmp_path)


def test_eras_keys_and_urls() -> None:
    def at(day: int, month: int, hour: int) -> datetime:
        return datetime(2025, month, day, hour, tzinfo=UTC)

    assert datasets_for_hour(at(22, 3, 9)) == []
    assert datasets_for_hour(at(22, 3, 10)) == [NODE_TRADES]
    assert datasets_for_hour(at(25, 5, 13)) == [NODE_TRADES]
    assert datasets_for_hour(at(25, 5, 14)) == [NODE_FILLS]
    assert datasets_for_hour(at(27, 7, 7)) == [NODE_FILLS]
    assert datasets_for_hour(at(27, 7, 8)) == [NODE_FILLS, NODE_FILLS_BY_BLOCK]
    assert datasets_for_hour(at(27, 7, 9)) == [NODE_FILLS_BY_BLOCK]
    assert hour_key(NODE_FILLS, datetime(2025, 6, 1, 7, tzinfo=UTC), prefix="p") == "p/node_fills/hourly/20250601/7.lz4"
    assert parse_s3_url("s3://hl-mainnet-node-data") == ("hl-mainnet-node-data", "")
    assert parse_s3_url("s3://bucket-x/some/prefix/") == ("bucket-x", "some/prefix")
    with pytest.raises(Exception, match="s3://bucket"):
        parse_s3_url("https://example.com/x")


def test_block_with_other_key_order_and_nested_objects(world: World, cache_dir: Path, tmp_path: Path) -> None:
    """Blocks whose keys come in another order, or fills with a nested object before `coin`, parse the same."""
    key = hour_key(NODE_FILLS_BY_BLOCK, _hour(BLOCK_MONTH, 4, 2))
    good = read_lines(world.client, BUCKET, key)
    ms = int(_hour(BLOCK_MONTH, 4, 2).timestamp()) * 1000 + 1234
    taker = (
        '{"liquidation":{"liquidatedUser":"0x1","markPx":"1.0","method":"market"},"coin":"BTC","px":"50000.5",'
        f'"sz":"0.5","side":"A","time":{ms},"crossed":true,"hash":"0x{"ab" * 32}","tid":424242}}'
    )
    maker = (
        f'{{"coin":"BTC","px":"50000.5","sz":"0.5","side":"B","time":{ms},"crossed":false,"hash":"0x{"ab" * 32}",'
        '"tid":424242}'
    )
    reordered = (
        f'{{"events":[["0x2",{maker}],["0x1",{taker}]],"block_number":7,'
        '"block_time":"2025-09-04T02:00:01.234000000","local_time":"2025-09-04T02:00:01.300000001Z"}'
    ).encode()
    with damaged(world, key):
        put_raw_lines(world.client, BUCKET, key, [*good, reordered])
        result = fetch_month("BTC", BLOCK_MONTH, dest=tmp_path, config=_config(cache_dir),
                             s3_client=_client(world.endpoint))
    row = pl.read_parquet(result.path).filter(pl.col("trade_id") == 424242)
    assert row.rows() == [(ms * 1000, ms * 1000 + 66_000, 424242, 50000.5, 0.5, False)]
    assert result.trade_count == _expected(world.tapes[BLOCK_MONTH]).height + 1


def test_node_trades_written_as_buy_and_sell_twins_fail_the_month(
    world: World, cache_dir: Path, tmp_path: Path
) -> None:
    """Some node_trades output writes each trade twice (side B and side A, same hash, time, px, sz, side_info):
    the aggressor is unknowable, so the month fails naming the object and the count."""
    middle = ARCHIVE_START_US + 30 * US_PER_HOUR + US_PER_HOUR // 2
    twins = _trades_at([middle + i * 1000 for i in range(3)], first_id=9 * 10**9, price=3.5)
    keys = write_hyperliquid_month(world.client, BUCKET, "TWIN", TRADES_MONTH, twins, seed=21, cover_month=False,
                                   both_sides=True)
    assert len(keys) == 1 and len(read_lines(world.client, BUCKET, keys[0])) >= 6
    with pytest.raises(AmbiguousAggressorError, match=rf"3 TWIN trade\(s\) are written twice .*"
                       rf"s3://{BUCKET}/{keys[0]} \(3 pair\(s\)"):
        fetch_month("TWIN", TRADES_MONTH, dest=tmp_path / "twin.parquet", config=_config(cache_dir),
                    s3_client=_client(world.endpoint))
    assert not (tmp_path / "twin.parquet").exists()
    # other coins of the same objects are unaffected
    btc = fetch_month("BTC", TRADES_MONTH, dest=tmp_path, config=_config(cache_dir), s3_client=_client(world.endpoint))
    assert btc.trade_count == world.tapes[TRADES_MONTH].height
