"""Parse one hourly object, every coin at once, into a columnar frame (one row per taker fill).

Records, per dataset (fields we do not use are ignored; a missing or ill-typed field we use is an error):

- `node_trades`: `{"coin", "side": "B"|"A" (aggressor), "time": ISO with ns, "px", "sz", "hash",
  "trade_dir_override", "side_info": [buyer, seller]}` (each `{"user", "start_pos", "oid", "twap_id", "cloid"}`).
- `node_fills`: `[user, {"coin", "px", "sz", "side", "time": ms, "crossed", "tid", "hash", "oid", "dir", ...}]`.
- `node_fills_by_block`: `{"local_time", "block_time", "block_number", "events": [[user, fill], ...]}`.

Lines are decoded with msgspec against typed structs, many lines per call. An object is read as a stream of
decompressed chunks cut at line ends; `NDJSON_LIMITS` (sources/limits.py) caps a line, the object's NDJSON and its
decompression ratio, so a hostile object fails in bounded memory and time. Every way an object can be
damaged (LZ4 frame, UTF-8, JSON, a missing or ill-typed field) is one `CorruptArchiveError` naming the object and,
where known, the line.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any, BinaryIO, Literal

import lz4.frame
import msgspec
import polars as pl

from aperiodic_pipelines.domain.errors import CorruptArchiveError
from aperiodic_pipelines.sources.hyperliquid.eras import NODE_FILLS, NODE_FILLS_BY_BLOCK, NODE_TRADES
from aperiodic_pipelines.sources.limits import NDJSON_LIMITS, ArchiveCeilingError, ReadLimits

PARSER_VERSION = 1  # bump when the parsed-hour columns or their meaning change: cached parses are then redone
READ_CHUNK = 16 << 20  # decompressed bytes handed to the decoder at a time
_ISO_FORMAT = "%Y-%m-%dT%H:%M:%S%.f"
_OID_MASK = (1 << 63) - 1

# Columns of a parsed hour, sorted by coin then line. Maker fills are kept only where their trade has no taker
# fill in the same object (the taker may sit in a neighbouring hour; otherwise the month fails as unsided).
HOUR_SCHEMA: dict[str, pl.DataType] = {
    "coin": pl.String(),
    "ts_exchange": pl.Int64(),  # µs
    "ts_arrival": pl.Int64(),  # µs, node_fills_by_block only
    "trade_id": pl.Int64(),  # tid; null in node_trades
    "price": pl.Float64(),
    "qty": pl.Float64(),
    "is_buy": pl.Boolean(),  # the fill's side ("B"); for a taker fill, the aggressor's
    "crossed": pl.Boolean(),  # taker fill (always true in node_trades: one record per trade)
    "hash64": pl.Int64(),  # first 60 bits of the transaction hash: matches a trade across datasets
    "side_fp": pl.Int64(),  # node_trades: fingerprint of side_info (both order ids), to spot B/A twins
    "line": pl.Int64(),
}


class _Fill(msgspec.Struct):
    coin: str
    px: str
    sz: str
    side: Literal["B", "A"]
    time: int
    crossed: bool
    tid: int
    hash: str


class _Block(msgspec.Struct):
    local_time: str
    events: list[tuple[msgspec.Raw, _Fill]]  # the user is not needed: left undecoded


class _Party(msgspec.Struct):
    user: str
    oid: int


class _Trade(msgspec.Struct):
    coin: str
    side: Literal["B", "A"]
    time: str
    px: str
    sz: str
    hash: str
    side_info: tuple[_Party, _Party]
    tid: int | None = None


_RECORD_TYPES: dict[str, Any] = {
    NODE_TRADES: _Trade,
    NODE_FILLS: tuple[msgspec.Raw, _Fill],
    NODE_FILLS_BY_BLOCK: _Block,
}


class HourParser:
    """Feed whole lines (`feed`), then take the frame (`frame`)."""

    def __init__(self, dataset: str, uri: str) -> None:
        self.dataset = dataset
        self.uri = uri
        self.decoder = msgspec.json.Decoder(_RECORD_TYPES[dataset])
        self.records: list[Any] = []  # _Fill or _Trade, in file order
        self.lines: list[int] = []  # the line of each record
        self.arrival: list[str] = []  # node_fills_by_block: the local_time of each fill's block

    def fail(self, line: int | None, why: str) -> CorruptArchiveError:
        where = f"{self.uri} line {line}" if line is not None else self.uri
        return CorruptArchiveError(f"{where}: malformed record ({why})")

    def feed(self, chunk: bytes, first_line: int) -> None:
        """Decode `chunk` (whole lines; its first line is number `first_line`)."""
        try:
            chunk.decode("utf-8")  # msgspec does not look inside the fields it skips
        except UnicodeDecodeError as exc:
            raise self.fail(first_line + chunk.count(b"\n", 0, exc.start), f"not UTF-8: {exc.reason}") from None
        try:
            records = self.decoder.decode_lines(chunk)
        except (msgspec.DecodeError, msgspec.ValidationError):
            raise self._locate(chunk, first_line) from None
        lines = _line_numbers(chunk, first_line, len(records))
        if self.dataset == NODE_FILLS_BY_BLOCK:
            for line, block in zip(lines, records, strict=True):
                n = len(block.events)
                self.records.extend(fill for _, fill in block.events)
                self.lines.extend([line] * n)
                self.arrival.extend([block.local_time] * n)
        elif self.dataset == NODE_FILLS:
            self.records.extend(fill for _, fill in records)
            self.lines.extend(lines)
        else:
            self.records.extend(records)
            self.lines.extend(lines)

    def _locate(self, chunk: bytes, first_line: int) -> CorruptArchiveError:
        for offset, text in enumerate(chunk.split(b"\n")):
            if not text.strip():
                continue
            try:
                self.decoder.decode(text)
            except msgspec.ValidationError as exc:
                return self.fail(first_line + offset, f"bad field: {exc}")
            except msgspec.DecodeError as exc:
                return self.fail(first_line + offset, f"invalid JSON: {exc}")
        return self.fail(None, "undecodable NDJSON")  # pragma: no cover - decode_lines failed, no line does

    def frame(self) -> pl.DataFrame:
        """The parsed hour: taker fills (and makers without a taker in this object), sorted by coin then line."""
        records, n = self.records, len(self.records)
        line = pl.Series("line", self.lines, dtype=pl.Int64)
        price = self._positive(pl.Series([r.px for r in records], dtype=pl.String), "px", line)
        qty = self._positive(pl.Series([r.sz for r in records], dtype=pl.String), "sz", line)
        if self.dataset == NODE_TRADES:
            ts = self._iso_us(pl.Series([r.time for r in records], dtype=pl.String), "time", line)
            crossed = pl.Series([True] * n, dtype=pl.Boolean)  # one record per trade, `side` is the aggressor's
            side_fp = pl.Series(
                [((r.side_info[0].oid << 21) ^ r.side_info[1].oid) & _OID_MASK for r in records], dtype=pl.Int64
            )
        else:
            ts = pl.Series([r.time for r in records], dtype=pl.Int64) * 1000
            crossed = pl.Series([r.crossed for r in records], dtype=pl.Boolean)
            side_fp = pl.Series([None] * n, dtype=pl.Int64)
        arrival = (
            self._iso_us(pl.Series(self.arrival, dtype=pl.String), "local_time", line)
            if self.dataset == NODE_FILLS_BY_BLOCK
            else pl.Series([None] * n, dtype=pl.Int64)
        )
        frame = pl.DataFrame(
            {
                "coin": pl.Series([r.coin for r in records], dtype=pl.String),
                "ts_exchange": ts,
                "ts_arrival": arrival,
                "trade_id": pl.Series([r.tid for r in records], dtype=pl.Int64),
                "price": price,
                "qty": qty,
                "is_buy": pl.Series([r.side for r in records], dtype=pl.String) == "B",
                "crossed": crossed,
                "hash64": pl.Series([r.hash for r in records], dtype=pl.String)
                .str.slice(2, 15)
                .str.to_integer(base=16, strict=False),
                "side_fp": side_fp,
                "line": line,
            },
            schema=HOUR_SCHEMA,
        )
        takers = frame.filter(pl.col("crossed"))
        # Hyperliquid tids are unique across the venue, so the coin need not be part of the match.
        lone_makers = frame.filter(~pl.col("crossed") & ~pl.col("trade_id").is_in(takers.get_column("trade_id")))
        return pl.concat([takers, lone_makers]).sort("coin", "line", maintain_order=True)

    def _positive(self, text: pl.Series, field: str, line: pl.Series) -> pl.Series:
        number = text.cast(pl.Float64, strict=False)
        bad = number.is_null() | ~number.is_finite() | (number <= 0)
        if bad.any():
            index = int(bad.arg_true()[0])
            raise self.fail(int(line[index]), f"{field}={text[index]!r} is not a positive number")
        return number

    def _iso_us(self, text: pl.Series, field: str, line: pl.Series) -> pl.Series:
        """ISO timestamps without zone (UTC, up to ns) → µs since the epoch, truncated."""
        parsed = text.str.strip_suffix("Z").str.to_datetime(format=_ISO_FORMAT, time_unit="ns", strict=False)
        bad = parsed.is_null() & text.is_not_null()
        if bad.any():
            index = int(bad.arg_true()[0])
            raise self.fail(int(line[index]), f"{field}={text[index]!r} is not an ISO timestamp")
        return parsed.cast(pl.Int64) // 1000


def _line_numbers(chunk: bytes, first_line: int, records: int) -> list[int]:
    lines = chunk.count(b"\n") + (0 if chunk.endswith(b"\n") else 1)
    if records == 0:
        return []
    if lines == records:
        return list(range(first_line, first_line + records))
    # blank lines were skipped by the decoder
    return [first_line + i for i, text in enumerate(chunk.split(b"\n")) if text.strip()]


def parse_ndjson(data: bytes, dataset: str, uri: str = "<bytes>") -> pl.DataFrame:
    """Parse decompressed NDJSON of one hour (every coin). For benchmarks and tests; objects go through
    `parse_object`, which streams."""
    parser = HourParser(dataset, uri)
    parser.feed(data, 1)
    return parser.frame()


class _HashingReader(io.RawIOBase):
    """Wraps a binary file; hashes every byte read so the sha256 comes for free with decompression."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self.sha256 = hashlib.sha256()
        self.consumed = 0  # compressed bytes handed to the decompressor

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self.raw.read(len(buffer))
        buffer[: len(data)] = data
        self.sha256.update(data)
        self.consumed += len(data)
        return len(data)

    def drain(self) -> None:
        while chunk := self.raw.read(1 << 20):
            self.sha256.update(chunk)


_FRAME_ERRORS = (RuntimeError, EOFError, OSError, ValueError)


def parse_object(
    path: Path, dataset: str, uri: str, *, limits: ReadLimits = NDJSON_LIMITS
) -> tuple[pl.DataFrame, str, int]:
    """Decompress and parse one object file; return (parsed hour, sha256 of the compressed bytes, NDJSON bytes)."""
    parser = HourParser(dataset, uri)
    decompressed = 0
    with open(path, "rb") as raw_file:
        hashing = _HashingReader(raw_file)
        with lz4.frame.LZ4FrameFile(hashing, "rb") as stream:
            try:
                carry, line = b"", 1
                while block := stream.read(READ_CHUNK):  # read(n) decompresses at most n bytes
                    decompressed += len(block)
                    limits.check_growth(uri, decompressed, hashing.consumed)
                    cut = block.rfind(b"\n") + 1
                    unfinished = len(carry) + (block.find(b"\n") if cut else len(block))
                    if unfinished > limits.max_line_bytes:  # never hold more of one line than the ceiling
                        raise limits.line_too_long(uri, line)
                    if not cut:
                        carry += block
                        continue
                    data = carry + block[:cut] if carry else block[:cut]
                    carry = block[cut:]
                    del block
                    parser.feed(data, line)
                    line += data.count(b"\n")
                    del data
                if carry:
                    parser.feed(carry, line)
            except ArchiveCeilingError:
                raise
            except CorruptArchiveError as parse_error:
                # Damaged compressed bytes can decode into text before the frame checksum fails: when the frame
                # itself is broken, that is the error to report (read on within the ceilings).
                try:
                    while piece := stream.read(READ_CHUNK):
                        decompressed += len(piece)
                        limits.check_growth(uri, decompressed, hashing.consumed)
                except _FRAME_ERRORS as exc:
                    raise _frame_error(uri, exc) from None
                except ArchiveCeilingError:
                    pass
                raise parse_error from None
            except _FRAME_ERRORS as exc:
                raise _frame_error(uri, exc) from None
        hashing.drain()
    return parser.frame(), hashing.sha256.hexdigest(), decompressed


def _frame_error(uri: str, exc: BaseException) -> CorruptArchiveError:
    return CorruptArchiveError(f"{uri}: not a valid LZ4 frame stream ({type(exc).__name__}: {exc})")
