"""`aperiodic-pipelines`: register instruments, materialise months, submit backfills, run the offline demo.

Argument parsing and printing only; the runs themselves are `runs.py` (shared with the demo). Exit codes:
0 ok, 1 a run or backfill failed, 2 bad arguments or input.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from aperiodic_pipelines import runs
from aperiodic_pipelines.domain.errors import AperiodicError
from aperiodic_pipelines.runs import DEFAULT_CODE_LOCATION, LAUNCHED_BY_TAG, RunSetupError

DEFAULT_WEBSERVER_URL = "http://127.0.0.1:3000"
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def say(message: str) -> None:
    print(message, flush=True)


def warn(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- instruments -----------------------------------------------------------------------------------------------


def cmd_instruments_add(args: argparse.Namespace) -> int:
    instrument = runs.resolve_instrument(args.exchange, args.symbol)  # validate before touching the instance
    added = runs.register_instrument(runs.get_instance(warn), instrument)
    say(f"{'added' if added else 'already registered'}: {instrument.exchange} {instrument.native} "
        f"({instrument.atlas}) in {instrument.instruments_name}")
    return EXIT_OK


def cmd_instruments_list(args: argparse.Namespace) -> int:
    from aperiodic_pipelines.defs.partitions import EXCHANGES_BY_NAME
    from aperiodic_pipelines.domain.symbols import to_atlas

    instance = runs.get_instance(warn)
    rows = [
        (exchange.name, native)
        for exchange in EXCHANGES_BY_NAME.values()
        for native in sorted(instance.get_dynamic_partitions(exchange.instruments_name))
    ]
    if not rows:
        say("no instruments registered (add one: aperiodic-pipelines instruments add --exchange E --symbol S)")
        return EXIT_OK
    for exchange, native in rows:
        say(f"{exchange}\t{native}\t{to_atlas(exchange, native)}")
    return EXIT_OK


# --- materialize -----------------------------------------------------------------------------------------------


def _print_month_run(result: runs.MonthRun) -> None:
    where = f"{result.instrument.exchange} {result.instrument.native} {result.month}"
    if result.success:
        say(f"run {result.run_id} for {where} succeeded")
        for line in result.lines:
            say(line)
    else:
        warn(f"run {result.run_id} for {where} FAILED")
        for line in result.lines:
            warn(line)


def cmd_materialize(args: argparse.Namespace) -> int:
    months = runs.month_range(args.month, args.to)
    instrument = runs.resolve_instrument(args.exchange, args.symbol)  # fail on a bad symbol before loading Dagster
    results = runs.run_month_waves(
        runs.get_instance(warn), [instrument], months, tags={LAUNCHED_BY_TAG: "cli"}, log_level=args.log_level,
        say=say, report=_print_month_run,
    )
    return EXIT_OK if results and all(r.success for r in results) else EXIT_FAILED


# --- backfill (GraphQL against a running webserver; the daemon executes it) ------------------------------------

def cmd_backfill(args: argparse.Namespace) -> int:
    months = runs.month_range(args.from_month, args.to)
    backfill_id = runs.submit_backfill(args.url, args.exchange, args.symbol, months, location=args.location)
    say(f"backfill {backfill_id} submitted: {len(months)} month(s) {months[0]}..{months[-1]}")
    say(f"follow it at {args.url.rstrip('/')}/runs/b/{backfill_id} (the daemon must be running: dagster dev)")
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
        p.add_argument("--exchange", required=True, help="binance-futures, okx-perps or hyperliquid-perps")
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
    listing = instrument_commands.add_parser("list", help="list registered instruments")
    listing.set_defaults(handler=cmd_instruments_list)

    mat = commands.add_parser(
        "materialize", help="submit one run per month through the code location and wait for each (in order)"
    )
    instrument_args(mat)
    mat.add_argument("--month", required=True, help="first month, YYYY-MM")
    mat.add_argument("--to", help="last month, YYYY-MM (inclusive; default: --month)")
    log_level_arg(mat)
    mat.set_defaults(handler=cmd_materialize)

    back = commands.add_parser("backfill", help="submit an asset backfill to a running Dagster webserver")
    instrument_args(back)
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
    from aperiodic_pipelines.operator.worker import add_worker_command
    add_worker_command(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (AperiodicError, ValueError) as exc:
        warn(f"error: {exc}")
        return EXIT_USAGE if isinstance(exc, (RunSetupError, ValueError)) else EXIT_FAILED
    except KeyboardInterrupt:
        warn("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
