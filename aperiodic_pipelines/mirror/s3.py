"""A local stand-in for Hyperliquid's `hl-mainnet-node-data` bucket: a moto S3 server on 127.0.0.1 and writers that
turn canonical trades into the hourly LZ4 NDJSON objects of each era, as Hyperliquid publishes them.

    with hyperliquid_mirror() as mirror:
        mirror.write_month("BTC", "2025-09", trades)
        os.environ.update(mirror.environment())   # AWS_ENDPOINT_URL_S3, fake credentials
        fetch_month("perpetual-BTC-USDC:USDC", "2025-09", dest=..., config=SourceConfig(hyperliquid_url=mirror.url))

What the writers reproduce, per era (formats and dates from Hyperliquid's docs and listings of the real bucket):

- When: `node_trades` from `20250322/10.lz4` to `20250525/13.lz4`, `node_fills` from `20250525/14.lz4` to
  `20250727/8.lz4`, `node_fills_by_block` from `20250727/8.lz4` on (hour 8 of 2025-07-27 is in both fill datasets).
  Trades within a few seconds of a switch are written by both outputs (`PUBLISHED`, `SWITCHES`).
- `node_trades`: one record per trade, ISO `time` with nanoseconds, `side` of the aggressor, `side_info` of both
  users; no `tid` (real records have none) unless `include_tid=True`; `both_sides=True` writes every trade twice,
  as a B and an A record, as some node output does.
- `node_fills`: two `[user, fill]` lines per trade sharing `tid`, the taker's with `crossed: true`.
- `node_fills_by_block`: trades of one millisecond form one block; `local_time` is `block_time` plus a delay.

Objects are filed by when the node would have written them (`time + delay - rotation lag`), so fills near an hour
edge land in the neighbouring hour's object, both ways. Writing into an hour that already exists appends to it,
so several coins and adjacent months share objects as they do upstream. moto accepts `RequestPayer` and ignores it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import lz4.frame
import polars as pl

from aperiodic_pipelines.sources.hyperliquid.eras import (
    NODE_FILLS,
    NODE_FILLS_BY_BLOCK,
    NODE_TRADES,
    hour_key,
)

FAKE_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
DEFAULT_BUCKET = "hl-mainnet-node-data"
DEFAULT_REGION = "us-east-1"
_HOUR_MS = 3_600_000


def start_moto_server(host: str = "127.0.0.1") -> tuple[Any, str]:
    """Start moto's S3 server on a free port of `host`; return (server, endpoint URL). Call `server.stop()`."""
    from moto.server import ThreadedMotoServer

    # werkzeug logs every request at INFO; thousands of hourly objects would drown test output.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address=host, port=0, verbose=False)
    server.start()
    bound_host, port = server.get_host_and_port()
    return server, f"http://{bound_host}:{port}"


def make_client(endpoint_url: str, *, region: str = DEFAULT_REGION) -> Any:
    """A boto3 S3 client for the mirror, with the fake credentials (never real ones)."""
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        region_name=region,
        aws_access_key_id=FAKE_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=FAKE_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
    )


def create_bucket(client: Any, bucket: str, *, region: str = DEFAULT_REGION) -> None:
    """Create `bucket` (idempotent)."""
    existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
    if bucket in existing:
        return
    if region == "us-east-1":
        client.create_bucket(Bucket=bucket)
    else:
        client.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": region})


@dataclass
class HyperliquidMirror:
    """A running moto server holding a Hyperliquid-shaped bucket."""

    server: Any
    endpoint_url: str
    client: Any
    bucket: str = DEFAULT_BUCKET
    prefix: str = ""
    region: str = DEFAULT_REGION
    written: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        """The value for `APERIODIC_HYPERLIQUID_URL` / `SourceConfig.hyperliquid_url`."""
        return f"s3://{self.bucket}" + (f"/{self.prefix}" if self.prefix else "")

    def environment(self) -> dict[str, str]:
        """Environment variables that point boto3 (and the source) at this mirror with fake credentials."""
        return {
            **FAKE_CREDENTIALS,
            "AWS_ENDPOINT_URL_S3": self.endpoint_url,
            "AWS_DEFAULT_REGION": self.region,
            "APERIODIC_HYPERLIQUID_URL": self.url,
        }

    def write_month(self, coin: str, month: str, trades: pl.DataFrame, **options: Any) -> list[str]:
        keys = write_hyperliquid_month(self.client, self.bucket, coin, month, trades, prefix=self.prefix, **options)
        self.written.extend(keys)
        return keys

    def key(self, dataset: str, hour: datetime) -> str:
        return hour_key(dataset, hour, prefix=self.prefix)

    def stop(self) -> None:
        self.server.stop()


@contextmanager
def hyperliquid_mirror(
    bucket: str = DEFAULT_BUCKET, *, prefix: str = "", region: str = DEFAULT_REGION
) -> Iterator[HyperliquidMirror]:
    """Start a moto server on 127.0.0.1, create the bucket (empty), yield the mirror, stop the server.

    moto keeps its state per process, not per server: a bucket another mirror in the same process filled is
    still there, and the writers append to existing hour objects. Emptying it keeps each mirror independent.
    """
    server, endpoint = start_moto_server()
    try:
        client = make_client(endpoint, region=region)
        create_bucket(client, bucket, region=region)
        empty_bucket(client, bucket)
        yield HyperliquidMirror(server, endpoint, client, bucket, prefix, region)
    finally:
        server.stop()


def empty_bucket(client: Any, bucket: str) -> None:
    """Delete every object of `bucket`."""
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
        if keys:
            client.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})


# --- writers ---------------------------------------------------------------------------------------------------

# What the real bucket holds, from listings of hl-mainnet-node-data (kept here, apart from the source's own table, so
# a wrong schedule in the source is caught): dataset, first hourly object, last hourly object (None: ongoing).
PUBLISHED: tuple[tuple[str, datetime, datetime | None], ...] = (
    (NODE_TRADES, datetime(2025, 3, 22, 10, tzinfo=UTC), datetime(2025, 5, 25, 13, tzinfo=UTC)),
    (NODE_FILLS, datetime(2025, 5, 25, 14, tzinfo=UTC), datetime(2025, 7, 27, 8, tzinfo=UTC)),
    (NODE_FILLS_BY_BLOCK, datetime(2025, 7, 27, 8, tzinfo=UTC), None),
)
# When the nodes' output switched to the next dataset: trades from then on are written in the new format. Around a
# switch both outputs ran for a while, so trades near it are in both datasets (`switch_overlap_ms`); the fills →
# fills-by-block switch fell inside hour 08:00, which is why that hour exists in both.
SWITCHES: dict[str, datetime] = {
    NODE_FILLS: datetime(2025, 5, 25, 14, tzinfo=UTC),
    NODE_FILLS_BY_BLOCK: datetime(2025, 7, 27, 8, 30, tzinfo=UTC),
}


def published_datasets(hour: datetime) -> list[str]:
    """Datasets with an object for `hour` in the real bucket."""
    return [name for name, first, last in PUBLISHED if first <= hour and (last is None or hour <= last)]


def _dataset_at(moment_ms: int) -> str | None:
    """The dataset a trade at `moment_ms` was written to (None before the archive starts)."""
    if moment_ms < _ms(PUBLISHED[0][1]):
        return None
    if moment_ms >= _ms(SWITCHES[NODE_FILLS_BY_BLOCK]):
        return NODE_FILLS_BY_BLOCK
    return NODE_FILLS if moment_ms >= _ms(SWITCHES[NODE_FILLS]) else NODE_TRADES


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def _clamp_hour(dataset: str, hour_ms: int) -> int:
    """An object hour the dataset really has: a record filed past a dataset's last (or before its first) hour went
    into its last (first) object."""
    for name, first, last in PUBLISHED:
        if name == dataset:
            hour_ms = max(hour_ms, _ms(first))
            return hour_ms if last is None else min(hour_ms, _ms(last))
    raise ValueError(f"unknown Hyperliquid dataset {dataset!r}")


def write_hyperliquid_month(
    client: Any,
    bucket: str,
    coin: str,
    month: str,
    trades: pl.DataFrame,
    *,
    era: str | None = None,
    prefix: str = "",
    seed: int = 0,
    max_delay_ms: int = 400,
    rotation_lag_ms: int = 150,
    include_tid: bool = False,
    cover_month: bool = True,
    switch_overlap_ms: int = 2000,
    both_sides: bool = False,
) -> list[str]:
    """Write canonical `trades` of `coin` as the bucket's hourly objects; return the keys written, in order.

    `trades` may carry a `coin` column instead (several coins in one pass, sharing blocks as they do upstream).

    Each trade goes to the dataset the nodes wrote at its time (`PUBLISHED`, `SWITCHES`; `era` forces one dataset
    for every trade and hour); trades within `switch_overlap_ms` of a switch go to both datasets. Trades before the
    archive starts (2025-03-22 10:00) are not published. Records are filed by `time + delay - rotation_lag_ms` with a
    delay up to `max_delay_ms`, so records near an hour edge go to the neighbouring object. With `cover_month`, every
    published hour of the month and the hour on each side gets an object even without a trade of `coin` (upstream,
    every hour exists). `both_sides` writes each node_trades trade twice, with side B and side A, as some node
    output does.
    """
    rng = random.Random(f"{seed}-{coin}-{month}")
    lines_by_key: dict[str, list[bytes]] = defaultdict(list)
    rows = trades.sort("ts_exchange", "trade_id").iter_rows(named=True)  # a `coin` column overrides `coin`

    def datasets_of(moment_ms: int) -> list[str]:
        if era is not None:
            return [era]
        current = _dataset_at(moment_ms)
        if current is None:
            return []
        found = {current}
        for new, switch in SWITCHES.items():
            if abs(moment_ms - _ms(switch)) < switch_overlap_ms:  # both outputs ran around the switch
                found |= {_dataset_at(_ms(switch) - 1) or current, new}
        return [name for name, _, _ in PUBLISHED if name in found]

    def key_for(dataset: str, filed_ms: int) -> str:
        hour_ms = filed_ms // _HOUR_MS * _HOUR_MS
        if era is None:
            hour_ms = _clamp_hour(dataset, hour_ms)
        return hour_key(dataset, datetime.fromtimestamp(hour_ms / 1000, tz=UTC), prefix=prefix)

    block: list[dict[str, Any]] = []
    for trade in rows:
        ms = int(trade["ts_exchange"]) // 1000
        for dataset in datasets_of(ms):
            if dataset == NODE_TRADES:
                record = _node_trade(trade.get("coin", coin), trade, rng, include_tid)
                twins = [record, {**record, "side": "A" if record["side"] == "B" else "B"}] if both_sides else [record]
                filed = ms + rng.randint(0, max_delay_ms) - rotation_lag_ms
                lines_by_key[key_for(dataset, filed)].extend(_dumps(twin) for twin in twins)
            elif dataset == NODE_FILLS:
                for fill in _fill_pair(trade.get("coin", coin), trade, rng):
                    filed = ms + rng.randint(0, max_delay_ms) - rotation_lag_ms
                    lines_by_key[key_for(dataset, filed)].append(_dumps(fill))
            elif dataset == NODE_FILLS_BY_BLOCK:
                if block and int(block[-1]["ts_exchange"]) // 1000 != ms:
                    _flush_block(coin, block, rng, lines_by_key, key_for, max_delay_ms, rotation_lag_ms)
                    block = []
                block.append(trade)
            else:
                raise ValueError(f"unknown Hyperliquid dataset {dataset!r}")
    if block:
        _flush_block(coin, block, rng, lines_by_key, key_for, max_delay_ms, rotation_lag_ms)

    if cover_month:
        year, mon = (int(p) for p in month.split("-"))
        hour = datetime(year, mon, 1, tzinfo=UTC) - timedelta(hours=1)
        end = datetime(year + mon // 12, mon % 12 + 1, 1, tzinfo=UTC)
        while hour <= end:
            for dataset in [era] if era is not None else published_datasets(hour):
                lines_by_key.setdefault(hour_key(dataset, hour, prefix=prefix), [])
            hour += timedelta(hours=1)

    keys = sorted(lines_by_key, key=_key_order)
    existing = _existing_keys(client, bucket, {key.rsplit("/", 1)[0] + "/" for key in keys})
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda key: append_lines(client, bucket, key, lines_by_key[key], exists=key in existing), keys))
    return keys


def ndjson_lines(dataset: str, trades: pl.DataFrame, *, coin: str | None = None, seed: int = 0) -> list[bytes]:
    """The NDJSON lines (no newline) one dataset holds for `trades`, in time order, without filing them into hours:
    for parser tests and benchmarks. `coin` or a `coin` column names the coin."""
    rng = random.Random(seed)
    rows = list(trades.sort("ts_exchange", "trade_id").iter_rows(named=True))
    if dataset == NODE_TRADES:
        return [_dumps(_node_trade(row.get("coin", coin), row, rng, False)) for row in rows]
    if dataset == NODE_FILLS:
        return [_dumps(fill) for row in rows for fill in _fill_pair(row.get("coin", coin), row, rng)]
    if dataset != NODE_FILLS_BY_BLOCK:
        raise ValueError(f"unknown Hyperliquid dataset {dataset!r}")
    collected: dict[str, list[bytes]] = defaultdict(list)
    start = 0
    for end in range(1, len(rows) + 1):
        if end == len(rows) or rows[end]["ts_exchange"] // 1000 != rows[start]["ts_exchange"] // 1000:
            _flush_block(coin, rows[start:end], rng, collected, lambda _dataset, _filed: "all", 0, 0)
            start = end
    return collected["all"]


def _existing_keys(client: Any, bucket: str, prefixes: set[str]) -> set[str]:
    found: set[str] = set()
    for prefix in prefixes:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            found.update(item["Key"] for item in page.get("Contents", []))
    return found


def append_lines(client: Any, bucket: str, key: str, lines: list[bytes], *, exists: bool = True) -> None:
    """Append NDJSON lines to the LZ4 object `key` (creating it), recompressing the whole object."""
    from botocore.exceptions import ClientError

    existing = b""
    if exists:
        try:
            existing = lz4.frame.decompress(client.get_object(Bucket=bucket, Key=key)["Body"].read())
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in {"NoSuchKey", "404"}:
                raise
    body = existing + b"".join(line + b"\n" for line in lines)
    put_lz4(client, bucket, key, body)


def put_lz4(client: Any, bucket: str, key: str, content: bytes) -> None:
    """Store `content` LZ4-frame compressed, with a content checksum as the `lz4` command line writes it."""
    client.put_object(Bucket=bucket, Key=key, Body=lz4.frame.compress(content, content_checksum=True))


def read_lines(client: Any, bucket: str, key: str) -> list[bytes]:
    """The decompressed NDJSON lines of one object (for tests and inspection)."""
    body = lz4.frame.decompress(client.get_object(Bucket=bucket, Key=key)["Body"].read())
    return body.splitlines()


# --- faults ----------------------------------------------------------------------------------------------------


CORRUPTIONS: tuple[str, ...] = ("flip", "truncate", "garbage", "magic", "checksum")


def corrupt_object(client: Any, bucket: str, key: str, *, mode: str = "flip") -> None:
    """Damage an object in place: `flip` garbles bytes inside the compressed data, `truncate` cuts the frame short,
    `garbage` replaces it with bytes that are not LZ4 at all, `magic` breaks the frame's magic number, `checksum`
    changes only the content checksum at the end of the frame (every block still decompresses)."""
    body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    if mode == "magic":
        damaged = b"\x00\x00\x00\x00" + body[4:]
    elif mode == "checksum":
        damaged = body[:-4] + bytes(b ^ 0xFF for b in body[-4:])
    elif mode == "flip":
        middle = len(body) // 2
        damaged = body[:middle] + bytes(b ^ 0xFF for b in body[middle : middle + 8]) + body[middle + 8 :]
    elif mode == "truncate":
        damaged = body[: max(1, len(body) - 9)]
    elif mode == "garbage":
        damaged = b"this is not an lz4 frame\n"
    else:
        raise ValueError(f"unknown corruption mode {mode!r}: use one of {', '.join(CORRUPTIONS)}")
    client.put_object(Bucket=bucket, Key=key, Body=damaged)


def delete_hour(client: Any, bucket: str, key: str) -> None:
    """Remove one hourly object, as if the node never published it."""
    client.delete_object(Bucket=bucket, Key=key)


def put_raw_lines(client: Any, bucket: str, key: str, lines: list[bytes]) -> None:
    """Replace an object with exactly these lines (e.g. a malformed record, bytes that are not UTF-8)."""
    put_lz4(client, bucket, key, b"".join(line + b"\n" for line in lines))


# --- record shapes ---------------------------------------------------------------------------------------------


def _dumps(record: Any) -> bytes:
    return json.dumps(record, separators=(",", ":")).encode()


def _user(rng: random.Random) -> str:
    return f"0x{rng.getrandbits(160):040x}"


def _tx_hash(trade_id: int) -> str:
    return "0x" + hashlib.sha256(str(trade_id).encode()).hexdigest()


def _number(value: float) -> str:
    return repr(float(value))


def _iso_ns(ns: int) -> str:
    seconds, frac = divmod(ns, 1_000_000_000)
    return f"{datetime.fromtimestamp(seconds, tz=UTC):%Y-%m-%dT%H:%M:%S}.{frac:09d}"


def _node_trade(coin: str, trade: dict[str, Any], rng: random.Random, include_tid: bool) -> dict[str, Any]:
    buyer, seller = _user(rng), _user(rng)
    ns = int(trade["ts_exchange"]) * 1000 + rng.randint(0, 999)
    record: dict[str, Any] = {
        "coin": coin,
        "side": "B" if trade["is_buy"] else "A",
        "time": _iso_ns(ns),
        "px": _number(trade["price"]),
        "sz": _number(trade["qty"]),
        "hash": _tx_hash(int(trade["trade_id"])),
        "trade_dir_override": "Na",
        "side_info": [
            {"user": buyer, "start_pos": "0.0", "oid": rng.randint(10**10, 10**11), "twap_id": None, "cloid": None},
            {"user": seller, "start_pos": "0.0", "oid": rng.randint(10**10, 10**11), "twap_id": None, "cloid": None},
        ],
    }
    if include_tid:
        record["tid"] = int(trade["trade_id"])
    return record


def _fill_pair(coin: str, trade: dict[str, Any], rng: random.Random) -> list[list[Any]]:
    """Taker and maker fills of one trade as `[user, fill]`, in a random order."""
    taker_side = "B" if trade["is_buy"] else "A"
    maker_side = "A" if trade["is_buy"] else "B"
    common = {
        "coin": coin,
        "px": _number(trade["price"]),
        "sz": _number(trade["qty"]),
        "time": int(trade["ts_exchange"]) // 1000,
        "hash": _tx_hash(int(trade["trade_id"])),
        "tid": int(trade["trade_id"]),
        "feeToken": "USDC",
    }
    fills = [
        [_user(rng), {**common, "side": taker_side, "startPosition": "0.0", "dir": "Open Long" if trade["is_buy"]
                      else "Open Short", "closedPnl": "0.0", "oid": rng.randint(10**10, 10**11), "crossed": True,
                      "fee": "0.01"}],
        [_user(rng), {**common, "side": maker_side, "startPosition": "0.0", "dir": "Open Short" if trade["is_buy"]
                      else "Open Long", "closedPnl": "0.0", "oid": rng.randint(10**10, 10**11), "crossed": False,
                      "fee": "-0.002"}],
    ]
    if rng.random() < 0.5:
        fills.reverse()
    return fills


def _flush_block(
    coin: str,
    trades: list[dict[str, Any]],
    rng: random.Random,
    lines_by_key: dict[str, list[bytes]],
    key_for: Any,
    max_delay_ms: int,
    rotation_lag_ms: int,
) -> None:
    ms = int(trades[0]["ts_exchange"]) // 1000
    block_ns = ms * 1_000_000 + rng.randint(0, 999_999)
    local_ns = block_ns + rng.randint(20, max(20, max_delay_ms)) * 1_000_000 + rng.randint(0, 999_999)
    events = [fill for trade in trades for fill in _fill_pair(trade.get("coin", coin), trade, rng)]
    record = {
        "local_time": _iso_ns(local_ns),
        "block_time": _iso_ns(block_ns),
        "block_number": 600_000_000 + ms // 70,
        "events": events,
    }
    filed = local_ns // 1_000_000 - rotation_lag_ms
    lines_by_key[key_for(NODE_FILLS_BY_BLOCK, filed)].append(_dumps(record))


def _key_order(key: str) -> tuple[str, str, int]:
    head, day, hour = key.rsplit("/", 2)
    return head, day, int(hour.split(".")[0])
