"""Where the archives live. Defaults are the real public locations; tests and the demo point them at a local mirror."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_BINANCE_URL = "https://data.binance.vision"
DEFAULT_OKX_URL = "https://static.okx.com/cdn/okex/traderecords"
DEFAULT_HYPERLIQUID_URL = "s3://hl-mainnet-node-data"
SOURCE_KINDS = ("archive", "tardis")


@dataclass(frozen=True)
class SourceConfig:
    binance_url: str = DEFAULT_BINANCE_URL
    okx_url: str = DEFAULT_OKX_URL
    hyperliquid_url: str = DEFAULT_HYPERLIQUID_URL
    tardis_url: str | None = None  # a directory or an http(s) base; no public default
    cache_dir: Path = Path("data/cache")
    binance_dataset: str = "aggTrades"  # or "trades"
    source: str = "archive"  # "archive": the exchange's public archive; "tardis": Tardis-format CSV files
    # Build a month whose upstream lacks some days (recorded as `missing_days`) instead of failing.
    allow_missing_days: bool = False
    # Sent as `Authorization: Bearer` to a Tardis HTTP base; kept out of repr, logs, errors and metadata.
    tardis_api_key: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.source not in SOURCE_KINDS:
            raise ValueError(f"APERIODIC_SOURCE must be one of {SOURCE_KINDS}, got {self.source!r}")
        if self.source == "tardis" and not self.tardis_url:
            raise ValueError("APERIODIC_SOURCE=tardis needs APERIODIC_TARDIS_URL (a directory or an http(s) base)")

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> SourceConfig:
        env = os.environ if environ is None else environ
        return cls(
            binance_url=env.get("APERIODIC_BINANCE_URL", DEFAULT_BINANCE_URL).rstrip("/"),
            okx_url=env.get("APERIODIC_OKX_URL", DEFAULT_OKX_URL).rstrip("/"),
            hyperliquid_url=env.get("APERIODIC_HYPERLIQUID_URL", DEFAULT_HYPERLIQUID_URL).rstrip("/"),
            tardis_url=(env.get("APERIODIC_TARDIS_URL") or None),
            cache_dir=Path(env.get("APERIODIC_CACHE_DIR", "data/cache")),
            binance_dataset=env.get("APERIODIC_BINANCE_DATASET", "aggTrades"),
            source=env.get("APERIODIC_SOURCE", "archive"),
            allow_missing_days=env.get("APERIODIC_ALLOW_MISSING_DAYS", "").strip().lower() in ("1", "true", "yes"),
            tardis_api_key=env.get("APERIODIC_TARDIS_API_KEY") or None,
        )
