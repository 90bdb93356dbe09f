"""The offline demo: local archive mirrors with generated months, then the real pipeline end to end.

No internet: Binance and OKX archives are served by `ArchiveMirror` over HTTP on 127.0.0.1, Hyperliquid's
bucket by a moto S3 server on 127.0.0.1. The `APERIODIC_*_URL` variables and the AWS endpoint point at them
for the duration of the demo; the store is `./data` unless `APERIODIC_STORE` says otherwise (an `s3://` store
then lives in the same moto server). Each instrument gets two consecutive generated months, materialised month by
month (the three exchanges side by side) by runs submitted through the code location (`operator/submission.py`), recorded in
the instance in DAGSTER_HOME: they show under each exchange's job in the UI. Then the open month: the mirrors also
serve the current month's daily archives dated relative to today (and the month before it, which day 1's carry
reads); one daily run per instrument publishes its complete days, and the client reads them back.
"""

from __future__ import annotations

import io
import os
import shlex
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import polars as pl

from aperiodic_pipelines.domain.intervals import INTERVALS, TIMESTAMPS
from aperiodic_pipelines.domain.layout import flow_key
from aperiodic_pipelines.domain.months import (
    check_month,
    current_month,
    month_range,
    next_month,
    previous_month,
)
from aperiodic_pipelines.domain.settings import ConfigError, Settings
from aperiodic_pipelines.storage import LocalStore, ObjectStore, store_from_uri


@dataclass(frozen=True)
class DemoInstrument:
    exchange: str
    native_symbol: str
    start_price: float
    lot: float  # OKX sizes are contracts of 0.01 BTC: keep quantities whole contracts
    seed: int


DEMO_INSTRUMENTS: tuple[DemoInstrument, ...] = (
    DemoInstrument("binance-futures", "BTCUSDT", 113_000.0, 0.001, 11),
    DemoInstrument("okx-perps", "BTC-USDT-SWAP", 113_010.0, 0.01, 12),
    DemoInstrument("hyperliquid-perps", "BTC", 112_990.0, 0.001, 13),
)
# Hyperliquid's node archives start in 2025 (their newest format from 2025-07-27), so the demo months lie there.
DEFAULT_DEMO_MONTHS: tuple[str, str] = ("2025-08", "2025-09")
SUMMARY_COLUMNS = ("time", "taker_buy_volume", "taker_sell_volume", "volume_delta", "flow_toxicity_score")
SAMPLE_INTERVAL = "1h"  # the file whose first rows the summary shows
SAMPLE_ROWS = 3
CODE_LOCATION_MODULE = "aperiodic_pipelines.defs.definitions"
# Dagster's code server logs through coloredlogs, which colours whatever the stream; piped to a file, its lines
# are JSON instead (Dagster's CLI reads option defaults from DAGSTER_CLI_<COMMAND>_<OPTION>).
PLAIN_LOG_ENVIRONMENT = {
    "NO_COLOR": "1",
    "TERM": "dumb",
    "DAGSTER_CLI_API_GRPC_LOG_FORMAT": "json",
    "DAGSTER_CLI_CODE_SERVER_START_LOG_FORMAT": "json",
}


def say(message: str) -> None:
    print(message, flush=True)


@contextmanager
def patched_environ(values: Mapping[str, str]) -> Iterator[None]:
    """Set environment variables for the block and restore the previous values afterwards."""
    previous = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def generate_months(
    instrument: DemoInstrument, months: Sequence[str], trades_per_month: int
) -> dict[str, pl.DataFrame]:
    """Consecutive generated months whose trade ids and prices continue from one month to the next."""
    tapes: dict[str, pl.DataFrame] = {}
    from aperiodic_pipelines.synthetic import generate_tape

    next_id, price = 1, instrument.start_price
    for index, month in enumerate(months):
        tape = generate_tape(
            month,
            trades_per_month,
            seed=instrument.seed * 100 + index,
            start_price=price,
            lot=instrument.lot,
            first_trade_id=next_id,
        )
        tapes[month] = tape
        if tape.height:
            next_id = int(tape.get_column("trade_id").max()) + 1  # type: ignore[arg-type]
            price = float(tape.get_column("price")[-1])
    return tapes


@contextmanager
def demo_mirrors(
    workdir: Path, months: Sequence[str], trades_per_month: int, *, open_month: bool = False
) -> Iterator[dict[str, str]]:
    """Start the HTTP and S3 mirrors, write the generated months (and with `open_month` the current month's daily
    archives so far, see `mirror_open_month`), yield the environment that points at them."""
    from aperiodic_pipelines.mirror.archives import write_binance_month, write_okx_month
    from aperiodic_pipelines.mirror.http import ArchiveMirror
    from aperiodic_pipelines.mirror.klines import write_binance_klines_month
    from aperiodic_pipelines.mirror.listings import ListingServer
    from aperiodic_pipelines.mirror.s3 import hyperliquid_mirror

    archive_root = workdir / "archives"
    (archive_root / "binance").mkdir(parents=True, exist_ok=True)
    # Binance's universe (which symbols exist, from which month) is read from its bucket listing, served here from
    # the mirrored files as S3 would list them.
    with ArchiveMirror(archive_root) as http_mirror, hyperliquid_mirror() as s3_mirror, \
            ListingServer(archive_root / "binance") as listing:
        for instrument in DEMO_INSTRUMENTS:
            tapes = generate_months(instrument, months, trades_per_month)
            # OKX files run 16:00-16:00 UTC, so the file dated the 1st of a month also holds the last hours of
            # the month before: each month's files are written from the whole tape.
            whole_tape = pl.concat(list(tapes.values()))
            for month, tape in tapes.items():
                if instrument.exchange == "binance-futures":
                    write_binance_month(archive_root / "binance", instrument.native_symbol, month, tape)
                    # Binance's own 1m klines of the same trades, for `reconciles_with_exchange_klines`.
                    write_binance_klines_month(archive_root / "binance", instrument.native_symbol, month, tape)
                elif instrument.exchange == "okx-perps":
                    write_okx_month(archive_root / "okx", instrument.native_symbol, month, whole_tape)
                else:
                    s3_mirror.write_month(instrument.native_symbol, month, tape)
                say(f"  mirrored {instrument.exchange} {instrument.native_symbol} {month}: {tape.height:,} trades")
        if open_month:
            mirror_open_month(archive_root, s3_mirror, skip_months=set(months))
        environment = {
            **s3_mirror.environment(),
            "AWS_ENDPOINT_URL": s3_mirror.endpoint_url,
            "APERIODIC_BINANCE_URL": f"{http_mirror.url}/binance",
            "APERIODIC_BINANCE_LISTING_URL": listing.url,
            "APERIODIC_OKX_URL": f"{http_mirror.url}/okx",
            "APERIODIC_CACHE_DIR": str(workdir / "cache"),
            "S3_MIRROR_CLIENT_ENDPOINT": s3_mirror.endpoint_url,
        }
        yield environment


OPEN_MONTH_TRADES = 3_000  # per instrument and month: a few bars per interval each day, read in seconds


def mirror_open_month(archive_root: Path, s3_mirror: Any, *, skip_months: set[str] = frozenset()) -> None:
    """The open month as each exchange has published it so far (daily archives dated relative to today,
    `mirror.open_month`), and the month before it as monthly archives: day 1's carry reads raw month m−1."""
    from aperiodic_pipelines.mirror import open_month
    from aperiodic_pipelines.mirror.archives import write_binance_month, write_okx_month
    from aperiodic_pipelines.synthetic import generate_tape

    before = previous_month(current_month())
    for instrument in DEMO_INSTRUMENTS:
        native = instrument.native_symbol
        if before not in skip_months:
            tape = generate_tape(before, OPEN_MONTH_TRADES, seed=instrument.seed * 100 + 50,
                                 start_price=instrument.start_price, lot=instrument.lot)
            if instrument.exchange == "binance-futures":
                write_binance_month(archive_root / "binance", native, before, tape)
            elif instrument.exchange == "okx-perps":
                write_okx_month(archive_root / "okx", native, before, tape)
            else:
                s3_mirror.write_month(native, before, tape)
        if instrument.exchange == "binance-futures":
            written = open_month.write_binance_open_month(archive_root / "binance", native, n_trades=OPEN_MONTH_TRADES)
        elif instrument.exchange == "okx-perps":
            written = open_month.write_okx_open_month(archive_root / "okx", native, n_trades=OPEN_MONTH_TRADES)
        else:
            written = open_month.write_hyperliquid_open_month(s3_mirror.client, s3_mirror.bucket, native,
                                                              n_trades=OPEN_MONTH_TRADES, prefix=s3_mirror.prefix)
        say(f"  mirrored {instrument.exchange} {native} {before} (monthly) and {current_month()} so far: "
            f"{len(written)} daily objects")


def read_open_month_with_client(store_uri: str, exchange: str, native: str, interval: str) -> list[str]:
    """Serve the store for a moment and read the open month's published days with the real `aperiodic` client;
    raises unless the frame equals the published daily files, each bar once, in order."""
    from datetime import date

    from aperiodic import get_metrics

    from aperiodic_pipelines.api.keys import ApiKeyStore
    from aperiodic_pipelines.api.server import running_server
    from aperiodic_pipelines.api.settings import ApiSettings
    from aperiodic_pipelines.domain.layout import daily_flow_key
    from aperiodic_pipelines.domain.symbols import resolve_symbol
    from aperiodic_pipelines.storage.daily import published_days

    store = store_from_uri(store_uri)
    days = published_days(store, exchange, native, current_month())
    if not days:
        return [f"no day of {current_month()} is published yet for {exchange} {native}: nothing to read back"]
    published = pl.concat([pl.read_parquet(io.BytesIO(store.read_bytes(
        daily_flow_key("exchange", exchange, interval, native, day)))) for day in days])
    atlas, _ = resolve_symbol(exchange, native)
    with tempfile.TemporaryDirectory(prefix="aperiodic-open-month-") as tmp:
        keys_path = Path(tmp) / "api-keys.sqlite"
        key = ApiKeyStore(keys_path).create("demo")
        with running_server(ApiSettings(store_uri=store_uri, api_keys_path=keys_path)) as base_url:
            frame = get_metrics(key, metric="flow", timestamp="exchange", interval=interval, exchange=exchange,
                                symbol=atlas, start_date=date.fromisoformat(days[0]),
                                end_date=date.fromisoformat(days[-1]), base_url=base_url, show_progress=False)
    if not frame.equals(published):
        raise AssertionError(f"the client's frame differs from the published daily files of {exchange} {native} "
                             f"{interval} {days[0]}..{days[-1]}")
    return [f"read back through the API with the aperiodic client: {exchange} {atlas} {interval} {days[0]}.."
            f"{days[-1]} ({frame.height} bars, each once, equal to the {len(days)} published daily files)"]


def _ensure_s3_store_bucket(store_uri: str, endpoint: str) -> None:
    """With an `s3://` store during the demo, its bucket lives in the local moto server: create it."""
    from aperiodic_pipelines.mirror.s3 import create_bucket, make_client

    create_bucket(make_client(endpoint), urlparse(store_uri).netloc)


def published_keys(store: ObjectStore, exchange: str, native_symbol: str, months: Sequence[str]) -> list[str]:
    """The spec §4 keys of the instrument's months that exist in the store."""
    return [
        flow_key(timestamp, exchange, interval, native_symbol, month)
        for timestamp in TIMESTAMPS
        for interval in INTERVALS
        for month in months
        if store.exists(flow_key(timestamp, exchange, interval, native_symbol, month))
    ]


def parquet_row_count(store: ObjectStore, key: str) -> int:
    """Rows of a parquet object from its footer (local files are not read whole)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if isinstance(store, LocalStore):
        return pq.read_metadata(store.path(key)).num_rows
    return pq.read_metadata(pa.BufferReader(store.read_bytes(key))).num_rows


def summarise(store: ObjectStore, months: Sequence[str]) -> list[str]:
    """Where the published files are, how many and how many rows, and the first 1h bars of the last month."""
    lines = [f"published flow bars in {store!r}:"]
    for instrument in DEMO_INSTRUMENTS:
        keys = published_keys(store, instrument.exchange, instrument.native_symbol, months)
        rows = sum(parquet_row_count(store, k) for k in keys)
        variants = sorted({k.split("/")[1] for k in keys})
        lines.append(
            f"  {instrument.exchange} {instrument.native_symbol}: {len(keys)} files, {rows:,} rows, "
            f"variants {', '.join(variants) or 'none'}"
        )
        sample = flow_key("exchange", instrument.exchange, SAMPLE_INTERVAL, instrument.native_symbol, months[-1])
        if store.exists(sample):
            frame = pl.read_parquet(io.BytesIO(store.read_bytes(sample)))
            lines.append(f"    e.g. {store.uri(sample)} (first {SAMPLE_ROWS} of {frame.height:,} rows):")
            for row in frame.select(SUMMARY_COLUMNS).head(SAMPLE_ROWS).iter_rows(named=True):
                cells = ", ".join(
                    f"{name}={value:.4g}" if isinstance(value, float) else f"{name}={value}"
                    for name, value in row.items()
                )
                lines.append(f"    {cells}")
    return lines


# What the demo needs beyond the package's own dependencies (the `demo` extra): the module, and what it is for.
DEMO_PACKAGES = {"moto": "the local S3 mirror of Hyperliquid's bucket", "aperiodic": "the client it reads back with"}


def require_demo_packages() -> None:
    """Refuse to start, naming what is missing and how to install it, rather than fail half-way with a traceback."""
    import importlib.util

    missing = [f"{module} ({purpose})" for module, purpose in DEMO_PACKAGES.items()
               if importlib.util.find_spec(module) is None]
    if missing:
        raise ConfigError(f"`demo` needs {', '.join(missing)}: pip install 'aperiodic-pipelines[demo]'")


def run_demo(
    *,
    trades_per_month: int = 200_000,
    first_month: str | None = None,
    last_month: str | None = None,
    store_uri: str | None = None,
    log_level: str = "INFO",
    open_month: bool = True,
) -> bool:
    """Mirror, register, materialise two months per instrument, summarise; then (`open_month`) publish the open
    month's complete days and read them back. Returns True when every run passed."""
    from aperiodic_pipelines.operator.instance import LAUNCHED_BY_TAG, get_instance
    from aperiodic_pipelines.operator.registry import resolve_instrument
    from aperiodic_pipelines.operator.submission import run_month_waves

    require_demo_packages()
    first = check_month(first_month or DEFAULT_DEMO_MONTHS[0])
    demo_months = month_range(first, last_month or next_month(first))
    store_uri = store_uri or Settings.from_env().store.uri
    instance = get_instance(say)
    instruments = [resolve_instrument(i.exchange, i.native_symbol) for i in DEMO_INSTRUMENTS]

    def report(result) -> None:  # noqa: ANN001 - operator.submission.MonthRun
        state = "succeeded" if result.success else "FAILED"
        say(f"run {result.run_id} {result.instrument.exchange} {result.instrument.native} {result.month}: {state}")
        if not result.success:
            for line in result.lines:
                say(f"  {line}")

    with tempfile.TemporaryDirectory(prefix="aperiodic-demo-") as tmp:
        say(f"generating {len(demo_months)} months x {trades_per_month:,} trades for {len(DEMO_INSTRUMENTS)} instruments")
        with demo_mirrors(Path(tmp), demo_months, trades_per_month, open_month=open_month) as environment:
            endpoint = environment.pop("S3_MIRROR_CLIENT_ENDPOINT")
            environment["APERIODIC_STORE"] = store_uri
            if not sys.stdout.isatty():  # piped to a file: no colour codes from the child processes
                environment.update(PLAIN_LOG_ENVIRONMENT)
            if store_uri.startswith("s3://"):
                _ensure_s3_store_bucket(store_uri, endpoint)
            # The code server and the runs it launches inherit this environment (mirrors, store).
            with patched_environ(environment):
                results = run_month_waves(
                    instance, instruments, demo_months, tags={LAUNCHED_BY_TAG: "demo"}, log_level=log_level,
                    say=say, report=report,
                )
                if len(results) < len(instruments) * len(demo_months) or not all(r.success for r in results):
                    return False
                for line in summarise(store_from_uri(store_uri), demo_months):
                    say(line)
                # What a researcher does next: read a month back through the delivery API with the real client.
                from aperiodic_pipelines.api.showcase import read_back_with_client

                first_instrument = DEMO_INSTRUMENTS[0]
                say("reading one month back through the API (`aperiodic-pipelines serve`) with the aperiodic client:")
                for line in read_back_with_client(
                    store_uri, first_instrument.exchange, first_instrument.native_symbol, "1h", demo_months[-1]
                ):
                    say(line)
                if open_month and not publish_open_month_days(instance, instruments, store_uri, log_level):
                    return False
    home = os.environ["DAGSTER_HOME"]
    say(f"runs are recorded in {home}; browse them at http://127.0.0.1:3000 after starting Dagster with:")
    say(f"  {browse_command(home, store_uri)}")
    return True


def publish_open_month_days(instance: Any, instruments: Sequence[Any], store_uri: str, log_level: str) -> bool:
    """The open month: one daily run per instrument (as the daily schedule submits them), saying which days each
    published, then the first instrument's days read back through the client."""
    from aperiodic_pipelines.operator.instance import LAUNCHED_BY_TAG
    from aperiodic_pipelines.operator.submission import run_open_month

    month = current_month()
    say(f"publishing the open month {month} day by day (each complete day the mirror's exchanges have out):")
    results = run_open_month(instance, instruments, month, tags={LAUNCHED_BY_TAG: "demo"}, log_level=log_level,
                             say=say)
    for result in results:
        where = f"{result.instrument.exchange} {result.instrument.native} {month}"
        if not result.success:
            say(f"run {result.run_id} {where}: FAILED")
            for line in result.lines:
                say(f"  {line}")
            continue
        days = ", ".join(d[-2:] for d in result.published_now) or "none new"
        say(f"run {result.run_id} {where}: published days {days}; complete through "
            f"{result.complete_through or '-'}" + (f"; {result.waiting_for} waits ({result.waiting_reason})"
                                                    if result.waiting_for else ""))
    if not all(r.success for r in results):
        return False
    first = DEMO_INSTRUMENTS[0]
    for line in read_open_month_with_client(store_uri, first.exchange, first.native_symbol, "1h"):
        say(line)
    return True


def browse_command(dagster_home: str, store_uri: str) -> str:
    """The shell command that opens the demo's runs in the Dagster UI, runnable as printed from any directory:
    absolute instance and store, this environment's `dg`, and a workspace file in the instance directory naming the
    code location's module (a checkout's `workspace.yaml` may not be there: the package can be installed)."""
    home = Path(dagster_home).resolve()
    workspace = write_workspace(home)
    store = store_uri if "://" in store_uri else str(Path(store_uri).resolve())
    dg = Path(sys.executable).parent / "dg"
    return (
        f"DAGSTER_HOME={shlex.quote(str(home))} APERIODIC_STORE={shlex.quote(store)} "
        f"{shlex.quote(str(dg))} dev -w {shlex.quote(str(workspace))}"
    )


def write_workspace(directory: Path) -> Path:
    """`directory/workspace.yaml`: the code location by module, as the project's own workspace file has it."""
    path = directory / "workspace.yaml"
    temp = path.with_suffix(".yaml.tmp")
    temp.write_text(
        "# Written by the demo: the aperiodic-pipelines code location, loaded by module (no checkout needed).\n"
        "load_from:\n"
        "  - python_module:\n"
        f"      module_name: {CODE_LOCATION_MODULE}\n"
        "      attribute: defs\n"
        "      location_name: aperiodic_pipelines\n"
    )
    os.replace(temp, path)  # whole or not at all
    return path
