"""Backfills submitted to a running Dagster webserver through its GraphQL API; its daemon executes them.

Open-source Dagster has no CLI for backfills: the UI itself uses the GraphQL mutations `addDynamicPartition` and
`launchPartitionBackfill`, and so does this client. The instrument is registered on the webserver's instance
(which may be another machine's) before the backfill is launched.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from aperiodic_pipelines.defs.policies import EXCHANGE_TAG
from aperiodic_pipelines.domain.exchanges import exchange_of
from aperiodic_pipelines.operator.instance import (
    DEFAULT_CODE_LOCATION,
    DEFINITIONS_MODULE,
    LAUNCHED_BY_TAG,
    RunSetupError,
    Say,
    quiet,
)
from aperiodic_pipelines.operator.registry import Instrument, resolve_instrument

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

_JOB_ASSETS_QUERY = """
query JobAssets($pipeline: PipelineSelector!) {
  assetNodes(pipeline: $pipeline) { assetKey { path } }
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
    """POST one GraphQL request to the webserver's `/graphql`; raise `RunSetupError` on transport or GraphQL errors."""
    import requests

    endpoint = url.rstrip("/") + "/graphql"
    try:
        response = requests.post(endpoint, json={"query": query, "variables": variables or {}}, timeout=timeout)
    except requests.RequestException as exc:
        raise RunSetupError(f"cannot reach the Dagster webserver at {endpoint}: {exc}") from None
    if response.status_code != 200:
        raise RunSetupError(f"{endpoint} answered HTTP {response.status_code}: {response.text[:300]}")
    body = response.json()
    if body.get("errors"):
        raise RunSetupError(f"{endpoint}: {'; '.join(e.get('message', '?') for e in body['errors'])}")
    return body["data"]


def find_repository(url: str, location: str) -> dict[str, str]:
    """The repository selector of code location `location` on the webserver."""
    data = graphql(url, _REPOSITORIES_QUERY)["repositoriesOrError"]
    if data["__typename"] != "RepositoryConnection":
        raise RunSetupError(f"webserver could not list repositories: {data.get('message')}")
    # `dagster dev -m aperiodic_pipelines.defs.definitions` (no workspace.yaml) names the location after the module.
    accepted = (location, DEFINITIONS_MODULE) if location == DEFAULT_CODE_LOCATION else (location,)
    for name in accepted:
        for node in data["nodes"]:
            if node["location"]["name"] == name:
                return {"repositoryLocationName": name, "repositoryName": node["name"]}
    found = ", ".join(sorted(n["location"]["name"] for n in data["nodes"])) or "none"
    raise RunSetupError(f"code location {location!r} is not loaded in the webserver at {url} (loaded: {found})")


def register_on_webserver(url: str, repository: dict[str, str], instruments: Sequence[Instrument]) -> list[Instrument]:
    """Add the instruments to their exchanges' dynamic partitions on the webserver's instance, in one request (one
    aliased mutation each: a backfill of hundreds of instruments must not pay a round trip each); the new ones."""
    if not instruments:
        return []
    declared = ", ".join(f"$p{i}: String!, $d{i}: String!" for i in range(len(instruments)))
    fields = "\n".join(
        f"  a{i}: addDynamicPartition(repositorySelector: $repositorySelector, partitionsDefName: $d{i}, "
        f"partitionKey: $p{i}) {{ __typename ... on Error {{ message }} }}"
        for i in range(len(instruments))
    )
    variables: dict[str, Any] = {"repositorySelector": repository}
    for i, instrument in enumerate(instruments):
        variables[f"p{i}"], variables[f"d{i}"] = instrument.native, instrument.instruments_name
    added = graphql(url, f"mutation AddInstruments($repositorySelector: RepositorySelector!, {declared}) {{\n{fields}\n}}",
                    variables)
    new = []
    for i, instrument in enumerate(instruments):
        answer = added[f"a{i}"]
        if answer["__typename"] not in ("AddDynamicPartitionSuccess", "DuplicateDynamicPartitionError"):
            raise RunSetupError(f"could not register instrument {instrument}: {answer.get('message', answer['__typename'])}")
        if answer["__typename"] == "AddDynamicPartitionSuccess":
            new.append(instrument)
    return new


def submit_backfill(
    url: str,
    exchange: str,
    symbols: str | Instrument | Sequence[str | Instrument],
    months: Sequence[str],
    *,
    location: str = DEFAULT_CODE_LOCATION,
    say: Say = quiet,
) -> str:
    """Register the instruments on the server's instance (saying which are new) and launch one backfill of the
    exchange's flow job over every instrument x month.

    Returns the backfill id. The daemon then runs one run per partition (no backfill policy).
    """
    from aperiodic_pipelines.defs.partitions import flow_partition_key
    from aperiodic_pipelines.defs.venue import has_venue_step

    if isinstance(symbols, (str, Instrument)):
        symbols = [symbols]
    instruments = [s if isinstance(s, Instrument) else resolve_instrument(exchange, s) for s in symbols]
    if not instruments or not months:
        raise RunSetupError("a backfill needs at least one instrument and one month")
    repository = find_repository(url, location)
    for instrument in register_on_webserver(url, repository, instruments):
        say(f"registered instrument {instrument} ({instrument.atlas}) on the webserver's instance")

    what = instruments[0].native if len(instruments) == 1 else f"{len(instruments)} instruments"
    if has_venue_step(exchange):
        return _submit_venue_backfill(url, repository, exchange, instruments, months, what)
    # A backfill of the partitioned job runs exactly these months. An asset backfill would also run
    # second_stats..published_flow_bars of the month after the range (it reads raw trades of the range's last
    # month through the m−1 mapping). The exchange tag feeds the per-exchange run limit in dagster.yaml.
    params = {
        "selector": {
            "partitionSetName": f"{exchange_of(exchange).flow_job_name}_partition_set", "repositorySelector": repository
        },
        "partitionNames": [str(flow_partition_key(exchange, i.native, m)) for i in instruments for m in months],
        "title": f"{exchange} {what} {months[0]}..{months[-1]}",
        "tags": [{"key": LAUNCHED_BY_TAG, "value": "cli"}, {"key": EXCHANGE_TAG, "value": exchange}],
        "fromFailure": False,
    }
    launched = graphql(url, _LAUNCH_BACKFILL_MUTATION, {"backfillParams": params})["launchPartitionBackfill"]
    if launched["__typename"] != "LaunchBackfillSuccess":
        raise RunSetupError(f"backfill not launched ({launched['__typename']}): {launched.get('message', '')}")
    return launched["backfillId"]


def _submit_venue_backfill(url: str, repository: dict[str, str], exchange_name: str, instruments: Sequence[Instrument],
                           months: Sequence[str], what: str) -> str:
    """An asset backfill of the venue months and the instruments' months of every asset of the exchange's flow
    job: the daemon runs each venue month before the instruments' runs of that month (their dependency), and each
    instrument's months in order (second_stats reads the month before). Exactly these partitions run."""
    from aperiodic_pipelines.defs.partitions import exchange_of as graph_of
    from aperiodic_pipelines.defs.partitions import flow_partition_key, month_partition_key
    from aperiodic_pipelines.defs.venue import venue_hours_key

    exchange = graph_of(exchange_name)
    pipeline = {**repository, "pipelineName": exchange_of(exchange_name).flow_job_name}
    nodes = graphql(url, _JOB_ASSETS_QUERY, {"pipeline": pipeline})["assetNodes"]
    if not nodes:
        raise RunSetupError(f"the webserver at {url} shows no assets in job {pipeline['pipelineName']}")
    first, last = months[0], months[-1]
    flow_ranges = [{"start": str(flow_partition_key(exchange.name, i.native, first)),
                    "end": str(flow_partition_key(exchange.name, i.native, last))} for i in instruments]
    partitions_by_assets = [
        {"assetKey": {"path": venue_hours_key(exchange).path},
         "partitions": {"ranges": [{"start": month_partition_key(first), "end": month_partition_key(last)}]}},
        *({"assetKey": {"path": node["assetKey"]["path"]}, "partitions": {"ranges": flow_ranges}} for node in nodes),
    ]
    params = {
        "partitionsByAssets": partitions_by_assets,
        "title": f"{exchange.name} {what} {first}..{last} (venue months first)",
        "tags": [{"key": LAUNCHED_BY_TAG, "value": "cli"}, {"key": EXCHANGE_TAG, "value": exchange.name}],
    }
    launched = graphql(url, _LAUNCH_BACKFILL_MUTATION, {"backfillParams": params})["launchPartitionBackfill"]
    if launched["__typename"] != "LaunchBackfillSuccess":
        raise RunSetupError(f"backfill not launched ({launched['__typename']}): {launched.get('message', '')}")
    return launched["backfillId"]
