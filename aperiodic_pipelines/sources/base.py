"""What every source returns: canonical trades for one instrument-month, plus the lineage of how they were made.

Sources know HTTP, zip, checksums and S3, never Dagster. A source writes the month's canonical trades
(spec §1: sorted by (ts_exchange, trade_id), one row per trade_id) to a local parquet file and returns a
`SourceResult` describing what it read.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class SourceObject:
    """One upstream object that fed a month: where it came from, its size and its sha256."""

    location: str
    size: int
    sha256: str


@dataclass
class SourceResult:
    """Canonical trades of one instrument-month (or, from `fetch_day`, one UTC day) written to `path`, with what the
    run saw on the way."""

    exchange: str
    symbol: str  # Atlas symbol, e.g. perpetual-BTC-USDT:USDT
    native_symbol: str  # exchange id, e.g. BTCUSDT
    month: str  # YYYY-MM
    path: Path
    trade_count: int
    duplicates_dropped: int = 0
    id_gaps: int = 0  # number of places where consecutive trade ids jump by more than one
    has_arrival_times: bool = False
    dataset: str = ""  # e.g. "aggTrades", "trades", "node_fills_by_block", "tardis"
    objects: list[SourceObject] = field(default_factory=list)
    # Days (YYYY-MM-DD, sorted) the upstream never published, when the operator allowed building without them
    # (APERIODIC_ALLOW_MISSING_DAYS=1); empty for a complete month.
    missing_days: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)  # source-specific, JSON-able facts (e.g. partial_month)
    # Set by `fetch_day`: the one UTC day (YYYY-MM-DD) the file holds; `month` is then that day's month.
    day: str | None = None

    def to_metadata(self) -> dict:
        """Plain JSON-able dict for run metadata and parquet key-value metadata."""
        out = asdict(self)
        out["path"] = str(self.path)
        out["missing_days"] = sorted(self.missing_days)
        return out
