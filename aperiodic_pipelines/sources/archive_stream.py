"""Stream the CSV inside a zip or gzip archive into polars frames, never extracting it to disk.

Inflate uses ISA-L (`isal`, 2–3× the standard library's zlib; the stdlib is the fallback) on a background
thread while polars parses the previous block. Every way an archive can be bad is one `CorruptArchiveError`
naming the object, and the line where known: not a zip/gzip, corrupt deflate data, a truncated member, a CRC
or size mismatch, a gzip frame error, invalid UTF-8, a row that does not parse, or a ceiling of `ReadLimits`
exceeded (a line, a member's decompressed size, its decompression ratio). Such errors are permanent: callers
evict the cached file and never retry.

The ceilings keep a hostile archive (a zip bomb, a CSV that is one endless line) to bounded memory and time:
decompression hands out at most `PIECE_BYTES` at a time, an unfinished line is never held beyond
`max_line_bytes`, and the stream stops once it inflates past `max_member_bytes` or `max_ratio` × its input.

    source = zip_csv(path, name="BTCUSDT-aggTrades-2024-01.zip")
    frame = lazy_csv(source, schema=..., skip_first_line=True, convert=to_canonical, out_schema=CANONICAL_SCHEMA)
"""

from __future__ import annotations

import queue
import struct
import threading
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import polars as pl
from polars.io.plugins import register_io_source

from aperiodic_pipelines.domain.errors import CorruptArchiveError
from aperiodic_pipelines.sources.limits import CSV_LIMITS, ReadLimits

try:  # ISA-L inflate; same API as zlib
    from isal import igzip as _gzip
    from isal import isal_zlib as _zlib

    _INFLATE_ERRORS: tuple[type[BaseException], ...] = (_zlib.error, zlib.error)
except ImportError:  # pragma: no cover - isal is a declared dependency
    import gzip as _gzip  # type: ignore[no-redef]

    _zlib = zlib  # type: ignore[assignment]
    _INFLATE_ERRORS = (zlib.error,)

READ_BYTES = 4 << 20  # compressed bytes per read
PIECE_BYTES = 4 << 20  # most decompressed bytes one inflate call may return (a bomb never lands in one piece)
BLOCK_BYTES = 64 << 20  # CSV bytes per parsed block: bounded memory, big enough for polars' threads
_BOM = b"\xef\xbb\xbf"
_LOCAL_HEADER = struct.Struct("<4s5H3L2H")


@dataclass(frozen=True)
class CsvSource:
    """A CSV inside an archive: `name` is what errors name; `chunks()` yields its checked decompressed bytes
    (each at most `PIECE_BYTES`)."""

    name: str
    chunks: Callable[[], Iterator[bytes]]
    limits: ReadLimits = CSV_LIMITS


# --- zip ----------------------------------------------------------------------------------------------------


def zip_csv(path: Path, *, name: str, limits: ReadLimits = CSV_LIMITS) -> CsvSource:
    """The single member of a zip archive (checked now: a readable zip with exactly one file, deflated or stored,
    whose declared size and ratio are within `limits`)."""
    info, data_offset = _single_member(Path(path), name=name, limits=limits)
    return CsvSource(
        name=name, chunks=lambda: _inflate_member(Path(path), info, data_offset, name=name, limits=limits),
        limits=limits,
    )


def check_zip_structure(path: Path, *, name: str, limits: ReadLimits = CSV_LIMITS) -> None:
    """Cheap check before caching: a readable zip with one deflated or stored member whose declared size and
    ratio are within `limits` (the data is checked when read)."""
    _single_member(Path(path), name=name, limits=limits)


def _single_member(path: Path, *, name: str, limits: ReadLimits) -> tuple[zipfile.ZipInfo, int]:
    try:
        with zipfile.ZipFile(path) as archive:
            members = [m for m in archive.infolist() if not m.is_dir()]
        if len(members) != 1:
            shown = [m.filename for m in members[:5]] + (["…"] if len(members) > 5 else [])
            raise CorruptArchiveError(f"{name}: expected one CSV inside, found {len(members)}: {shown}")
        info = members[0]
        with open(path, "rb") as handle:
            handle.seek(info.header_offset)
            header = handle.read(_LOCAL_HEADER.size)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError, struct.error) as exc:
        raise CorruptArchiveError(f"{name} is not a readable zip archive: {exc}") from None
    if len(header) < _LOCAL_HEADER.size or header[:4] != b"PK\x03\x04":
        raise CorruptArchiveError(f"{name}: member {info.filename} has no local file header (corrupt zip)")
    if info.flag_bits & 0x1:
        raise CorruptArchiveError(f"{name}: member {info.filename} is encrypted")
    if info.compress_type not in (zipfile.ZIP_DEFLATED, zipfile.ZIP_STORED):
        raise CorruptArchiveError(f"{name}: member {info.filename} uses unsupported compression {info.compress_type}")
    limits.check_declared(f"{name}: member {info.filename}", info.file_size, info.compress_size)
    *_, name_length, extra_length = _LOCAL_HEADER.unpack(header)
    return info, info.header_offset + _LOCAL_HEADER.size + name_length + extra_length


def _inflate_member(
    path: Path, info: zipfile.ZipInfo, offset: int, *, name: str, limits: ReadLimits = CSV_LIMITS
) -> Iterator[bytes]:
    """The member's bytes in pieces of at most `PIECE_BYTES`, stopping at the first ceiling crossed (the declared
    size included: a member that inflates past it fails at once, not after the bomb has gone off)."""
    where = f"{name}: member {info.filename}"
    inflater = _zlib.decompressobj(-15) if info.compress_type == zipfile.ZIP_DEFLATED else None
    crc, produced, remaining = 0, 0, info.compress_size
    pending = b""  # compressed bytes read but not yet inflated
    try:
        with open(path, "rb") as handle:
            handle.seek(offset)
            while True:
                if not pending:
                    if remaining <= 0 or (inflater is not None and inflater.eof):
                        break
                    pending = handle.read(min(READ_BYTES, remaining))
                    if not pending:
                        raise CorruptArchiveError(
                            f"{where} is truncated: {info.compress_size - remaining} of {info.compress_size} "
                            "compressed bytes present (corrupt archive)"
                        )
                    remaining -= len(pending)
                if inflater is None:
                    out, pending = pending, b""
                else:
                    out = inflater.decompress(pending, PIECE_BYTES)
                    pending = inflater.unconsumed_tail
                if out:
                    produced += len(out)
                    consumed = info.compress_size - remaining - len(pending)
                    limits.check_growth(where, produced, consumed, declared=info.file_size)
                    crc = _zlib.crc32(out, crc)
                    yield out
            if inflater is not None:
                tail = inflater.flush()
                if tail:
                    produced += len(tail)
                    limits.check_growth(where, produced, info.compress_size, declared=info.file_size)
                    crc = _zlib.crc32(tail, crc)
                    yield tail
                if not inflater.eof:
                    raise CorruptArchiveError(f"{where} is truncated: its deflate stream ends early (corrupt archive)")
    except _INFLATE_ERRORS as exc:
        raise CorruptArchiveError(f"{where}: corrupt deflate data ({exc})") from None
    except OSError as exc:
        raise CorruptArchiveError(f"{where} cannot be read: {exc}") from None
    if produced != info.file_size:
        raise CorruptArchiveError(f"{where}: {produced} bytes inflated, the zip declares {info.file_size} (corrupt)")
    if crc != info.CRC:
        raise CorruptArchiveError(f"{where} fails its CRC check: {crc:08x}, the zip declares {info.CRC:08x}")


# --- gzip ---------------------------------------------------------------------------------------------------


def gzip_csv(path: Path, *, name: str, limits: ReadLimits = CSV_LIMITS) -> CsvSource:
    """A gzip file (one or more members; CRC and length checked). An empty file or empty member holds no rows."""
    return CsvSource(name=name, chunks=lambda: _gunzip(Path(path), name=name, limits=limits), limits=limits)


def _gunzip(path: Path, *, name: str, limits: ReadLimits = CSV_LIMITS) -> Iterator[bytes]:
    produced = 0
    try:
        with open(path, "rb") as raw, _gzip.GzipFile(fileobj=raw, mode="rb") as handle:
            while chunk := handle.read(PIECE_BYTES):  # read(n) inflates at most n bytes
                produced += len(chunk)
                # raw.tell() counts compressed bytes read ahead too: the ratio is, if anything, understated.
                limits.check_growth(name, produced, raw.tell())
                yield chunk
    except EOFError as exc:
        raise CorruptArchiveError(f"{name} is truncated: {exc} (corrupt gzip)") from None
    except (*_INFLATE_ERRORS, OSError) as exc:
        raise CorruptArchiveError(f"{name} is not a readable gzip file: {exc}") from None


# --- CSV blocks ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Block:
    """Whole lines of the CSV; `line` is the 1-based line number of the first."""

    line: int
    data: bytes


def first_line(source: CsvSource) -> str:
    """The CSV's first line (BOM and line end dropped), reading only as far as needed; "" for an empty file."""
    head = b""
    chunks = source.chunks()
    try:
        for chunk in chunks:
            head += chunk
            if b"\n" in head:
                break
            if len(head) > source.limits.max_line_bytes:
                raise source.limits.line_too_long(source.name, 1)
    finally:
        chunks.close()
    end = head.find(b"\n")
    if end > source.limits.max_line_bytes or (end < 0 and len(head) > source.limits.max_line_bytes):
        raise source.limits.line_too_long(source.name, 1)
    line = (head if end < 0 else head[:end]).removeprefix(_BOM).rstrip(b"\r")
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CorruptArchiveError(f"{source.name}: invalid UTF-8 at line 1 ({exc.reason})") from None


def iter_blocks(source: CsvSource, *, block_bytes: int = BLOCK_BYTES) -> Iterator[Block]:
    """Blocks of whole lines, checked to be UTF-8; decompression runs one step ahead on a background thread.

    An unfinished line is never held beyond `source.limits.max_line_bytes`: memory stays at about one block
    whatever the archive holds."""
    max_line = source.limits.max_line_bytes
    line = 1
    parts: list[bytes] = []
    size = 0
    unfinished = 0  # bytes since the last line end
    first = True
    for chunk in _prefetch(source.chunks()):
        if first:
            chunk, first = chunk.removeprefix(_BOM), False
        first_end = chunk.find(b"\n")
        if first_end < 0:
            unfinished += len(chunk)
        elif unfinished + first_end > max_line:  # the unfinished line ends in this chunk, too long
            raise source.limits.line_too_long(source.name, line + sum(part.count(b"\n") for part in parts))
        else:
            unfinished = len(chunk) - chunk.rfind(b"\n") - 1
        if unfinished > max_line:
            before = sum(part.count(b"\n") for part in parts) + chunk.count(b"\n")
            raise source.limits.line_too_long(source.name, line + before)
        parts.append(chunk)
        size += len(chunk)
        if size < block_bytes:
            continue
        data = b"".join(parts)  # one copy per block, not one per chunk
        cut = data.rfind(b"\n") + 1
        if cut == 0:  # only with a block smaller than the line ceiling
            parts = [data]
            continue
        block, tail = data[:cut], data[cut:]
        parts, size = [tail], len(tail)
        del data
        _check_utf8(block, source.name, line)
        yield Block(line, block)
        line += block.count(b"\n")
    data = b"".join(parts)
    if data:
        _check_utf8(data, source.name, line)
        yield Block(line, data)


def _check_utf8(data: bytes, name: str, line: int) -> None:
    if data.isascii():
        return
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        bad_line = line + data.count(b"\n", 0, exc.start)
        raise CorruptArchiveError(f"{name}: invalid UTF-8 at line {bad_line} ({exc.reason})") from None


def _prefetch(chunks: Iterator[bytes], depth: int = 2) -> Iterator[bytes]:
    """Run `chunks` on a thread, `depth` items ahead (inflate releases the GIL, so it overlaps parsing)."""
    slots: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def produce() -> None:
        try:
            for chunk in chunks:
                while not stop.is_set():
                    try:
                        slots.put(chunk, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            item: object = done
        except BaseException as exc:  # handed to the consumer, which raises it
            item = exc
        finally:
            chunks.close()
        while not stop.is_set():
            try:
                slots.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    worker = threading.Thread(target=produce, name="archive-inflate", daemon=True)
    worker.start()
    try:
        while True:
            item = slots.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        worker.join()


# --- parsing ------------------------------------------------------------------------------------------------


def parse_block(
    block: Block, schema: dict[str, pl.DataType], *, name: str, required: tuple[str, ...] | None = None
) -> pl.DataFrame:
    """Parse whole CSV lines with `schema` (no header); a row that does not fit (too many fields, a value of the
    wrong type, a missing or empty `required` field, a blank line) is named by its line."""
    try:
        frame = pl.read_csv(
            block.data, has_header=False, schema=schema, raise_if_empty=False, truncate_ragged_lines=False
        )
    except pl.exceptions.PolarsError as exc:
        problem = _first_bad_line(block, schema)
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if problem is None:
            raise CorruptArchiveError(f"{name}: malformed rows in lines {block.line}+: {detail}") from None
        number, text, reason = problem
        raise CorruptArchiveError(f"{name}: malformed row at line {number}: {text!r} ({reason})") from None
    columns = list(schema) if required is None else list(required)
    incomplete = frame.select(pl.any_horizontal([pl.col(c).is_null() for c in columns]).arg_true().first()).item()
    if incomplete is not None:  # polars reads a short row or a blank line as nulls: refuse it here
        text = block.data.split(b"\n", incomplete + 1)[incomplete].decode("utf-8", errors="replace").rstrip("\r")
        raise CorruptArchiveError(
            f"{name}: malformed row at line {block.line + incomplete}: {text!r} (missing fields; expected "
            f"{','.join(schema)})"
        )
    return frame


def _first_bad_line(block: Block, schema: dict[str, pl.DataType]) -> tuple[int, str, str] | None:
    """Find the first line that does not fit `schema` (only on the error path: plain Python is fine)."""
    types = list(schema.values())
    for offset, raw in enumerate(block.data.split(b"\n")):
        text = raw.decode("utf-8", errors="replace").rstrip("\r")
        if not text:
            continue
        fields = text.split(",")
        if len(fields) != len(types):
            return block.line + offset, text, f"{len(fields)} fields, expected {len(types)}"
        for value, dtype in zip(fields, types, strict=True):
            if value == "":
                continue
            try:
                if dtype.is_integer():
                    int(value)
                elif dtype.is_float():
                    float(value)
                elif dtype == pl.Boolean() and value.lower() not in ("true", "false"):
                    raise ValueError
            except ValueError:
                return block.line + offset, text, f"{value!r} is not {dtype}"
    return None


def lazy_csv(
    source: CsvSource,
    *,
    schema: dict[str, pl.DataType],
    skip_first_line: bool,
    convert: Callable[[pl.DataFrame, int], pl.DataFrame],
    out_schema: dict[str, pl.DataType],
    required: tuple[str, ...] | None = None,
) -> pl.LazyFrame:
    """A lazy frame streaming `source`: each block is parsed with `schema` and turned into `out_schema`
    columns by `convert(frame, first_line_number)` (which may raise, naming the object and the line)."""

    def frames(
        with_columns: list[str] | None, predicate: pl.Expr | None, n_rows: int | None, _batch_size: int | None
    ) -> Iterator[pl.DataFrame]:
        remaining = n_rows
        skip = skip_first_line
        for block in iter_blocks(source):
            if skip:
                cut = block.data.find(b"\n") + 1 or len(block.data)
                block, skip = Block(block.line + 1, block.data[cut:]), False
                if not block.data:
                    continue
            frame = convert(parse_block(block, schema, name=source.name, required=required), block.line)
            if predicate is not None:
                frame = frame.filter(predicate)
            if with_columns is not None:
                frame = frame.select(with_columns)
            if remaining is not None:
                frame = frame.head(remaining)
                remaining -= frame.height
            yield frame
            if remaining is not None and remaining <= 0:
                return

    return register_io_source(frames, schema=out_schema)
