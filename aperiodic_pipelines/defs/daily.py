"""The open month, day by day (issue 15): `{slug}/open_month_flow_bars`, its job, its daily schedule and its check.

    sources.fetch_day ──► flow.compute_day_flow_bars ──► storage.daily.publish_day     (per complete day, in order)

One asset per exchange, partitioned by **instrument only** (the same dynamic `{slug}_instruments` partitions as the
monthly graph): its partition is "this instrument's open month", whatever the month. No instrument × day
partitions, so the asset stays far under Dagster's ~100,000 partitions per asset for ever. Each run publishes every
complete day of the open month not yet published (`publish_open_month`), and records per instrument:

- `complete_through`: the last day published (monthly or daily, `storage.daily.last_complete_day`);
- `days_published`: the open month's published days; `published_now`: the days this run published;
- `waiting_for` / `upstream_missing` / `skipped_upstream`: the first day upstream has not (fully) published.

**A gap waits.** Days are computed in order, each from the carry published with the day before
(`storage.daily.read_carry_frame`; on day 1 `flow.month_start_carry` from raw month m−1: the store's raw file, else the
source's month). The first day whose raw inputs are not out (`DayNotPublishedError`) stops the run's chain: the
days after it wait, and no bar is ever computed from missing trades. Not published is a normal state: the run
succeeds and says what it waits for; a day upstream skipped (`later_published`) is not retried by a retry policy,
only asked again by the next day's schedule (one cheap request), and reported by the overdue check below.

**Freshness per instrument.** Dagster's `FreshnessPolicy` judges an asset by its latest materialization of any
partition, so it would show "Passing" for an instrument days behind. Instead the check `days_on_time` is
evaluated per instrument partition in every daily run (single-partition runs, so Dagster records it per
partition). A day is due `APERIODIC_DAILY_DUE_HOURS` after it ends. The `overdue_days` sensor (`freshness.py`)
posts the alert and requests a daily run of the instrument: it publishes the day if upstream has it by now, else
its check fails with the alert's words, so the UI shows the failure beside the alert. (A runless check
evaluation cannot do it: Dagster's storage keeps one runless execution per check and partition, so a second one
fails on a unique constraint.) The check alert sensors leave `days_on_time` to `overdue_days`: one message per
incident.
"""

# No `from __future__ import annotations` here: Dagster inspects the `context` annotation at runtime.
import tempfile
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    AssetsDefinition,
    Config,
    DefaultScheduleStatus,
    MaterializeResult,
    RunRequest,
    ScheduleDefinition,
    ScheduleEvaluationContext,
    asset,
    define_asset_job,
    schedule,
)

from aperiodic_pipelines.defs import policies
from aperiodic_pipelines.defs.partitions import PartitionedExchange, instrument_first_month
from aperiodic_pipelines.defs.resources import SourcesResource, StoreResource
from aperiodic_pipelines.domain.intervals import INTERVALS
from aperiodic_pipelines.domain.months import (
    check_day,
    days_of_month,
    month_bounds_us,
    month_of_day,
    previous_month,
)
from aperiodic_pipelines.domain.settings import DailySettings
from aperiodic_pipelines.storage import ObjectStore, raw_key

if TYPE_CHECKING:
    from aperiodic_pipelines.flow import FlowCarry

DAILY_CHECK = "days_on_time"
OPEN_MONTH_ASSET = "open_month_flow_bars"
DAY_US = 86_400_000_000


def daily_asset_key(slug: str) -> AssetKey:
    return AssetKey([slug, OPEN_MONTH_ASSET])


def daily_job_name(slug: str) -> str:
    return f"{slug}_daily_flow_bars_job"


# --- when a day is due --------------------------------------------------------------------------------------------


def day_due_at(day: str, daily: DailySettings) -> datetime:
    """When `day`'s daily files must be published: `due_hours` after the day ends (UTC)."""
    end = datetime.fromisoformat(check_day(day)).replace(tzinfo=UTC) + timedelta(days=1)
    return end + timedelta(hours=daily.due_hours)


def latest_due_day(now: datetime, daily: DailySettings) -> str:
    """The newest day whose due time has passed at `now`."""
    day = (now.astimezone(UTC) - timedelta(hours=daily.due_hours)).date() - timedelta(days=1)
    return day.isoformat()


def complete_days_before(today: date) -> list[str]:
    """The complete days of `today`'s month before `today` (empty on the 1st)."""
    return [d for d in days_of_month(today.strftime("%Y-%m")) if d < today.isoformat()]


# --- the daily step, without Dagster ----------------------------------------------------------------------------


@dataclass(frozen=True)
class OpenMonthOutcome:
    """What one daily step did for one instrument."""

    month: str
    published_now: tuple[str, ...]
    days_published: tuple[str, ...]  # the open month's published days after the step
    waiting_for: str | None = None  # first complete day not published: its raw inputs are not all out
    upstream_missing: tuple[str, ...] = ()
    skipped_upstream: bool = False  # a later object is out: the upstream skipped this one (may never come)

    @property
    def nothing_new(self) -> bool:
        return not self.published_now


FetchDay = Callable[[str, Path], pl.DataFrame]  # raw day, scratch file → canonical trades (raises NotPublished)
# (scratch dir, the step's pins) → raw month m−1, scanned (None: before the first)
PreviousMonth = Callable[[Path, ExitStack], pl.LazyFrame | pl.DataFrame | None]


@dataclass
class _RawDays:
    """Raw days read once per step (the `true` variant reads d−1, d, d+1 for each d: neighbours are shared)."""

    fetch: FetchDay
    previous: PreviousMonth
    month: str
    workdir: Path
    pins: ExitStack
    cache: dict[str, pl.DataFrame] = field(default_factory=dict)
    previous_loaded: bool = False
    previous_frame: pl.LazyFrame | pl.DataFrame | None = None

    def previous_month(self) -> pl.LazyFrame | pl.DataFrame | None:
        if not self.previous_loaded:
            self.previous_frame = self.previous(self.workdir, self.pins)
            self.previous_loaded = True
        return self.previous_frame

    def day(self, day: str) -> pl.DataFrame | None:
        """Canonical trades of raw `day`; None for a day of a month before the instrument's first."""
        if day not in self.cache:
            # A day of raw month m−1 comes from that month's file when day 1's carry has read it already (or it
            # does not exist: the instrument's first month), else from the day's own objects.
            if month_of_day(day) < self.month and self.previous_loaded:
                previous = self.previous_frame
                if previous is None:
                    return None
                start = int(datetime.fromisoformat(day).replace(tzinfo=UTC).timestamp()) * 1_000_000
                self.cache[day] = previous.lazy().filter(pl.col("ts_exchange").is_between(start, start + DAY_US,
                                                                                    closed="left")).collect()
            else:
                self.cache[day] = self.fetch(day, self.workdir / f"raw-{day}.parquet")
        return self.cache[day]


def publish_open_month(
    store: ObjectStore,
    *,
    exchange: str,
    symbol: str,
    native_symbol: str,
    variants: tuple[str, ...],
    today: date,
    fetch_day: FetchDay,
    previous_month_trades: PreviousMonth,
    log: Callable[[str], None] = lambda _m: None,
) -> OpenMonthOutcome:
    """Publish each complete day of `today`'s month not yet published (after the previous month's remaining days
    while that month has daily files and no monthly file), in order, whole with its carries; stop at the first day
    whose raw inputs are not all published (`DayNotPublishedError`): later days wait."""
    from aperiodic_pipelines.flow import (
        FlowCarry,
        compute_day_flow_bars,
        validate_month_bars,
    )
    from aperiodic_pipelines.flow.daily import raw_days_needed
    from aperiodic_pipelines.sources.daily import DayNotPublishedError
    from aperiodic_pipelines.storage.daily import publish_day, published_days

    month = today.strftime("%Y-%m")
    already = published_days(store, exchange, native_symbol, month)
    todo = [d for d in complete_days_before(today) if d not in already]
    # Early in a month the previous one is still open in the store (days published, no monthly file yet): its
    # last days are finished first, so its daily files reach its end while its monthly file is not out.
    before = published_days(store, exchange, native_symbol, previous_month(month))
    if before and not already:
        todo = [d for d in days_of_month(previous_month(month)) if d > before[-1]] + todo
    published: list[str] = []
    if not todo:
        return OpenMonthOutcome(month, (), tuple(already))
    with tempfile.TemporaryDirectory(prefix="aperiodic-daily-") as tmp, ExitStack() as pins:
        raw = _RawDays(fetch_day, previous_month_trades, month, Path(tmp), pins)
        carries: dict[str, FlowCarry] = {}
        for day in todo:
            try:
                for timestamp in variants:
                    if timestamp not in carries:
                        carries[timestamp] = _carry_for(store, exchange, native_symbol, day, timestamp, raw)
                inputs = {t: [raw.day(d) for d in raw_days_needed(day, t)] for t in variants}
            except DayNotPublishedError as missing:
                log(f"{day}: waits for upstream ({missing})")
                return OpenMonthOutcome(month, tuple(published), _in_month(already + published, month), day,
                                        missing.missing, missing.later_published)
            bars: dict[tuple[str, str], pl.DataFrame] = {}
            next_carries: dict[str, FlowCarry] = {}
            for timestamp in variants:
                frames = [f for f in inputs[timestamp] if f is not None]
                trades = pl.concat(frames) if frames else raw.day(day)
                result = compute_day_flow_bars(trades, carries[timestamp], day=day)
                validate_month_bars(result.bars, month=day, name=f"{exchange} {native_symbol} {day} {timestamp}")
                bars.update({(timestamp, interval): result.bars[interval] for interval in INTERVALS})
                next_carries[timestamp] = result.carry
            publish_day(store, exchange=exchange, symbol=symbol, native_symbol=native_symbol, day=day, bars=bars,
                        carries=next_carries)
            carries = next_carries
            published.append(day)
            log(f"{day}: published ({', '.join(variants)}, {len(INTERVALS)} intervals each)")
            for old in [d for d in raw.cache if d < (date.fromisoformat(day) - timedelta(days=1)).isoformat()]:
                del raw.cache[old]  # keep the neighbours a `true` step still needs, drop the rest
    return OpenMonthOutcome(month, tuple(published), _in_month(already + published, month))


def _in_month(days: list[str], month: str) -> tuple[str, ...]:
    return tuple(d for d in days if month_of_day(d) == month)


def _carry_for(store: ObjectStore, exchange: str, native: str, day: str, timestamp: str, raw: _RawDays) -> "FlowCarry":
    from aperiodic_pipelines.flow import FlowCarry, month_start_carry
    from aperiodic_pipelines.storage.daily import read_carry_frame

    frame = read_carry_frame(store, exchange, native, day, timestamp)
    if frame is not None:
        return FlowCarry.from_frame(frame)
    if not day.endswith("-01"):
        raise ValueError(f"{exchange} {native}: no carry published for {day} although the day before is published "
                         "(the store's index is inconsistent)")
    previous = raw.previous_month()
    first_day = raw.day(day) if timestamp == "true" and previous is not None else None
    return month_start_carry(previous, month=month_of_day(day), timestamp=timestamp, first_day_trades=first_day)


def previous_month_from(
    store: ObjectStore, sources: SourcesResource, exchange: str, native: str, month: str, first_month: str
) -> PreviousMonth:
    """Raw month m−1 for day 1's carry: the store's raw file (published by the monthly graph), else the source's
    month (which falls back to daily files before the monthly file exists); None before the first month.

    The month is scanned, never held: a busy month's trades are ~1.4 GB in memory, and the carry needs only the
    last minutes of it (the per-second pass streams; a day of m−1 is read by its row groups). The store's file is
    pinned for the step (`ObjectStore.pinned`), so a republication of m−1 during the step cannot change what its
    several reads see.
    """

    def read(workdir: Path, pins: ExitStack) -> pl.LazyFrame | None:
        before = previous_month(month)
        if before < first_month:
            return None
        key = raw_key(exchange, native, before)
        if store.exists(key):
            return pl.scan_parquet(pins.enter_context(store.pinned(key)))
        from aperiodic_pipelines.sources import fetch_month

        kwargs: dict[str, Any] = {}
        if (client := sources.get_s3_client()) is not None:
            kwargs["s3_client"] = client
        result = fetch_month(exchange, native, before, dest=workdir / f"raw-{before}.parquet", config=sources.get_config(), **kwargs)
        start, _ = month_bounds_us(before)
        return pl.scan_parquet(result.path).filter(pl.col("ts_exchange") >= start)

    return read


def fetch_day_from(sources: SourcesResource, exchange: str, native: str) -> FetchDay:
    def fetch(day: str, dest: Path) -> pl.DataFrame:
        from aperiodic_pipelines.domain.settings import Settings
        from aperiodic_pipelines.sources import fetch_day

        kwargs: dict[str, Any] = {}
        if (client := sources.get_s3_client()) is not None:
            kwargs["s3_client"] = client
        result = fetch_day(exchange, native, day, dest=dest, config=sources.get_config(),
                           http=Settings.from_env().http, **kwargs)
        return pl.read_parquet(result.path)

    return fetch


# --- freshness per instrument -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class DayLateness:
    """Whether an instrument's open month is behind its due day, and why (from its last daily run)."""

    due_day: str
    complete_through: str | None
    reason: str = ""

    @property
    def overdue(self) -> bool:
        return self.complete_through is None or self.complete_through < self.due_day

    def describe(self) -> str:
        state = f"published through {self.complete_through}" if self.complete_through else "nothing published"
        return f"{state}; due through {self.due_day}" + (f" ({self.reason})" if self.reason else "")


def lateness_reason(waiting_for: str | None, missing: tuple[str, ...] | list[str], skipped: bool) -> str:
    if waiting_for is None:
        return "no daily run has published it"
    if skipped:
        return f"{waiting_for} skipped upstream: a later object is out, missing {', '.join(missing)}"
    return f"{waiting_for} not published upstream yet: missing {', '.join(missing)}"


def day_lateness(
    store: ObjectStore, exchange: str, native: str, now: datetime, daily: DailySettings, first_month: str,
    reason: str = "",
) -> DayLateness | None:
    """The instrument's lateness at `now`; None when no day is due yet (before its first month)."""
    from aperiodic_pipelines.storage.daily import last_complete_day

    due = latest_due_day(now, daily)
    if due < f"{first_month}-01":
        return None
    return DayLateness(due, last_complete_day(store, exchange, native, "exchange", "1d"), reason)


def check_result(key: AssetKey, lateness: DayLateness | None) -> AssetCheckResult:
    """The `days_on_time` verdict of one instrument partition (its failed rule is the alert's line)."""
    from aperiodic_pipelines.defs.checks import FAILED_RULE

    passed = lateness is None or not lateness.overdue
    state = lateness.describe() if lateness else "no day due yet"
    return AssetCheckResult(asset_key=key, check_name=DAILY_CHECK, passed=passed, severity=AssetCheckSeverity.ERROR,
                            metadata={"state": state, **({} if passed else {FAILED_RULE: f"overdue: {state}"})})


# --- Dagster ------------------------------------------------------------------------------------------------------


class OpenMonthConfig(Config):
    """`as_of`: the day treated as today (YYYY-MM-DD, UTC); default the real today. For replays and tests."""

    as_of: str | None = None


def build_open_month_asset(exchange: PartitionedExchange, kinds: set[str], daily: DailySettings) -> AssetsDefinition:
    key = daily_asset_key(exchange.slug)
    variants = exchange.variants

    @asset(
        key=key,
        **policies.exchange_asset_args(exchange.instrument_partitions, exchange.name, kinds),
        group_name="open_month",
        code_version=policies.FLOW_BARS_VERSION,
        retry_policy=policies.NETWORK_RETRY,
        check_specs=[AssetCheckSpec(
            DAILY_CHECK, asset=key, partitions_def=exchange.instrument_partitions, description=(
                f"every day is published within {daily.due_hours:g} h of its end (APERIODIC_DAILY_DUE_HOURS); "
                "the overdue_days sensor records the same verdict when it alerts"),
        )],
        description=(
            f"{exchange.name}'s open month, per instrument: each complete day published whole "
            f"({' and '.join(variants)} time, 8 intervals, with the carry for the next day) to "
            "flow/{timestamp}/{exchange}/{interval}/{native}/{YYYY-MM-DD}.parquet. Metadata complete_through."
        ),
    )
    def open_month_flow_bars(
        context: AssetExecutionContext, config: OpenMonthConfig, store: StoreResource, sources: SourcesResource
    ) -> MaterializeResult:
        from aperiodic_pipelines.domain.symbols import to_atlas
        from aperiodic_pipelines.storage.daily import last_complete_day
        from aperiodic_pipelines.storage.publication import PublicationConflictError

        native = context.partition_key
        today = date.fromisoformat(check_day(config.as_of)) if config.as_of else datetime.now(UTC).date()
        month = today.strftime("%Y-%m")
        object_store = store.get_store()
        first_month = instrument_first_month(context.instance, exchange, native)
        try:
            with policies.permanent_failures():
                outcome = publish_open_month(
                    object_store, exchange=exchange.name, symbol=to_atlas(exchange.name, native),
                    native_symbol=native, variants=variants, today=today,
                    fetch_day=fetch_day_from(sources, exchange.name, native),
                    previous_month_trades=previous_month_from(object_store, sources, exchange.name, native, month,
                                                              first_month),
                    log=context.log.info,
                )
        except PublicationConflictError as exc:
            from dagster import Failure

            raise Failure(description=f"PublicationConflictError: {exc}", allow_retries=False) from exc
        through = last_complete_day(object_store, exchange.name, native, "exchange", "1d")
        reason = lateness_reason(outcome.waiting_for, outcome.upstream_missing, outcome.skipped_upstream)
        now = datetime.combine(today, datetime.min.time(), UTC) if config.as_of else datetime.now(UTC)
        lateness = day_lateness(object_store, exchange.name, native, now, daily, first_month, reason)
        metadata: dict[str, Any] = {
            "complete_through": through or "none",
            "open_month": month,
            "days_published": len(outcome.days_published),
            "published_days": ", ".join(d[-2:] for d in outcome.days_published) or "none",
            "published_now": ", ".join(outcome.published_now) or "nothing new",
        }
        if outcome.waiting_for:
            metadata.update({
                "waiting_for": outcome.waiting_for,
                "upstream_missing": ", ".join(outcome.upstream_missing)[:2000],
                "skipped_upstream": outcome.skipped_upstream,
            })
        return MaterializeResult(metadata=metadata, check_results=[check_result(key, lateness)])

    return open_month_flow_bars


@dataclass(frozen=True)
class DailyGraph:
    asset: AssetsDefinition
    job: Any
    schedule: ScheduleDefinition


def build_daily_graph(exchange: PartitionedExchange, kinds: set[str], daily: DailySettings) -> DailyGraph:
    """The open-month asset, `{slug}_daily_flow_bars_job` and the `{slug}_daily_schedule` (one run per registered
    instrument, at the exchange's hour)."""
    open_month = build_open_month_asset(exchange, kinds, daily)
    job = define_asset_job(
        daily_job_name(exchange.slug), selection=[open_month.key], partitions_def=exchange.instrument_partitions,
        tags={policies.EXCHANGE_TAG: exchange.name},
        description=f"{exchange.name}: the open month's complete days not yet published, per instrument.",
    )
    hour = daily.schedule_hour(exchange.name, exchange.source)

    @schedule(
        name=f"{exchange.slug}_daily_schedule", job=job, cron_schedule=f"0 {hour} * * *", execution_timezone="UTC",
        default_status=DefaultScheduleStatus.RUNNING,
        description=f"Every day at {hour:02d}:00 UTC: one run per registered {exchange.name} instrument, publishing "
        "the open month's complete days not yet published.",
    )
    def daily_schedule(context: ScheduleEvaluationContext):
        day = context.scheduled_execution_time.astimezone(UTC).date().isoformat()
        for native in sorted(context.instance.get_dynamic_partitions(exchange.instruments_name)):
            yield RunRequest(run_key=f"{native}|{day}", partition_key=native)

    return DailyGraph(open_month, job, daily_schedule)
