"""Global policies, in one place: retries, pools, kinds, owners, tags, code versions, due dates and freshness,
failure handling.

Every exchange's graph is built by `factory.py` from these; nothing here is specific to one exchange.
"""

# No `from __future__ import annotations`: not needed, and this module is imported by assets Dagster inspects.
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

from dagster import Backoff, Failure, FreshnessPolicy, Jitter, RetryPolicy

from aperiodic_pipelines.domain.errors import (
    ChecksumMismatchError,
    CorruptArchiveError,
    InvalidBarsError,
    InvalidTradesError,
    NotPublishedError,
    SymbolError,
)
from aperiodic_pipelines.storage.staging import MissingInputError

# Bump an asset's code version when its output for the same input changes; Dagster then flags stale partitions.
RAW_TRADES_VERSION = "1"
SECOND_STATS_VERSION = "1"
FLOW_BARS_VERSION = "2"  # 2: `time` is zone-less UTC wall clock (spec §2 as changed)
PUBLISHED_VERSION = "3"  # 3: per-exchange graphs; published month manifest as the asset's uri
CODE_VERSION = f"flow-bars-v{FLOW_BARS_VERSION}"  # written into every published file (spec §4)

RAW_GROUP = "raw"
FLOW_GROUP = "flow_bars"
OWNERS = ["team:data-platform"]
EXCHANGE_TAG = "aperiodic/exchange"  # run tag the per-exchange run limit in dagster.yaml keys on

# Network steps: archive downloads and store uploads fail transiently; retry with growing, jittered waits.
NETWORK_RETRY = RetryPolicy(max_retries=3, delay=5, backoff=Backoff.EXPONENTIAL, jitter=Jitter.PLUS_MINUS)

# Binance publishes last month's monthly archive on the first Monday (so by the 7th at the latest); OKX's daily
# files appear about two days after the day; Hyperliquid's node archive hours within a day. The 8th at 06:00 UTC
# is after all of them, with a margin: the schedule runs then, and a published month is due then plus a grace.
SCHEDULE_DAY_OF_MONTH = 8
SCHEDULE_HOUR_UTC = 6
# A month is due 18 h after the schedule (its runs, retries included, finish well within that): the 9th, 00:00 UTC.
DUE_DAY_OF_MONTH = 9
DUE_HOUR_UTC = 0
DUE_GRACE = timedelta(hours=(DUE_DAY_OF_MONTH - SCHEDULE_DAY_OF_MONTH) * 24 + DUE_HOUR_UTC - SCHEDULE_HOUR_UTC)
# Asset-level freshness of the published bars in the UI: some partition published between schedule and due time.
MONTHLY_FRESHNESS = FreshnessPolicy.cron(
    deadline_cron=f"0 {DUE_HOUR_UTC} {DUE_DAY_OF_MONTH} * *", lower_bound_delta=DUE_GRACE, timezone="UTC"
)


def pool_name(slug: str) -> str:
    """Concurrency pool of an exchange's archive downloads, e.g. `download_binance_futures`."""
    return f"download_{slug}"


def kinds(store_is_s3: bool) -> set[str]:
    return {"polars", "parquet", *({"s3"} if store_is_s3 else set())}


def asset_tags(exchange: str) -> dict[str, str]:
    """Asset (definition) tags: filter the catalog by exchange."""
    return {EXCHANGE_TAG: exchange}


def exchange_asset_args(partitions_def: Any, exchange: str, kinds: set[str]) -> dict[str, Any]:
    """What every asset of one exchange's graph shares: its partitions, kinds, owners and tags."""
    return {"partitions_def": partitions_def, "kinds": kinds, "owners": OWNERS, "tags": asset_tags(exchange)}


# Errors that a retry cannot fix (bad or missing data, wrong order of runs): fail at once, never retried.
PERMANENT_ERRORS = (
    InvalidTradesError,
    InvalidBarsError,
    SymbolError,
    NotPublishedError,
    ChecksumMismatchError,
    CorruptArchiveError,
    MissingInputError,
    ValueError,
)


@contextmanager
def permanent_failures() -> Iterator[None]:
    """Turn permanent errors into a `Failure` that skips the RetryPolicy (transient ones stay retryable)."""
    try:
        yield
    except PERMANENT_ERRORS as exc:
        raise Failure(description=f"{type(exc).__name__}: {exc}", allow_retries=False) from exc
