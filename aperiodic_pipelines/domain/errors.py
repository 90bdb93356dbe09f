"""Errors the platform raises for bad input. Each names the thing that was wrong."""


class AperiodicError(Exception):
    """Base class: one clear message that names the offending object."""


class InvalidTradesError(AperiodicError):
    """Canonical trades broke a rule of spec §1."""


class InvalidBarsError(AperiodicError):
    """A flow-bar table broke a rule of spec §2–§3."""


class SymbolError(AperiodicError, ValueError):
    """A malformed, unknown or unsupported exchange or symbol."""


class InvalidMonthError(AperiodicError, ValueError):
    """A month that is not written `YYYY-MM`, or one outside what an exchange has."""


class InvalidDayError(AperiodicError, ValueError):
    """A day that is not written `YYYY-MM-DD`."""


class NotPublishedError(AperiodicError):
    """An archive the exchange has not published (yet): HTTP 404 or a missing S3 key."""


class ChecksumMismatchError(AperiodicError):
    """A downloaded file whose digest differs from the published one."""


class CorruptArchiveError(AperiodicError):
    """An archive that cannot be decompressed or parsed, or that exceeds a reader's ceiling."""


class StoreError(AperiodicError):
    """The object store refused or failed an operation."""


class ContractValueError(AperiodicError, ValueError):
    """A trade whose contract value is unknown: a time the contract table does not cover, or inside a changeover."""
