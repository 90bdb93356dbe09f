"""Writers that turn canonical trades into archive files laid out and formatted as each exchange publishes them.

Used by tests and the demo together with `ArchiveMirror`. Bytes are deterministic (fixed zip timestamps,
gzip mtime 0). Helpers at the bottom damage files on purpose (wrong checksum, corrupt zip).

Input is canonical trades (spec §1: µs timestamps). Binance and OKX archives carry ms, so sub-ms digits are
dropped on the way (`ts_exchange // 1000`); Tardis files keep µs.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import struct
import zipfile
import zlib
from collections.abc import Collection
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Literal

import polars as pl

from aperiodic_pipelines.sources import binance, okx, tardis
from aperiodic_pipelines.sources.canonical import DAY_US, days_of_month, month_bounds_us

_ZIP_TIME = (2020, 1, 1, 0, 0, 0)


def _day_start_us(day: str) -> int:
    return int(datetime.fromisoformat(day).replace(tzinfo=UTC).timestamp()) * 1_000_000


def _bool_text(expr: pl.Expr) -> pl.Expr:
    return pl.when(expr).then(pl.lit("true")).otherwise(pl.lit("false"))


def write_zip(path: Path, member: str, payload: bytes) -> None:
    """A one-member deflated zip with a fixed timestamp (same payload → same bytes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    info = zipfile.ZipInfo(member, date_time=_ZIP_TIME)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = 0o644 << 16
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(info, payload)
    path.write_bytes(buffer.getvalue())


def write_checksum(zip_path: Path) -> Path:
    """Write the `.CHECKSUM` sidecar in sha256sum format (`<hex>  <file name>`), as Binance does."""
    digest = hashlib.sha256(zip_path.read_bytes()).hexdigest()
    sidecar = zip_path.with_name(zip_path.name + ".CHECKSUM")
    sidecar.write_text(f"{digest}  {zip_path.name}\n")
    return sidecar


def write_wrong_checksum(zip_path: Path) -> str:
    """Replace the sidecar with a digest that does not match; returns the wrong digest."""
    wrong = hashlib.sha256(b"not the archive").hexdigest()
    zip_path.with_name(zip_path.name + ".CHECKSUM").write_text(f"{wrong}  {zip_path.name}\n")
    return wrong


def corrupt_zip(zip_path: Path, *, update_checksum: bool = True) -> None:
    """Damage the compressed data in the middle of the archive (and, by default, publish the matching
    checksum, as an exchange that zipped a bad file would)."""
    data = bytearray(zip_path.read_bytes())
    middle = len(data) // 2
    for offset in range(middle, min(middle + 64, len(data) - 30)):
        data[offset] ^= 0xFF
    zip_path.write_bytes(bytes(data))
    if update_checksum and zip_path.with_name(zip_path.name + ".CHECKSUM").exists():
        write_checksum(zip_path)


# --- binance-futures -------------------------------------------------------------------------------------


def binance_csv(
    trades: pl.DataFrame, *, dataset: str = "aggTrades", header: bool = True, timestamp_unit: str = "ms"
) -> bytes:
    """Rows as in data.binance.vision futures/um CSVs: `true`/`false` flags, `is_buyer_maker` = taker sold."""
    divisor = 1000 if timestamp_unit == "ms" else 1
    time = pl.col("ts_exchange") // divisor
    maker = _bool_text(~pl.col("is_buy"))
    if dataset == "aggTrades":
        # first/last underlying trade ids are not in canonical trades; make plausible increasing ones.
        first = pl.col("trade_id") * 3
        table = trades.select(
            agg_trade_id=pl.col("trade_id"),
            price=pl.col("price"),
            quantity=pl.col("qty"),
            first_trade_id=first,
            last_trade_id=first + 2,
            transact_time=time,
            is_buyer_maker=maker,
        )
    elif dataset == "trades":
        table = trades.select(
            id=pl.col("trade_id"),
            price=pl.col("price"),
            qty=pl.col("qty"),
            quote_qty=(pl.col("price") * pl.col("qty")).round(8),
            time=time,
            is_buyer_maker=maker,
        )
    else:
        raise ValueError(f"dataset must be aggTrades or trades, got {dataset!r}")
    return table.write_csv(include_header=header, quote_style="never").encode()


def write_binance_month(
    root: Path,
    native_symbol: str,
    month: str,
    trades: pl.DataFrame,
    *,
    dataset: str = "aggTrades",
    header: bool = True,
    daily: bool = False,
    interleave: bool = False,
    duplicate_rows: int = 0,
    timestamp_unit: str = "ms",
    days: Collection[str] | None = None,
) -> list[Path]:
    """Write a month of `trades` as Binance archives (+ `.CHECKSUM`) under `root`; returns the zip paths.

    `daily=True` writes one archive per UTC day of the month (rows of that day only) instead of the monthly
    one; `days` then limits them to those days (a month still open upstream). `interleave` alternates blocks from the two halves of the file (as some monthly files do);
    `duplicate_rows` repeats that many rows (evenly spread) right after themselves.
    """
    root = Path(root)
    trades = trades.sort("ts_exchange", "trade_id")
    if daily:
        periods = [(day, _day_start_us(day)) for day in days_of_month(month) if days is None or day in days]
    else:
        periods = [(month, month_bounds_us(month)[0])]
    written = []
    for period, start in periods:
        if daily:
            rows = trades.filter(pl.col("ts_exchange").is_between(start, start + DAY_US, closed="left"))
        else:
            rows = trades
        rows = _with_duplicates(rows, duplicate_rows)
        if interleave:
            rows = _interleave_halves(rows)
        path = root / binance.archive_path(native_symbol, dataset, period)
        payload = binance_csv(rows, dataset=dataset, header=header, timestamp_unit=timestamp_unit)
        write_zip(path, f"{native_symbol}-{dataset}-{period}.csv", payload)
        write_checksum(path)
        written.append(path)
    return written


def _with_duplicates(rows: pl.DataFrame, count: int) -> pl.DataFrame:
    if count <= 0 or rows.height == 0:
        return rows
    step = max(1, rows.height // count)
    picks = set(range(0, rows.height, step)[:count])
    order = [i for i in range(rows.height) for _ in range(2 if i in picks else 1)]
    return rows[order]


def _interleave_halves(rows: pl.DataFrame, block: int = 7) -> pl.DataFrame:
    half = rows.height // 2
    first, second = list(range(half)), list(range(half, rows.height))
    order: list[int] = []
    for start in range(0, max(len(first), len(second)), block):
        order += first[start : start + block] + second[start : start + block]
    return rows[order]


# --- okx-perps -------------------------------------------------------------------------------------------


def write_okx_month(
    root: Path,
    instid: str,
    month: str,
    trades: pl.DataFrame,
    *,
    header: Literal["current", "legacy", "none"] = "current",
    legacy_header: bool = False,
    contract_value: float | None = None,
    with_source_column: bool = False,
    dates: Collection[date] | None = None,
) -> list[Path]:
    """Write OKX daily trade archives for the UTC month: files dated its 1st to the next month's 1st, each
    covering [D−1 16:00 UTC, D 16:00 UTC). Trades outside that span are not written. `size` is in contracts,
    each trade converted with the contract value in force at its time (`okx.contract_table()`), unless
    `contract_value` forces one. `header`: the current English header, the legacy bilingual one, or `"none"`
    (headerless files in the legacy column order, as OKX published before 2022). `dates` limits the files to
    those dates (a month still open upstream)."""
    root = Path(root)
    header = "legacy" if legacy_header else header
    trades = trades.sort("ts_exchange", "trade_id")
    written = []
    for day in okx.file_dates(month):
        if dates is not None and day not in dates:
            continue
        day_text = f"{day:%Y-%m-%d}"
        end = _day_start_us(day_text) - 8 * 3_600_000_000 + DAY_US
        rows = trades.filter(pl.col("ts_exchange").is_between(end - DAY_US, end, closed="left"))
        if contract_value is None:
            rows = rows.with_columns(size=okx.contract_sizes(instid, rows))
        elif okx.contract_entries(instid)[-1].kind == "linear":
            rows = rows.with_columns(size=pl.col("qty") / contract_value)
        else:
            rows = rows.with_columns(size=pl.col("qty") * pl.col("price") / contract_value)
        table = rows.select(
            instrument_name=pl.lit(instid),
            trade_id=pl.col("trade_id"),
            side=pl.when(pl.col("is_buy")).then(pl.lit("buy")).otherwise(pl.lit("sell")),
            price=pl.col("price"),
            size=pl.col("size"),
            created_time=pl.col("ts_exchange") // 1000,
        )
        if with_source_column:
            table = table.with_columns(source=pl.lit(0))
        if header == "current":
            payload = table.write_csv(include_header=True)
        else:
            table = table.select("trade_id", "side", "size", "price", "created_time")
            payload = table.write_csv(include_header=False)
            if header == "legacy":
                payload = okx.LEGACY_HEADER + "\n" + payload
        path = root / okx.archive_path(instid, day)
        write_zip(path, f"{instid}-trades-{day_text}.csv", payload.encode())
        written.append(path)
    return written


# --- Tardis ----------------------------------------------------------------------------------------------


def gzip_bytes(payload: bytes) -> bytes:
    """One gzip member with mtime 0 (same payload → same bytes)."""
    buffer = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, mtime=0) as handle:
        handle.write(payload)
    return buffer.getvalue()


def write_tardis_days(
    root: Path,
    exchange: str,
    symbol: str,
    month: str,
    trades: pl.DataFrame,
    *,
    layout: Literal["download", "api"] = "download",
    contract_value: float | None = None,
    days: Collection[str] | None = None,
) -> list[Path]:
    """Write Tardis trades CSVs (gzip), one per UTC day of `local_timestamp` (= `ts_arrival`), for every day
    of the month plus any neighbouring day that holds rows. `symbol` is the native id (Tardis upper-cases it);
    `exchange` ours (mapped to Tardis's id). OKX amounts are written in contracts. A day without trades is an
    empty gzip file (no header), as Tardis serves it.

    `layout="download"`: flat `{root}/{exchange}_trades_{YYYY-MM-DD}_{SYMBOL}.csv.gz`, as the tardis-dev clients
    save files; `"api"`: `{root}/v1/{exchange}/trades/{YYYY}/{MM}/{DD}/{SYMBOL}.csv.gz`, the datasets API.
    `days` limits the files to those days (a month still open upstream)."""
    root = Path(root)
    if trades.get_column("ts_arrival").null_count():
        raise ValueError("Tardis files need arrival times: trades with null ts_arrival")
    trades = trades.sort("ts_arrival", "trade_id")
    arrival_day = (pl.col("ts_arrival") // DAY_US).alias("_day")
    day_numbers = set(trades.select(arrival_day.unique()).to_series().to_list())
    day_numbers |= {_day_start_us(d) // DAY_US for d in days_of_month(month)}
    written = []
    for number in sorted(day_numbers):
        day_text = f"{date(1970, 1, 1) + timedelta(days=number)}"
        if days is not None and day_text not in days:
            continue
        rows = trades.filter(arrival_day == number)
        amount = pl.col("qty")
        if exchange == "okx-perps":
            amount = pl.col("size")
            if contract_value is not None:
                rows = rows.with_columns(size=pl.col("qty") / contract_value)
            else:
                rows = rows.with_columns(size=okx.contract_sizes(symbol, rows))
        table = rows.select(
            exchange=pl.lit(tardis.tardis_exchange(exchange)),
            symbol=pl.lit(tardis.tardis_symbol(symbol)),
            timestamp=pl.col("ts_exchange"),
            local_timestamp=pl.col("ts_arrival"),
            id=pl.col("trade_id").cast(pl.String),
            side=pl.when(pl.col("is_buy")).then(pl.lit("buy")).otherwise(pl.lit("sell")),
            price=pl.col("price"),
            amount=amount,
        )
        if layout == "download":
            path = root / tardis.download_file_name(exchange, symbol, day_text)
        else:
            path = root / tardis.api_path(exchange, symbol, day_text)
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = table.write_csv(include_header=True).encode() if table.height else b""
        path.write_bytes(gzip_bytes(payload))
        written.append(path)
    return written


# --- damage: every way an archive can be corrupt ------------------------------------------------------------

ZIP_DAMAGE = ("not_a_zip", "corrupt_deflate", "truncated_member", "crc_mismatch", "invalid_utf8")
GZIP_DAMAGE = ("not_a_gzip", "corrupt_deflate", "truncated", "crc_mismatch", "frame_error", "invalid_utf8")


def raw_zip(member: str, compressed: bytes, *, crc: int, file_size: int, method: int = 8) -> bytes:
    """A one-member zip assembled by hand from already-compressed bytes and the CRC/size it should declare, so
    damaged members can be built with an intact structure."""
    name = member.encode()
    dos_time, dos_date = 0, (2020 - 1980) << 9 | 1 << 5 | 1
    local = struct.pack(
        "<4s5H3L2H", b"PK\x03\x04", 20, 0, method, dos_time, dos_date, crc, len(compressed), file_size, len(name), 0
    )
    central = struct.pack(
        "<4s6H3L5H2L", b"PK\x01\x02", 20, 20, 0, method, dos_time, dos_date, crc, len(compressed), file_size,
        len(name), 0, 0, 0, 0, 0o644 << 16, 0,
    )
    body = local + name + compressed
    directory = central + name
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 1, 1, len(directory), len(body), 0)
    return body + directory + end


def damage_zip(zip_path: Path, kind: str, *, update_checksum: bool = True) -> None:
    """Rewrite a one-member zip damaged as `kind` (see `ZIP_DAMAGE`), keeping its name; by default the
    `.CHECKSUM` is re-published to match the damaged bytes, as an exchange that zipped a bad file would."""
    with zipfile.ZipFile(zip_path) as archive:
        (info,) = archive.infolist()
        payload = archive.read(info)
    deflater = zlib.compressobj(6, zlib.DEFLATED, -15)
    compressed = deflater.compress(payload) + deflater.flush()
    crc, size = zlib.crc32(payload), len(payload)
    if kind == "not_a_zip":
        data = b"<html><body>404 Not Found</body></html>\n" * 20
    elif kind == "corrupt_deflate":  # the structure and the declared CRC stay intact; the deflate data does not
        middle = bytearray(compressed)
        for offset in range(len(middle) // 2, min(len(middle) // 2 + 64, len(middle) - 8)):
            middle[offset] ^= 0x5A
        data = raw_zip(info.filename, bytes(middle), crc=crc, file_size=size)
    elif kind == "truncated_member":  # the member's deflate stream stops half-way (its sizes say so too)
        data = raw_zip(info.filename, compressed[: len(compressed) // 2], crc=crc, file_size=size)
    elif kind == "crc_mismatch":  # valid deflate data whose CRC is not the declared one
        data = raw_zip(info.filename, compressed, crc=crc ^ 0xFFFF, file_size=size)
    elif kind == "invalid_utf8":  # a well-formed zip of a CSV with a byte that is not UTF-8 on its third line
        lines = payload.split(b"\n")
        lines[2] = lines[2].replace(b",", b"\xff,", 1)
        write_zip(zip_path, info.filename, b"\n".join(lines))
        data = zip_path.read_bytes()
    else:
        raise ValueError(f"kind must be one of {ZIP_DAMAGE}, got {kind!r}")
    zip_path.write_bytes(data)
    if update_checksum and zip_path.with_name(zip_path.name + ".CHECKSUM").exists():
        write_checksum(zip_path)


def damage_gzip(gz_path: Path, kind: str) -> None:
    """Rewrite a gzip file damaged as `kind` (see `GZIP_DAMAGE`)."""
    data = gz_path.read_bytes()
    payload = gzip.decompress(data)
    if kind == "not_a_gzip":
        out = payload  # the plain CSV, as if someone forgot to compress it
    elif kind == "corrupt_deflate":
        body = bytearray(data)
        for offset in range(len(body) // 2, min(len(body) // 2 + 64, len(body) - 8)):
            body[offset] ^= 0x5A
        out = bytes(body)
    elif kind == "truncated":
        out = data[: len(data) // 2]
    elif kind == "crc_mismatch":  # trailer: CRC32 then ISIZE, little-endian
        crc = struct.unpack("<L", data[-8:-4])[0] ^ 0xFFFF
        out = data[:-8] + struct.pack("<L", crc) + data[-4:]
    elif kind == "frame_error":  # a second member whose header is not a gzip header
        out = data + b"\x1f\x8b\x09\x00garbage-after-the-first-member"
    elif kind == "invalid_utf8":
        lines = payload.split(b"\n")
        lines[2] = lines[2].replace(b",", b"\xff,", 1)
        out = gzip_bytes(b"\n".join(lines))
    else:
        raise ValueError(f"kind must be one of {GZIP_DAMAGE}, got {kind!r}")
    gz_path.write_bytes(out)
