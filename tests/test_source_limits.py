"""Hostile archives: every reader (zip, gzip, LZ4; CSV and NDJSON) fails with one `CorruptArchiveError` naming the
object, in bounded memory and time (issue 16 item 3).

Each archive is generated here, small on disk and huge inflated (deflate pieces after a full flush are
self-contained, so one compressed piece repeated N times is a valid stream of N pieces). The read runs in a
child process that reports its own peak RSS; a normal archive read the same way gives the baseline.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import lz4.frame
import numpy as np
import pytest

from aperiodic_pipelines.domain.errors import CorruptArchiveError
from aperiodic_pipelines.sources.archive_stream import first_line, iter_blocks, zip_csv
from aperiodic_pipelines.sources.limits import CSV_LIMITS, NDJSON_LIMITS, ReadLimits

pytestmark = pytest.mark.slow  # each read runs in a child process that imports polars

REPO = Path(__file__).resolve().parents[1]
HEADROOM_KB = 256 * 1024  # issue 16: peak ≤ the normal peak + 256 MB
SECONDS = 20.0  # each hostile read; they take well under a second when the ceilings hold
AGG_ROW = b"1,42000.5,0.25,1,1,1704067200000,true\n"  # a valid aggTrades row
TARDIS_HEADER = b"exchange,symbol,timestamp,local_timestamp,id,side,price,amount\n"
TARDIS_ROW = b"binance-futures,BTCUSDT,1704067200000000,1704067200001000,1,buy,42000.5,0.25\n"


# --- generated archives ---------------------------------------------------------------------------------------


def _deflate_repeated(piece: bytes, times: int, *, head: bytes = b"") -> tuple[bytes, int, int]:
    """A raw deflate stream of `head` + `piece` × `times` (compressed once), with its CRC-32 and size."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    first = compressor.compress(head) + compressor.flush(zlib.Z_FULL_FLUSH) if head else b""
    unit = compressor.compress(piece) + compressor.flush(zlib.Z_FULL_FLUSH)
    stream = first + unit * times + compressor.flush(zlib.Z_FINISH)
    crc = zlib.crc32(head)
    for _ in range(times):
        crc = zlib.crc32(piece, crc)
    return stream, crc, len(head) + len(piece) * times


def _write_zip(path: Path, member: str, deflated: bytes, crc: int, size: int, *, declared: int | None = None) -> None:
    """A one-member zip holding `deflated` as is (declaring `declared` bytes uncompressed, default the truth)."""
    declared = size if declared is None else declared
    name = member.encode()
    local = struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, 8, 0, 0, crc, len(deflated), declared, len(name), 0)
    central = struct.pack(
        "<4s6H3L5H2L", b"PK\x01\x02", 20, 20, 0, 8, 0, 0, crc, len(deflated), declared, len(name), 0, 0, 0, 0, 0, 0
    )
    offset = len(local) + len(name) + len(deflated)
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 1, 1, len(central) + len(name), offset, 0)
    path.write_bytes(local + name + deflated + central + name + end)


def _write_gzip(path: Path, deflated: bytes, crc: int, size: int) -> None:
    path.write_bytes(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff" + deflated + struct.pack("<2L", crc, size & 0xFFFFFFFF))


def _write_lz4(path: Path, piece: bytes, times: int) -> None:
    with lz4.frame.LZ4FrameFile(path, "wb") as handle:
        for _ in range(times):
            handle.write(piece)


def _rows(row: bytes, size: int) -> bytes:
    return row * (size // len(row))


# --- the read, in a child process that reports its peak RSS ------------------------------------------------------

_CHILD = r"""
import json, resource, sys, time
from pathlib import Path
from aperiodic_pipelines.domain.errors import CorruptArchiveError, InvalidTradesError
kind, path, out, lifted = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4] == "lifted"
if lifted:  # the baseline: a big archive of valid rows, read as if its ratio were a real one
    from aperiodic_pipelines.sources.limits import CSV_LIMITS
    object.__setattr__(CSV_LIMITS, "max_ratio", float("inf"))
started = time.perf_counter()
error = None
try:
    if kind == "zip":
        from aperiodic_pipelines.sources.binance import convert_archives
        convert_archives([path], "2024-01", out)
    elif kind == "gzip":
        from aperiodic_pipelines.sources.canonical import build_canonical_month
        from aperiodic_pipelines.sources.tardis import read_file
        build_canonical_month([read_file(path, "binance-futures", "BTCUSDT", "2024-01", name=path.name)], "2024-01",
                              out, outside_month="trim")
    else:
        from aperiodic_pipelines.sources.hyperliquid.parse import parse_object
        parse_object(path, "node_fills", "s3://bucket/" + path.name)
except CorruptArchiveError as exc:
    error = f"{type(exc).__name__}: {exc}"
except InvalidTradesError:  # the baseline's repeated rows, refused after the whole read: its peak is what counts
    assert lifted
print(json.dumps({"error": error, "seconds": time.perf_counter() - started,
                  "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def _read_in_child(kind: str, path: Path, tmp_path: Path, *, lifted: bool = False) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, kind, str(path), str(tmp_path / f"{path.name}.parquet"),
         "lifted" if lifted else "-"],
        capture_output=True, text=True, timeout=120, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


_baselines: dict[str, int] = {}


def _normal_peak_kb(kind: str, tmp_path: Path) -> int:
    """Peak RSS of reading a normal archive of `kind` the same way: for CSV, 160 MB of valid rows (several
    parsed blocks, as a real month has; one row repeated, so the read ends refusing the duplicates, after its
    peak), for NDJSON a small object (once per session and kind)."""
    if kind not in _baselines:
        if kind == "zip":
            path = tmp_path / "normal.zip"
            _write_zip(path, "normal.csv", *_deflate_repeated(_rows(AGG_ROW, 1 << 20), 160))
        elif kind == "gzip":
            path = tmp_path / "normal.csv.gz"
            _write_gzip(path, *_deflate_repeated(_rows(TARDIS_ROW, 1 << 20), 160, head=TARDIS_HEADER))
        else:
            path = tmp_path / "normal.lz4"
            _write_lz4(path, b"\n", 1000)
        report = _read_in_child(kind, path, tmp_path, lifted=True)
        assert report["error"] is None, report
        _baselines[kind] = report["maxrss_kb"]
    return _baselines[kind]


def _assert_refused(kind: str, path: Path, tmp_path: Path, message: str) -> dict:
    report = _read_in_child(kind, path, tmp_path)
    assert report["error"] is not None, f"{path.name} was read without an error: {report}"
    assert path.name in report["error"], report["error"]
    assert message in report["error"], report["error"]
    assert report["seconds"] < SECONDS, report
    normal = _normal_peak_kb(kind, tmp_path)
    assert report["maxrss_kb"] <= normal + HEADROOM_KB, (
        f"peak RSS {report['maxrss_kb'] / 1024:.0f} MB, normal {normal / 1024:.0f} MB + 256 MB allowed"
    )
    return report


# --- the hostile archives ----------------------------------------------------------------------------------------


def test_zip_whose_csv_is_one_long_line_fails_in_bounded_memory(tmp_path: Path) -> None:
    """Issue 16's case: a checksum-valid 1.5 MB zip whose CSV is one 1.5 GB line without a newline (was 7.8 GB).
    Its declared ratio (~1000:1) refuses it before a byte is inflated."""
    deflated, crc, size = _deflate_repeated(b"7" * (1 << 20), 1536)
    path = tmp_path / "BTCUSDT-aggTrades-2024-01.zip"
    _write_zip(path, "BTCUSDT-aggTrades-2024-01.csv", deflated, crc, size)
    assert path.stat().st_size < 4 << 20 and size == 1536 << 20
    _assert_refused("zip", path, tmp_path, "declares a decompression ratio above 100:1")


def test_zip_bomb_line_declaring_a_small_size_fails_in_bounded_memory(tmp_path: Path) -> None:
    """The same 1.5 GB line declaring 1 MB: it fails at the first piece inflated past what it declares."""
    deflated, crc, size = _deflate_repeated(b"7" * (1 << 20), 1536)
    path = tmp_path / "BTCUSDT-aggTrades-2023-12.zip"
    _write_zip(path, "BTCUSDT-aggTrades-2023-12.csv", deflated, crc, size, declared=1 << 20)
    _assert_refused("zip", path, tmp_path, "inflates past the 1048576 bytes its archive declares")


def test_zip_whose_line_is_longer_than_the_ceiling_names_the_line(tmp_path: Path) -> None:
    """A long line that compresses like data (random digits, no bomb): the line ceiling stops it."""
    digits = np.random.default_rng(16).integers(ord("0"), ord("9") + 1, 8 << 20, dtype=np.uint8).tobytes()
    path = tmp_path / "digits.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        archive.writestr("digits.csv", digits)
    with pytest.raises(CorruptArchiveError, match=r"^digits\.zip: line 1 is longer than 1 MiB"):
        list(iter_blocks(zip_csv(path, name=path.name)))
    _assert_refused("zip", path, tmp_path, "line 1 is longer than 1 MiB")


def test_zip_with_a_long_line_after_good_rows_names_its_line(tmp_path: Path) -> None:
    good = AGG_ROW * 1000
    deflated, crc, size = _deflate_repeated(b"7" * (1 << 20), 8)
    head = zlib.compressobj(9, zlib.DEFLATED, -15)
    stream = head.compress(good) + head.flush(zlib.Z_FULL_FLUSH) + deflated
    crc = zlib.crc32(b"7" * (8 << 20), zlib.crc32(good))
    path = tmp_path / "rows-then-line.zip"
    _write_zip(path, "rows.csv", stream, crc, len(good) + size)
    with pytest.raises(CorruptArchiveError, match=r"^rows-then-line\.zip: line 1001 is longer"):
        list(iter_blocks(zip_csv(path, name=path.name)))


def test_zip_declaring_a_bomb_is_refused_before_inflating(tmp_path: Path) -> None:
    deflated, crc, size = _deflate_repeated(_rows(AGG_ROW, 1 << 20), 512)
    path = tmp_path / "BTCUSDT-aggTrades-2024-02.zip"
    _write_zip(path, "BTCUSDT-aggTrades-2024-02.csv", deflated, crc, size)
    with pytest.raises(CorruptArchiveError, match=r"declares a decompression ratio above 100:1 \(5\d\d MiB from"):
        zip_csv(path, name=path.name)
    _assert_refused("zip", path, tmp_path, "decompression ratio above 100:1")


def test_zip_of_valid_rows_that_inflates_past_its_declared_size_stops_there(tmp_path: Path) -> None:
    """Valid rows (declares 1 MB, inflates to 512 MB): parsing them would not stop it; its declared size does."""
    deflated, crc, size = _deflate_repeated(_rows(AGG_ROW, 1 << 20), 512)
    path = tmp_path / "BTCUSDT-aggTrades-2024-03.zip"
    _write_zip(path, "BTCUSDT-aggTrades-2024-03.csv", deflated, crc, size, declared=1 << 20)
    _assert_refused("zip", path, tmp_path, "inflates past the 1048576 bytes its archive declares")


def test_gzip_bomb_of_valid_rows_fails_on_its_ratio(tmp_path: Path) -> None:
    """A gzip declares no size: the ratio stops it (about 64 MB in, whatever its true size)."""
    deflated, crc, size = _deflate_repeated(_rows(TARDIS_ROW, 1 << 20), 2048, head=TARDIS_HEADER)
    path = tmp_path / "binance-futures_trades_2024-01-02_BTCUSDT.csv.gz"
    _write_gzip(path, deflated, crc, size)
    report = _assert_refused("gzip", path, tmp_path, "decompression ratio above 100:1")
    assert "binance-futures_trades_2024-01-02_BTCUSDT.csv.gz: decompression ratio" in report["error"]


def test_gzip_of_one_long_line_fails_in_bounded_memory(tmp_path: Path) -> None:
    deflated, crc, size = _deflate_repeated(b"x" * (1 << 20), 1536)
    path = tmp_path / "binance-futures_trades_2024-01-03_BTCUSDT.csv.gz"
    _write_gzip(path, deflated, crc, size)
    _assert_refused("gzip", path, tmp_path, "line 1 is longer than 1 MiB")


def test_lz4_bomb_fails_on_its_ratio(tmp_path: Path) -> None:
    """Blank lines parse to nothing, so only the ratio (LZ4 reaches ~250:1) can stop this object."""
    path = tmp_path / "7.lz4"
    _write_lz4(path, b"\n" * (4 << 20), 32)  # 128 MB of NDJSON
    _assert_refused("lz4", path, tmp_path, "decompression ratio above 100:1")


def test_ndjson_line_without_a_newline_fails_in_bounded_memory(tmp_path: Path) -> None:
    """Letters that compress like data (no bomb): the 64 MiB line ceiling stops it."""
    path = tmp_path / "8.lz4"
    letters = np.random.default_rng(8).integers(ord("A"), ord("Z") + 1, 80 << 20, dtype=np.uint8).tobytes()
    _write_lz4(path, letters, 1)  # one 80 MB line
    report = _assert_refused("lz4", path, tmp_path, "line 1 is longer than 64 MiB")
    assert report["error"].startswith("ArchiveCeilingError: s3://bucket/8.lz4: line 1")


def test_first_line_never_reads_past_the_line_ceiling(tmp_path: Path) -> None:
    deflated, crc, size = _deflate_repeated(b"h" * (1 << 20), 64)
    path = tmp_path / "header.zip"
    _write_zip(path, "header.csv", deflated, crc, size)
    with pytest.raises(CorruptArchiveError, match=r"^header\.zip: line 1 is longer than 1 MiB"):
        first_line(zip_csv(path, name=path.name))


def test_ceilings_are_far_above_real_archives() -> None:
    """The documented defaults (docs/sources.md, "Ceilings"): a real line, member or ratio never reaches them."""
    assert ReadLimits(max_line_bytes=1 << 20, max_member_bytes=128 << 30, max_ratio=100.0) == CSV_LIMITS
    assert NDJSON_LIMITS.max_line_bytes == 64 << 20 and NDJSON_LIMITS.max_member_bytes == 8 << 30
    real_row = len(b"3342233401,42283.80,0.004,4506512000,4506512001,1704067200098,false\n")
    assert CSV_LIMITS.max_line_bytes > 1000 * real_row
    CSV_LIMITS.check_growth("a 2 GB zip inflating 20:1", 40 << 30, 2 << 30)  # a big real month passes


def test_a_klines_zip_is_read_whole_only_below_its_ceiling(tmp_path: Path) -> None:
    """Klines are read into memory whole (~5 MB a month): their ceiling is 64 MiB, checked before inflating."""
    from aperiodic_pipelines.sources.klines import KLINES_LIMITS, read_klines_zip

    assert KLINES_LIMITS.max_member_bytes == 64 << 20
    digits = np.random.default_rng(3).integers(ord("0"), ord("9") + 1, 65 << 20, dtype=np.uint8).tobytes()
    path = tmp_path / "BTCUSDT-1m-2024-01.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        archive.writestr("BTCUSDT-1m-2024-01.csv", digits)
    with pytest.raises(CorruptArchiveError, match=r"^BTCUSDT-1m-2024-01\.zip: member .* declares 65 MiB uncompressed, "
                       r"above the ceiling of 64 MiB"):
        read_klines_zip(path, "2024-01", name=path.name)
