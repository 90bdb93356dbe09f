"""Instruments: resolved from a symbol, checked against the exchange's universe, registered with their first month,
listed and removed; and the check of a month request before any run exists.

An instrument is a key of its exchange's dynamic partitions (`{slug}_instruments`, the native id). Its first month
(from the exchange's listing where the archive has one, `sources/universe.py`) is kept in the instance's own
key-value store (`instance.run_storage` cursor values, key `aperiodic/first_month/{exchange}/{native}`,
`defs.partitions.FIRST_MONTH_KEY`: the open month's daily asset reads it for day 1's carry): the same
database as the partitions, so the webserver, the daemon and every machine of a Postgres deployment read the same
value, and it survives with the instance. Dynamic partitions carry no metadata of their own, and a 2-D
`MultiPartitionsDefinition` has one month range for every instrument, so the UI still shows the exchange's months
for each instrument; the registry's first month is what the CLI checks requests against and what
`instruments list` shows.

Removing an instrument removes its partition key (the schedules and overdue alerts stop asking for it) and its
first month; nothing published is deleted, and its runs and materialisations stay in the instance's history.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from aperiodic_pipelines.domain.exchanges import EXCHANGES_BY_NAME, exchange_of
from aperiodic_pipelines.domain.months import current_month, last_closed_month, next_month, previous_month
from aperiodic_pipelines.domain.settings import SourceSettings
from aperiodic_pipelines.domain.symbols import resolve_symbol, to_atlas
from aperiodic_pipelines.operator.instance import RunSetupError

if TYPE_CHECKING:
    from dagster import DagsterInstance

    from aperiodic_pipelines.sources.universe import Listing



@dataclass(frozen=True)
class Instrument:
    exchange: str
    atlas: str
    native: str  # the partition key

    @property
    def instruments_name(self) -> str:
        return exchange_of(self.exchange).instruments_name

    def __str__(self) -> str:
        return f"{self.exchange} {self.native}"


@dataclass(frozen=True)
class RegisteredInstrument:
    instrument: Instrument
    first_month: str | None  # None: registered before first months were recorded, or through a webserver


class MonthRefusedError(RunSetupError):
    """A month no run can publish: before the archive or the listing, or in the future."""


def resolve_instrument(exchange: str, symbol: str) -> Instrument:
    """An Atlas symbol or native id on `exchange`, checked for form (not against the exchange's universe)."""
    atlas, native = resolve_symbol(exchange, symbol)
    return Instrument(exchange, atlas, native)


def find_listing(instrument: Instrument, settings: SourceSettings | None = None) -> Listing:
    """The exchange's universe entry for the instrument; `NotListedError` (a `SymbolError`) with the reason when
    the archive does not hold it, `ListingUnavailableError` when the listing cannot be read."""
    from aperiodic_pipelines.domain.settings import Settings
    from aperiodic_pipelines.sources.universe import find_listing as universe_listing

    return universe_listing(instrument.exchange, instrument.native, settings or Settings.from_env().sources)


def _first_month_key(instrument: Instrument) -> str:
    # The key lives with the partitions (`defs.partitions.FIRST_MONTH_KEY`): the daily asset reads it too. Imported
    # here, not at the top: this module is loaded by every CLI call, and the Dagster import costs ~0.6 s.
    from aperiodic_pipelines.defs.partitions import first_month_key

    return first_month_key(instrument.exchange, instrument.native)


def register_instrument(instance: DagsterInstance, instrument: Instrument, first_month: str | None = None) -> bool:
    """Add the instrument to its exchange's dynamic partitions (and record its first month when given); returns
    whether it was new."""
    if first_month is not None:
        instance.run_storage.set_cursor_values({_first_month_key(instrument): first_month})
    if instance.has_dynamic_partition(instrument.instruments_name, instrument.native):
        return False
    instance.add_dynamic_partitions(instrument.instruments_name, [instrument.native])
    return True


def recorded_first_month(instance: DagsterInstance, instrument: Instrument) -> str | None:
    from aperiodic_pipelines.defs.partitions import recorded_first_month as recorded

    return recorded(instance, instrument.exchange, instrument.native)


def remove_instrument(instance: DagsterInstance, instrument: Instrument) -> bool:
    """Remove the instrument's partition key and first month; returns whether it was registered. Published files,
    runs and materialisations are left as they are."""
    if not instance.has_dynamic_partition(instrument.instruments_name, instrument.native):
        return False
    instance.delete_dynamic_partition(instrument.instruments_name, instrument.native)
    instance.run_storage.set_cursor_values({_first_month_key(instrument): ""})  # the store has no delete
    return True


def registered_instruments(instance: DagsterInstance) -> list[RegisteredInstrument]:
    """Every registered instrument, by exchange then native id, with its recorded first month."""
    found = []
    for exchange in EXCHANGES_BY_NAME.values():
        for native in sorted(instance.get_dynamic_partitions(exchange.instruments_name)):
            try:
                atlas = to_atlas(exchange.name, native)
            except ValueError:
                atlas = "?"  # registered by hand with an id the symbology does not map
            instrument = Instrument(exchange.name, atlas, native)
            found.append(RegisteredInstrument(instrument, recorded_first_month(instance, instrument)))
    return found


def check_months(
    instrument: Instrument,
    months: list[str],
    first_month: str | None = None,
    *,
    last_listed: str | None = None,
    now: datetime | None = None,
    allow_open: bool = False,
) -> None:
    """Refuse, in one line, a month range that reaches before the exchange's archive or the instrument's first
    month, past the instrument's archive when it has ended, or into the future; the open month too unless
    `allow_open` (`materialize`: its complete days, as daily files, through the daily job).

    `last_listed` is the instrument's last monthly file in the listing: when it is older than the month before the
    last closed one, the exchange has stopped archiving the instrument (delisted), and later months are refused.
    A newer one may just precede a monthly file not yet published (the month's daily files can still build it)."""
    exchange = exchange_of(instrument.exchange)
    first, last = months[0], months[-1]
    if first < exchange.first_month:
        raise MonthRefusedError(
            f"{first} is before {exchange.name}'s archive, which starts {exchange.first_month} "
            f"({exchange.archive}); ask from {exchange.first_month}"
        )
    if first_month is not None and first < first_month:
        raise MonthRefusedError(
            f"{first} is before {instrument}'s first month in the archive, {first_month}; ask from {first_month}"
        )
    open_month, closed = current_month(now), last_closed_month(now)
    if last > open_month:
        raise MonthRefusedError(f"{last} is in the future (the open month is {open_month}); the latest month that "
                                f"can be published is {closed} (and {open_month}'s complete days, as daily files)")
    # The open month is published day by day (issue 15): `materialize` of it publishes its complete days not yet
    # published (`allow_open`); a monthly partition (backfills) exists only once it has closed.
    if last == open_month and not allow_open:
        raise MonthRefusedError(
            f"{last} is the open month: its monthly file can be published from {next_month(open_month)}-01 UTC, "
            f"once it has closed; its complete days are published by `aperiodic-pipelines materialize --month "
            f"{open_month}` (and the daily schedule); the latest month that can be backfilled is {closed}"
        )
    if last_listed is not None and last_listed < previous_month(closed) and last > last_listed:
        raise MonthRefusedError(
            f"{last} is after {instrument}'s last month in the archive, {last_listed} (no monthly file since: "
            f"delisted); ask up to {last_listed}"
        )
