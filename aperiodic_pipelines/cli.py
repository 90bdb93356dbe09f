"""`aperiodic-pipelines`: register instruments, materialise months, submit backfills, run the offline demo.

A thin layer over Dagster and the package's modules: argument parsing, the Dagster instance, and
readable output. Exit codes: 0 ok, 1 a run or backfill failed, 2 bad arguments or input.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aperiodic_pipelines.errors import AperiodicError
from aperiodic_pipelines.storage.keys import check_month

if TYPE_CHECKING:
    from dagster import DagsterInstance, Definitions, JobDefinition
    from dagster._core.definitions.asset_key import AssetKey

DEFAULT_DAGSTER_HOME = ".dagster_home"
DEFAULT_WEBSERVER_URL = "http://127.0.0.1:3000"
DEFAULT_CODE_LOCATION = "aperiodic_pipelines"  # location_name in workspace.yaml
FLOW_JOB_NAME = "flow_bars_job"
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class CliError(AperiodicError):
    """A problem the user can fix: bad arguments, unreachable webserver, unknown code location."""


def say(message: str) -> None:
    print(message, flush=True)


def warn(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- Dagster instance ------------------------------------------------------------------------------------------


def repo_dagster_yaml() -> Path | None:
    """The project's instance config (`dagster.yaml`), looked up from the current directory, then from
    the source tree (editable installs)."""
    for base in (Path.cwd(), Path(__file__).resolve().parent.parent):
        candidate = base / "dagster.yaml"
        if candidate.is_file():
            return candidate
    return None


def ensure_dagster_home() -> Path:
    """DAGSTER_HOME, or `./.dagster_home` (created, with the project's dagster.yaml) when it is unset."""
    configured = os.environ.get("DAGSTER_HOME")
    if configured:
        home = Path(configured).expanduser().resolve()
        home.mkdir(parents=True, exist_ok=True)
        os.environ["DAGSTER_HOME"] = str(home)  # Dagster insists on an absolute path
        return home
    home = Path(DEFAULT_DAGSTER_HOME).resolve()
    home.mkdir(parents=True, exist_ok=True)
    source = repo_dagster_yaml()
    note = ""
    target = home / "dagster.yaml"
    if not target.exists():
        if source is not None:
            shutil.copyfile(source, target)
            note = f", copied {source}"
        else:  # an explicit empty config: Dagster's defaults, without its "no dagster.yaml" warning
            target.write_text("# Dagster instance settings; empty means Dagster's defaults (storage in this dir).\n")
    os.environ["DAGSTER_HOME"] = str(home)
    warn(
        f"DAGSTER_HOME is not set; using {home}{note}. "
        f"Run `export DAGSTER_HOME={home}` before `dagster dev` to see these runs in the UI."
    )
    return home


def get_instance() -> DagsterInstance:
    from dagster import DagsterInstance

    ensure_dagster_home()
    return DagsterInstance.get()


# --- instruments -----------------------------------------------------------------------------------------------


def resolve_instrument(exchange: str, symbol: str) -> tuple[str, str, str]:
    """(instrument partition key, Atlas symbol, native id) for an Atlas or native symbol on `exchange`."""
    from aperiodic_pipelines.defs.partitions import instrument_key
    from aperiodic_pipelines.sources.symbols import resolve_symbol

    atlas, native = resolve_symbol(exchange, symbol)
    return instrument_key(exchange, atlas), atlas, native


def register_instrument(instance: DagsterInstance, exchange: str, symbol: str) -> tuple[str, bool]:
    """Add the instrument to the `instruments` dynamic partitions; returns (key, newly added)."""
    from aperiodic_pipelines.defs.partitions import INSTRUMENTS_PARTITIONS_NAME

    key, _atlas, _native = resolve_instrument(exchange, symbol)
    if instance.has_dynamic_partition(INSTRUMENTS_PARTITIONS_NAME, key):
        return key, False
    instance.add_dynamic_partitions(INSTRUMENTS_PARTITIONS_NAME, [key])
    return key, True


def cmd_instruments_add(args: argparse.Namespace) -> int:
    _key, _atlas, native = resolve_instrument(args.exchange, args.symbol)  # validate before touching the instance
    key, added = register_instrument(get_instance(), args.exchange, args.symbol)
    say(f"{'added' if added else 'already registered'}: {key} (native {native})")
    return EXIT_OK


def cmd_instruments_list(args: argparse.Namespace) -> int:
    from aperiodic_pipelines.defs.partitions import INSTRUMENTS_PARTITIONS_NAME, parse_instrument_key
    from aperiodic_pipelines.sources.symbols import to_native

    keys = sorted(get_instance().get_dynamic_partitions(INSTRUMENTS_PARTITIONS_NAME))
    if not keys:
        say("no instruments registered (add one: aperiodic-pipelines instruments add --exchange E --symbol S)")
        return EXIT_OK
    for key in keys:
        exchange, atlas = parse_instrument_key(key)
        say(f"{key}\t{exchange}\t{atlas}\t{to_native(exchange, atlas)}")
    return EXIT_OK


# --- months ----------------------------------------------------------------------------------------------------


def month_range(first: str, last: str | None = None) -> list[str]:
    """Inclusive `YYYY-MM` range in calendar order; `last=None` means just `first`."""
    check_month(first)
    last = check_month(last) if last is not None else first
    if last < first:
        raise CliError(f"month range is backwards: {first} .. {last}")
    year, mon = (int(p) for p in first.split("-"))
    months = []
    while (current := f"{year:04d}-{mon:02d}") <= last:
        months.append(current)
        year, mon = (year + 1, 1) if mon == 12 else (year, mon + 1)
    return months


# --- materialize -----------------------------------------------------------------------------------------------


def load_definitions() -> Definitions:
    import warnings

    from dagster import BetaWarning, PreviewWarning

    # The definitions knowingly use beta/preview APIs (see the defs docs); operators need not see that each time.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BetaWarning)
        warnings.simplefilter("ignore", PreviewWarning)
        from aperiodic_pipelines.defs.definitions import defs
    return defs


def flow_asset_keys(defs: Definitions) -> list[AssetKey]:
    """Materialisable assets partitioned by instrument × month (the per-partition graph), in order."""
    from dagster import MultiPartitionsDefinition

    graph = defs.resolve_asset_graph()
    keys = []
    for key in graph.toposorted_asset_keys:
        if key not in graph.materializable_asset_keys:
            continue
        partitions = graph.get(key).partitions_def
        if isinstance(partitions, MultiPartitionsDefinition) and set(partitions.partition_dimension_names) == {
            "instrument",
            "month",
        }:
            keys.append(key)
    if not keys:
        raise CliError("the definitions have no assets partitioned by instrument × month")
    return keys


def flow_job(defs: Definitions) -> tuple[JobDefinition, list[AssetKey] | None]:
    """The job that materialises one partition: the definitions' `flow_bars_job` (whole selection, with
    checks), else the implicit asset job restricted to the instrument × month assets."""
    from dagster import DagsterError

    try:
        return defs.resolve_job_def(FLOW_JOB_NAME), None
    except DagsterError:
        return defs.resolve_implicit_global_asset_job_def(), flow_asset_keys(defs)


def _failed_checks(result: Any, *, limit: int = 400) -> list[str]:
    """Failed asset checks with their description and text metadata, each cut to `limit` characters."""
    lines = []
    for evaluation in result.get_asset_check_evaluations():
        if evaluation.passed:
            continue
        details = [evaluation.description] if evaluation.description else []
        for name, value in evaluation.metadata.items():
            raw = getattr(value, "value", value)
            if isinstance(raw, str | int | float):
                details.append(f"{name}: {raw}")
        text = "; ".join(details)
        text = text if len(text) <= limit else text[:limit] + " ..."
        lines.append(
            f"check {evaluation.asset_check_key.name} on {evaluation.asset_key.to_user_string()} "
            f"failed ({evaluation.severity.value}){': ' + text if text else ''}"
        )
    return lines


def describe_failure(result: Any) -> list[str]:
    """One line per failed step (step key, error message and causes), then the failed checks' findings."""
    lines = []
    for event in result.all_events:
        if not event.is_step_failure:
            continue
        error = event.step_failure_data.error
        message = error.message.strip() if error is not None else "unknown error"
        cause = error.cause if error is not None else None
        while cause is not None:
            message += f"\n    caused by: {cause.message.strip()}"
            cause = cause.cause
        lines.append(f"step {event.step_key} failed: {message}")
    lines.extend(_failed_checks(result))
    return lines or ["the run failed before any step ran (see the run's logs in the Dagster UI)"]


def summarise_run(result: Any) -> list[str]:
    """Short per-asset lines from the run's materialisations and failed checks."""
    lines = []
    for event in result.get_asset_materialization_events():
        materialization = event.event_specific_data.materialization
        shown = []
        for name, value in materialization.metadata.items():
            raw = getattr(value, "value", value)
            if isinstance(raw, bool | int | float) or (isinstance(raw, str) and len(raw) <= 120):
                shown.append(f"{name}={raw}")
            if len(shown) == 4:
                break
        lines.append(f"  {materialization.asset_key.to_user_string()}: {', '.join(shown)}")
    lines.extend(f"  {line}" for line in _failed_checks(result))
    return lines


def materialize_months(
    exchange: str,
    symbol: str,
    months: Sequence[str],
    *,
    instance: DagsterInstance | None = None,
    defs: Definitions | None = None,
    log_level: str = "INFO",
) -> tuple[bool, list[str]]:
    """Run the instrument × month asset graph in-process, one run per month in order; stop at the first failure.

    Runs are recorded in `instance` (default: the one in DAGSTER_HOME), so they show in the Dagster UI.
    Returns (all succeeded, run ids).
    """
    from aperiodic_pipelines.defs.partitions import flow_partition_key

    instance = instance if instance is not None else get_instance()
    defs = defs if defs is not None else load_definitions()
    key, added = register_instrument(instance, exchange, symbol)
    if added:
        say(f"registered instrument {key}")
    _key, atlas, _native = resolve_instrument(exchange, symbol)
    job, asset_keys = flow_job(defs)
    run_ids = []
    for month in months:
        partition = flow_partition_key(exchange, atlas, month)
        say(f"materialising {partition} with {job.name} ...")
        result = job.execute_in_process(
            instance=instance,
            partition_key=str(partition),
            asset_selection=asset_keys,
            raise_on_error=False,
            tags={"aperiodic/launched_by": "cli"},
            run_config={"loggers": {"console": {"config": {"log_level": log_level}}}},
        )
        run_ids.append(result.run_id)
        if not result.success:
            warn(f"run {result.run_id} for {partition} FAILED")
            for line in describe_failure(result):
                warn(line)
            return False, run_ids
        say(f"run {result.run_id} succeeded")
        for line in summarise_run(result):
            say(line)
    return True, run_ids


def cmd_materialize(args: argparse.Namespace) -> int:
    months = month_range(args.month, args.to)
    resolve_instrument(args.exchange, args.symbol)  # fail on a bad symbol before loading Dagster definitions
    ok, _run_ids = materialize_months(args.exchange, args.symbol, months, log_level=args.log_level)
    return EXIT_OK if ok else EXIT_FAILED


# --- backfill (GraphQL against a running webserver; the daemon executes it) ------------------------------------

_REPOSITORIES_QUERY = """
query Repositories {
  repositoriesOrError {
    __typename
    ... on RepositoryConnection { nodes { name location { name } } }
    ... on Error { message }
  }
}
"""

_ADD_PARTITION_MUTATION = """
mutation AddInstrument($repositorySelector: RepositorySelector!, $partitionsDefName: String!, $partitionKey: String!) {
  addDynamicPartition(
    repositorySelector: $repositorySelector, partitionsDefName: $partitionsDefName, partitionKey: $partitionKey
  ) {
    __typename
    ... on Error { message }
  }
}
"""

_LAUNCH_BACKFILL_MUTATION = """
mutation LaunchBackfill($backfillParams: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $backfillParams) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on Error { message }
  }
}
"""


def graphql(url: str, query: str, variables: dict[str, Any] | None = None, *, timeout: float = 60.0) -> dict:
    """POST one GraphQL request to the webserver's `/graphql`; raise `CliError` on transport or GraphQL errors."""
    import requests

    endpoint = url.rstrip("/") + "/graphql"
    try:
        response = requests.post(endpoint, json={"query": query, "variables": variables or {}}, timeout=timeout)
    except requests.RequestException as exc:
        raise CliError(f"cannot reach the Dagster webserver at {endpoint}: {exc}") from None
    if response.status_code != 200:
        raise CliError(f"{endpoint} answered HTTP {response.status_code}: {response.text[:300]}")
    body = response.json()
    if body.get("errors"):
        raise CliError(f"{endpoint}: {'; '.join(e.get('message', '?') for e in body['errors'])}")
    return body["data"]


def find_repository(url: str, location: str) -> dict[str, str]:
    """The repository selector of code location `location` on the webserver."""
    data = graphql(url, _REPOSITORIES_QUERY)["repositoriesOrError"]
    if data["__typename"] != "RepositoryConnection":
        raise CliError(f"webserver could not list repositories: {data.get('message')}")
    for node in data["nodes"]:
        if node["location"]["name"] == location:
            return {"repositoryLocationName": location, "repositoryName": node["name"]}
    found = ", ".join(sorted(n["location"]["name"] for n in data["nodes"])) or "none"
    raise CliError(f"code location {location!r} is not loaded in the webserver at {url} (loaded: {found})")


def submit_backfill(
    url: str,
    exchange: str,
    symbol: str,
    months: Sequence[str],
    *,
    location: str = DEFAULT_CODE_LOCATION,
) -> str:
    """Register the instrument on the server's instance and launch one backfill of the flow job over `months`.

    Returns the backfill id. The daemon then runs one run per partition (no backfill policy).
    """
    from aperiodic_pipelines.defs.partitions import INSTRUMENTS_PARTITIONS_NAME, flow_partition_key

    key, atlas, _native = resolve_instrument(exchange, symbol)
    repository = find_repository(url, location)
    added = graphql(
        url,
        _ADD_PARTITION_MUTATION,
        {"repositorySelector": repository, "partitionsDefName": INSTRUMENTS_PARTITIONS_NAME, "partitionKey": key},
    )["addDynamicPartition"]
    if added["__typename"] not in ("AddDynamicPartitionSuccess", "DuplicateDynamicPartitionError"):
        raise CliError(f"could not register instrument {key}: {added.get('message', added['__typename'])}")
    # A backfill of the partitioned job runs exactly these months. An asset backfill would also run
    # second_stats..published_flow_bars of the month after the range (it reads raw trades of the range's last
    # month through the m−1 mapping). The exchange tag feeds the per-exchange run limit in dagster.yaml.
    params = {
        "selector": {"partitionSetName": f"{FLOW_JOB_NAME}_partition_set", "repositorySelector": repository},
        "partitionNames": [str(flow_partition_key(exchange, atlas, m)) for m in months],
        "title": f"{key} {months[0]}..{months[-1]}",
        "tags": [{"key": "aperiodic/launched_by", "value": "cli"}, {"key": "aperiodic/exchange", "value": exchange}],
        "fromFailure": False,
    }
    launched = graphql(url, _LAUNCH_BACKFILL_MUTATION, {"backfillParams": params})["launchPartitionBackfill"]
    if launched["__typename"] != "LaunchBackfillSuccess":
        raise CliError(f"backfill not launched ({launched['__typename']}): {launched.get('message', '')}")
    return launched["backfillId"]


def cmd_backfill(args: argparse.Namespace) -> int:
    months = month_range(args.from_month, args.to)
    backfill_id = submit_backfill(args.url, args.exchange, args.symbol, months, location=args.location)
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

    mat = commands.add_parser("materialize", help="run the asset graph in-process for one or more months")
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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (AperiodicError, ValueError) as exc:
        warn(f"error: {exc}")
        return EXIT_USAGE if isinstance(exc, (CliError, ValueError)) else EXIT_FAILED
    except KeyboardInterrupt:
        warn("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
