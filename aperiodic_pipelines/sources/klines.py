"""binance-futures monthly 1m klines from data.binance.vision: the exchange's own per-minute totals, read to
reconcile our bars with (see docs/reconciliation.md). No Dagster here.

Layout: `{base}/data/futures/um/monthly/klines/{SYM}/1m/{SYM}-1m-{YYYY-MM}.zip` with a `.zip.CHECKSUM` sidecar,
one CSV inside with the columns of `KLINE_COLUMNS`. Files from mid-2022 on start with that header row,
older ones have none. USD-M futures `open_time` is in ms (Binance moved only *spot* files to µs, from
2025-01-01); µs values are recognised anyway, as for trades. Numbers are printed with a fixed number of
decimals per column (BTCUSDT: prices 2, base volumes 3, quote volumes 5), so a value in the file is the
exchange's total rounded to those decimals: `KlinesMonth.decimals` records them, and the reconciliation
derives its tolerance from them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import polars as pl

from aperiodic_pipelines.domain.errors import CorruptArchiveError, NotPublishedError
from aperiodic_pipelines.domain.settings import HttpSettings
from aperiodic_pipelines.sources.archive_stream import zip_csv
from aperiodic_pipelines.sources.base import SourceObject
from aperiodic_pipelines.sources.canonical import month_bounds_us, ms_or_us_to_us, parse_month
from aperiodic_pipelines.sources.config import SourceConfig
from aperiodic_pipelines.sources.download import Downloader, check_zip, parse_checksum_sidecar
from aperiodic_pipelines.sources.limits import ReadLimits

EXCHANGE = "binance-futures"
INTERVAL = "1m"
KLINE_COLUMNS = (
    "open_time", "open", "high", "low", "close", "volume", "close_time", "quote_volume", "count",
    "taker_buy_volume", "taker_buy_quote_volume", "ignore",
)
DECIMAL_COLUMNS = ("open", "high", "low", "close", "volume", "quote_volume", "taker_buy_volume",
                   "taker_buy_quote_volume")
MINUTE_US = 60_000_000
# A month of 1m klines is ~44,640 rows, ~5 MB of CSV, read whole: a member above 64 MiB is not a klines file.
KLINES_LIMITS = ReadLimits(max_member_bytes=64 << 20)


@dataclass(frozen=True)
class KlinesMonth:
    """One month of Binance's 1m klines: `frame` has `open_time` (Datetime[µs], zone-less UTC, like the bars'
    `time`), the decimal columns as Float64 and `count` as Int64, sorted by `open_time`."""

    native_symbol: str
    month: str
    frame: pl.DataFrame
    object: SourceObject  # the zip: URL, size, sha256
    decimals: dict[str, int]  # decimals printed in each decimal column (the most seen in the file)
    has_header: bool


def klines_path(native_symbol: str, month: str) -> str:
    """Path below the base URL of the month's 1m klines archive."""
    return f"data/futures/um/monthly/klines/{native_symbol}/{INTERVAL}/{native_symbol}-{INTERVAL}-{month}.zip"


def fetch_klines_month(
    native_symbol: str,
    month: str,
    config: SourceConfig,
    *,
    downloader: Downloader | None = None,
    http: HttpSettings | None = None,
) -> KlinesMonth | None:
    """The month's 1m klines, verified against their CHECKSUM and cached like the trade archives; None when
    Binance has not published them (the CHECKSUM or the zip answers 404).

    A digest that differs from the published one raises `ChecksumMismatchError`, an unreadable zip or a
    malformed row `CorruptArchiveError` (both name the file; neither is cached).
    """
    parse_month(month)
    # The Dagster check passes no `http`: the operator's settings then come from their one owner, domain.settings.
    downloader = downloader or Downloader.from_config(config, http or HttpSettings.from_env())
    path = klines_path(native_symbol, month)
    url = f"{config.binance_url.rstrip('/')}/{path}"
    filename = path.rsplit("/", 1)[-1]
    cache_key = f"{EXCHANGE}/{path}"
    try:
        sidecar = downloader.fetch_text(url + ".CHECKSUM")
        expected = parse_checksum_sidecar(sidecar, filename=filename, url=url + ".CHECKSUM")
        download = downloader.fetch(
            url, cache_key, expected_sha256=expected, verify=lambda p: check_zip(p, name=filename, limits=KLINES_LIMITS)
        )
    except NotPublishedError:
        return None
    try:
        frame, decimals, has_header = read_klines_zip(download.path, month, name=filename)
    except CorruptArchiveError:
        downloader.evict(cache_key)  # it matched its checksum yet does not parse: keep nothing of it
        raise
    return KlinesMonth(
        native_symbol=native_symbol,
        month=month,
        frame=frame,
        object=SourceObject(location=download.url, size=download.size, sha256=download.sha256),
        decimals=decimals,
        has_header=has_header,
    )


def read_klines_zip(zip_path: Path, month: str, *, name: str) -> tuple[pl.DataFrame, dict[str, int], bool]:
    """Parse a local klines zip: (frame, decimals per decimal column, whether the CSV had a header row). The CSV
    is read whole (a month of 1m klines is ~5 MB), within `KLINES_LIMITS`."""
    payload = b"".join(zip_csv(Path(zip_path), name=name, limits=KLINES_LIMITS).chunks())
    return parse_klines_csv(payload, month, name=name)


def parse_klines_csv(payload: bytes, month: str, *, name: str) -> tuple[pl.DataFrame, dict[str, int], bool]:
    """Binance 1m klines CSV bytes → (frame, decimals, has_header); rows must be whole minutes of `month`."""
    first_line = payload.split(b"\n", 1)[0].decode("utf-8", errors="replace").strip().lstrip("\ufeff")
    has_header = bool(first_line) and not first_line[0].isdigit()
    if has_header and [f.strip() for f in first_line.split(",")] != list(KLINE_COLUMNS):
        raise CorruptArchiveError(f"{name}: unexpected header {first_line!r}, expected {','.join(KLINE_COLUMNS)}")
    try:
        # Everything as text first: the decimals printed are part of what is read.
        text = pl.read_csv(
            payload, has_header=False, skip_rows=1 if has_header else 0, infer_schema=False, raise_if_empty=False
        )
    except pl.exceptions.PolarsError as exc:
        raise CorruptArchiveError(f"{name}: malformed CSV ({str(exc).splitlines()[0]})") from None
    if text.height and text.width != len(KLINE_COLUMNS):
        raise CorruptArchiveError(f"{name}: {text.width} columns, expected {len(KLINE_COLUMNS)} ({','.join(KLINE_COLUMNS)})")
    text = text.rename(dict(zip(text.columns, KLINE_COLUMNS, strict=False))) if text.height else pl.DataFrame(
        schema=dict.fromkeys(KLINE_COLUMNS, pl.String)
    )

    numeric = text.with_row_index("row", offset=2 if has_header else 1).select(
        "row",
        open_time=ms_or_us_to_us(pl.col("open_time").str.strip_chars().cast(pl.Int64, strict=False)),
        count=pl.col("count").str.strip_chars().cast(pl.Int64, strict=False),
        **{c: pl.col(c).str.strip_chars().cast(pl.Float64, strict=False) for c in DECIMAL_COLUMNS},
    )
    bad = numeric.filter(
        pl.any_horizontal(pl.all().is_null()) | pl.any_horizontal(~pl.col(DECIMAL_COLUMNS).is_finite())
    )
    if bad.height:
        rows = bad["row"].head(3).to_list()
        sample = text.slice(rows[0] - (2 if has_header else 1), 1).row(0)
        raise CorruptArchiveError(
            f"{name}: malformed row(s) at line {rows} ({bad.height} in all), e.g. {','.join(map(str, sample))!r}"
        )
    _check_minutes(numeric, month, name)

    # Fixed-point text: the digits after the point of each column tell how far the exchange rounded.
    found = text.select(
        pl.col(c).str.extract(r"\.(\d+)\s*$").str.len_chars().fill_null(0).max() for c in DECIMAL_COLUMNS
    ).row(0, named=True) if text.height else {}
    decimals = {column: int(found.get(column) or 0) for column in DECIMAL_COLUMNS}
    frame = (
        numeric.drop("row")
        .with_columns(pl.col("open_time").cast(pl.Datetime("us")))
        .select("open_time", "open", "high", "low", "close", "volume", "quote_volume", "count",
                "taker_buy_volume", "taker_buy_quote_volume")
        .sort("open_time")
    )
    return frame, decimals, has_header


def _check_minutes(numeric: pl.DataFrame, month: str, name: str) -> None:
    """Every open time is a whole minute inside the month, and appears once."""
    start, end = month_bounds_us(month)
    t = pl.col("open_time")
    misplaced = numeric.filter((t < start) | (t >= end) | (t % MINUTE_US != 0))
    if misplaced.height:
        raise CorruptArchiveError(
            f"{name}: {misplaced.height} kline(s) not on a minute of {month}, at line(s) "
            f"{misplaced['row'].head(3).to_list()}"
        )
    repeated = numeric.filter(t.is_duplicated())
    if repeated.height:
        raise CorruptArchiveError(
            f"{name}: open_time repeated at line(s) {repeated['row'].head(4).to_list()}"
        )
