"""`aperiodic-pipelines`: register instruments, materialise months, submit backfills, run the offline demo.

Argument parsing and printing only; what the commands do is the operator's package (`aperiodic_pipelines/operator/`,
shared with the demo). `materialize` of the open month publishes its complete days not yet published, through the
daily job (as the daily schedule does), and exits 0 saying "nothing new" when there is none. Requests are checked
before Dagster is loaded or any run exists: the symbol against the exchange's universe, the months against the archive, the instrument's first month and the calendar. Exit codes:
0 ok, 1 a run or backfill failed, 2 bad arguments or input (one line on stderr).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from aperiodic_pipelines.domain.errors import AperiodicError
from aperiodic_pipelines.domain.exchanges import EXCHANGES
from aperiodic_pipelines.domain.months import current_month, month_range
from aperiodic_pipelines.operator.instance import (
    DEFAULT_CODE_LOCATION,
    LAUNCHED_BY_TAG,
    RunSetupError,
    get_instance,
)
from aperiodic_pipelines.operator.registry import Instrument, check_months, find_listing, resolve_instrument

if TYPE_CHECKING:
    from aperiodic_pipelines.operator.submission import MonthRun, OpenMonthRun
    from aperiodic_pipelines.sources.universe import Listing

DEFAULT_WEBSERVER_URL = "http://127.0.0.1:3000"
DEFAULT_WAIT_SECONDS = 6 * 3600
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def say(message: str) -> None:
    print(message, flush=True)


def warn(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _listed(exchange: str, symbol: str) -> tuple[Instrument, Listing]:
    """The instrument, checked against the exchange's universe (before Dagster is loaded)."""
    instrument = resolve_instrument(exchange, symbol)
    return instrument, find_listing(instrument)


def _checked_request(
    exchange: str, symbol: str, first: str, last: str | None, *, allow_open: bool = False
) -> tuple[Instrument, Listing, list[str]]:
    months = month_range(first, last)
    instrument, listing = _listed(exchange, symbol)
    check_months(instrument, months, listing.first_month, last_listed=listing.last_month, allow_open=allow_open)
    return instrument, listing, months


# --- instruments -----------------------------------------------------------------------------------------------


def cmd_instruments_add(args: argparse.Namespace) -> int:
    from aperiodic_pipelines.operator.registry import register_instrument

    instrument, listing = _listed(args.exchange, args.symbol)  # refused before touching the instance
    added = register_instrument(get_instance(warn), instrument, listing.first_month)
    say(f"{'added' if added else 'already registered'}: {instrument} ({instrument.atlas}) in "
        f"{instrument.instruments_name}, from {listing.first_month} ({listing.basis})")
    return EXIT_OK


def cmd_instruments_list(args: argparse.Namespace) -> int:
    from aperiodic_pipelines.operator.registry import registered_instruments

    rows = registered_instruments(get_instance(warn))
    if not rows:
        say("no instruments registered (add one: aperiodic-pipelines instruments add --exchange E --symbol S)")
        return EXIT_OK
    for row in rows:
        i = row.instrument
        say(f"{i.exchange}\t{i.native}\t{i.atlas}\t{row.first_month or '-'}")
    return EXIT_OK


def cmd_instruments_remove(args: argparse.Namespace) -> int:
    from aperiodic_pipelines.operator.registry import remove_instrument

    instrument = resolve_instrument(args.exchange, args.symbol)  # its form only: bad registrations can be removed
    if not remove_instrument(get_instance(warn), instrument):
        raise RunSetupError(f"{instrument} is not registered (`aperiodic-pipelines instruments list` shows what is)")
    say(f"removed: {instrument} from {instrument.instruments_name}; schedules and overdue alerts no longer ask for "
        "it. Nothing is deleted: its published files, runs and materialisations stay.")
    return EXIT_OK


# --- materialize -----------------------------------------------------------------------------------------------


def _print_month_run(result: MonthRun) -> None:
    where = f"{result.instrument} {result.month}"
    if result.success:
        say(f"run {result.run_id} for {where} succeeded")
        for line in result.lines:
            say(line)
    else:
        warn(f"run {result.run_id} for {where} FAILED: {result.lines[0] if result.lines else 'see the Dagster UI'}")
        for line in result.lines[1:]:
            warn(f"  {line}")


def _print_open_month_run(result: OpenMonthRun) -> None:
    where = f"{result.instrument} {result.month}"
    if not result.success:
        warn(f"run {result.run_id} for {where} FAILED: {result.lines[0] if result.lines else 'see the Dagster UI'}")
        for line in result.lines[1:]:
            warn(f"  {line}")
        return
    through = f"complete through {result.complete_through}" if result.complete_through else "no day published yet"
    if result.published_now:
        say(f"run {result.run_id} for {where} published {len(result.published_now)} day(s): "
            f"{', '.join(result.published_now)}; {through}")
    else:
        say(f"nothing new for {where}: {through} (run {result.run_id})")
    if result.waiting_for:
        say(f"  {result.waiting_for} waits: {result.waiting_reason}; later days wait for it")


def cmd_materialize(args: argparse.Namespace) -> int:
    instrument, listing, months = _checked_request(args.exchange, args.symbol, args.month, args.to, allow_open=True)
    from aperiodic_pipelines.operator.submission import run_month_waves, run_open_month

    open_month = current_month()
    closed = [m for m in months if m != open_month]
    instance = get_instance(warn)
    if closed:
        results = run_month_waves(
            instance, [instrument], closed, tags={LAUNCHED_BY_TAG: "cli"}, log_level=args.log_level,
            say=say, report=_print_month_run, first_months={instrument: listing.first_month},
            deadline_seconds=args.wait_timeout,
        )
        if not results or not all(r.success for r in results):
            return EXIT_FAILED
    if open_month not in months:
        return EXIT_OK
    # The open month: its complete days not yet published, through the daily job (what the schedule runs).
    (daily,) = run_open_month(
        instance, [instrument], open_month, tags={LAUNCHED_BY_TAG: "cli"}, log_level=args.log_level, say=say,
        first_months={instrument: listing.first_month}, deadline_seconds=args.wait_timeout,
    )
    _print_open_month_run(daily)
    return EXIT_OK if daily.success else EXIT_FAILED


# --- backfill (GraphQL against a running webserver; the daemon executes it) ------------------------------------


def cmd_backfill(args: argparse.Namespace) -> int:
    from concurrent.futures import ThreadPoolExecutor

    # Each symbol against the exchange's listing (an HTTP request each): in parallel, for a universe's hundreds.
    with ThreadPoolExecutor(max_workers=8) as pool:
        checked = list(pool.map(lambda s: _checked_request(args.exchange, s, args.from_month, args.to), args.symbol))
    instruments, months = [instrument for instrument, _, _ in checked], checked[0][2]
    from aperiodic_pipelines.operator.backfill import submit_backfill

    backfill_id = submit_backfill(args.url, args.exchange, instruments, months, location=args.location, say=say)
    say(f"backfill {backfill_id} submitted: {len(instruments)} instrument(s) x {len(months)} month(s) "
        f"{months[0]}..{months[-1]}")
    say(f"follow it at {args.url.rstrip('/')}/runs/b/{backfill_id} (the daemon must be running: dg dev)")
    return EXIT_OK


# --- demo ------------------------------------------------------------------------------------------------------


def cmd_demo(args: argparse.Namespace) -> int:
    from aperiodic_pipelines.demo import run_demo

    ok = run_demo(
        trades_per_month=args.trades,
        first_month=args.month,
        last_month=args.to,
        store_uri=args.store,
        log_level=args.log_level,
    )
    return EXIT_OK if ok else EXIT_FAILED


# --- delivery API ----------------------------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    from aperiodic_pipelines.api import ApiSettings, serve

    serve(ApiSettings.from_env(preview=args.preview), host=args.host, port=args.port, log_level=args.log_level)
    return EXIT_OK


def cmd_api_keys(args: argparse.Namespace) -> int:
    from aperiodic_pipelines.api import ApiKeyStore, ApiSettings

    keys = ApiKeyStore(ApiSettings.from_env().api_keys_path)
    if args.api_keys_command == "create":
        key = keys.create(args.name)
        warn(f"created API key {args.name!r} in {keys.path}; it is shown once, below, and stored only hashed")
        say(key)
    elif args.api_keys_command == "revoke":
        keys.revoke(args.name)
        say(f"revoked API key {args.name!r}")
    else:
        for info in keys.list():
            state = f"revoked {info.revoked_at}" if info.revoked_at else "active"
            say(f"{info.name}\tapk_{info.key_id}_…\tcreated {info.created_at}\t{state}")
    return EXIT_OK


# --- parsing ---------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aperiodic-pipelines",
        description="Flow bars from public crypto perpetual trade archives, orchestrated by Dagster.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def instrument_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--exchange", required=True, help=", ".join(EXCHANGES))
        p.add_argument(
            "--symbol", required=True, help="Atlas symbol (perpetual-BTC-USDT:USDT) or native id (BTCUSDT)"
        )

    def log_level_arg(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--log-level",
            default="INFO",
            choices=["DEBUG", "INFO", "WARNING", "ERROR"],
            help="Dagster console log level for the runs (default INFO)",
        )

    instruments = commands.add_parser("instruments", help="register and list instruments (dynamic partitions)")
    instrument_commands = instruments.add_subparsers(dest="instruments_command", required=True, metavar="ACTION")
    add = instrument_commands.add_parser("add", help="validate a symbol and register it as an instrument")
    instrument_args(add)
    add.set_defaults(handler=cmd_instruments_add)
    listing = instrument_commands.add_parser("list", help="list registered instruments with their first month")
    listing.set_defaults(handler=cmd_instruments_list)
    remove = instrument_commands.add_parser(
        "remove", help="unregister an instrument (its published files, runs and materialisations are kept)"
    )
    instrument_args(remove)
    remove.set_defaults(handler=cmd_instruments_remove)

    mat = commands.add_parser(
        "materialize", help="submit one run per month through the code location and wait for each (in order); "
        "the open month publishes its complete days not yet published (\"nothing new\" when none)"
    )
    instrument_args(mat)
    mat.add_argument("--month", required=True, help="first month, YYYY-MM")
    mat.add_argument("--to", help="last month, YYYY-MM (inclusive; default: --month)")
    mat.add_argument("--wait-timeout", type=float, default=DEFAULT_WAIT_SECONDS, metavar="SECONDS",
                     help=f"stop waiting for the runs after this long (default {DEFAULT_WAIT_SECONDS}); they go on")
    log_level_arg(mat)
    mat.set_defaults(handler=cmd_materialize)

    back = commands.add_parser("backfill", help="submit one backfill of every symbol x month to a running Dagster "
                               "webserver")
    back.add_argument("--exchange", required=True, help=", ".join(EXCHANGES))
    back.add_argument("--symbol", required=True, nargs="+",
                      help="one or more Atlas symbols or native ids (BTCUSDT ETHUSDT ...)")
    back.add_argument("--from", dest="from_month", required=True, help="first month, YYYY-MM")
    back.add_argument("--to", required=True, help="last month, YYYY-MM (inclusive)")
    back.add_argument("--url", default=DEFAULT_WEBSERVER_URL, help=f"webserver URL (default {DEFAULT_WEBSERVER_URL})")
    back.add_argument("--location", default=DEFAULT_CODE_LOCATION, help="code location name")
    back.set_defaults(handler=cmd_backfill)

    demo = commands.add_parser("demo", help="offline demo: local archive mirrors, three exchanges, two months")
    demo.add_argument("--trades", type=int, default=200_000, help="generated trades per month (default 200000)")
    demo.add_argument("--month", help="first demo month (default 2025-08)")
    demo.add_argument("--to", help="last demo month (default: the month after --month)")
    demo.add_argument("--store", help="store URI (default $APERIODIC_STORE, else ./data)")
    log_level_arg(demo)
    demo.set_defaults(handler=cmd_demo)

    serve = commands.add_parser("serve", help="serve the delivery API (/api/v1) over the store in APERIODIC_STORE")
    serve.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    serve.add_argument(
        "--preview",
        action="append",
        default=[],
        metavar="EXCHANGE:SYMBOL:INTERVAL:YYYY-MM",
        help="a month the preview path serves to DEMO-KEY (repeatable)",
    )
    serve.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    serve.set_defaults(handler=cmd_serve)

    api_keys = commands.add_parser("api-keys", help="create, list and revoke API keys (APERIODIC_API_KEYS)")
    api_key_commands = api_keys.add_subparsers(dest="api_keys_command", required=True, metavar="ACTION")
    api_key_commands.add_parser("create", help="create a key and print it once").add_argument("name")
    api_key_commands.add_parser("list", help="list keys (names and ids, never the keys)")
    api_key_commands.add_parser("revoke", help="revoke a key").add_argument("name")
    api_keys.set_defaults(handler=cmd_api_keys)

    # Further commands (e.g. `worker`, the Celery run worker) register their parsers here.
    from aperiodic_pipelines.operator.worker import add_worker_command
    add_worker_command(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (AperiodicError, ValueError) as exc:
        from aperiodic_pipelines.sources.universe import ListingUnavailableError

        warn(f"error: {exc}")
        refused = (RunSetupError, ListingUnavailableError, ValueError)
        return EXIT_USAGE if isinstance(exc, refused) else EXIT_FAILED
    except KeyboardInterrupt:
        warn("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
