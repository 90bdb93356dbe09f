"""The API's configuration: the `api`, `store` and `sources` parts of `domain.settings.Settings`, plus the preview.

Every `APERIODIC_*` variable is read by `Settings.from_env()` (the one owner of them); this module only picks
what `serve` needs and parses `--preview` (see docs/api.md).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from aperiodic_pipelines.domain.errors import SymbolError
from aperiodic_pipelines.domain.exchanges import EXCHANGES
from aperiodic_pipelines.domain.intervals import INTERVALS
from aperiodic_pipelines.domain.months import check_month
from aperiodic_pipelines.domain.settings import DEFAULT_STORE, SOURCE_KINDS, ConfigError, Settings
from aperiodic_pipelines.domain.symbols import resolve_symbol

API_PREFIX = "/api/v1"

__all__ = ["API_PREFIX", "ApiSettings", "ConfigError", "PreviewMonth"]


@dataclass(frozen=True)
class PreviewMonth:
    """One month the preview path serves (`serve --preview EXCHANGE:SYMBOL:INTERVAL:YYYY-MM`)."""

    exchange: str
    symbol: str  # Atlas
    native_symbol: str
    interval: str
    month: str

    @classmethod
    def parse(cls, text: str) -> PreviewMonth:
        """`binance-futures:perpetual-BTC-USDT:USDT:1h:2024-01` or `binance-futures:BTCUSDT:1h:2024-01`."""
        parts = text.rsplit(":", 2)
        head, interval, month = parts if len(parts) == 3 else ("", "", "")
        exchange, _, symbol = head.partition(":")
        if not (exchange and symbol and interval and month):
            raise ConfigError(f"--preview {text!r}: expected EXCHANGE:SYMBOL:INTERVAL:YYYY-MM")
        if exchange not in EXCHANGES:
            raise ConfigError(f"--preview {text!r}: unknown exchange {exchange!r} (supported: {', '.join(EXCHANGES)})")
        if interval not in INTERVALS:
            raise ConfigError(f"--preview {text!r}: interval must be one of {', '.join(INTERVALS)}")
        try:
            check_month(month)
            atlas, native = resolve_symbol(exchange, symbol)  # an Atlas symbol or the native id
        except (SymbolError, ValueError) as exc:
            raise ConfigError(f"--preview {text!r}: {exc}") from None
        return cls(exchange, atlas, native, interval, month)


@dataclass(frozen=True)
class ApiSettings:
    """Everything `serve` needs. Defaults are those of `domain.settings` (`VARIABLES` documents them)."""

    store_uri: str = DEFAULT_STORE
    api_keys_path: Path = Path(".aperiodic/api-keys.sqlite")
    url_ttl_seconds: int = 300
    signing_key: bytes | None = field(default=None, repr=False)  # None: generated once, kept in the key database
    public_url: str | None = None  # the base clients use (…/api/v1); None: taken from each request
    rate_per_second: float = 10.0
    rate_burst: int = 20
    max_range_days: int = 3660
    index_refresh_seconds: float = 30.0
    preview: tuple[PreviewMonth, ...] = field(default_factory=tuple)
    # Where the bars come from (APERIODIC_SOURCE): decides which timestamp variants an exchange has.
    source: str = "archive"

    def __post_init__(self) -> None:
        if self.source not in SOURCE_KINDS:
            raise ConfigError(f"source must be one of {', '.join(SOURCE_KINDS)}, got {self.source!r}")

    @classmethod
    def from_settings(cls, settings: Settings, *, preview: Iterable[str] = ()) -> ApiSettings:
        api = settings.api
        return cls(
            store_uri=settings.store.uri,
            api_keys_path=api.api_keys_path,
            url_ttl_seconds=api.url_ttl_seconds,
            signing_key=api.signing_key,
            public_url=api.public_url,
            rate_per_second=api.rate_per_second,
            rate_burst=api.rate_burst,
            max_range_days=api.max_range_days,
            index_refresh_seconds=api.index_refresh_seconds,
            preview=tuple(PreviewMonth.parse(p) for p in preview),
            source=settings.sources.source,
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, *, preview: Iterable[str] = ()) -> ApiSettings:
        """`Settings.from_env(environ)` (the process environment by default), as the API needs it."""
        return cls.from_settings(Settings.from_env(environ), preview=preview)
