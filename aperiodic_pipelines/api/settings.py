"""The API's configuration, read from the environment once at start-up (see docs/api.md)."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from aperiodic_pipelines.domain.errors import AperiodicError, SymbolError
from aperiodic_pipelines.domain.exchanges import EXCHANGES
from aperiodic_pipelines.domain.intervals import INTERVALS
from aperiodic_pipelines.domain.months import check_month
from aperiodic_pipelines.domain.symbols import resolve_symbol
from aperiodic_pipelines.storage import DEFAULT_STORE, STORE_ENV

API_KEYS_ENV = "APERIODIC_API_KEYS"
DEFAULT_API_KEYS = ".aperiodic/api-keys.sqlite"
URL_TTL_ENV = "APERIODIC_URL_TTL_SECONDS"
SIGNING_KEY_ENV = "APERIODIC_URL_SIGNING_KEY"
PUBLIC_URL_ENV = "APERIODIC_PUBLIC_URL"
RATE_ENV = "APERIODIC_RATE_LIMIT_PER_SECOND"
BURST_ENV = "APERIODIC_RATE_LIMIT_BURST"
MAX_RANGE_ENV = "APERIODIC_MAX_RANGE_DAYS"
INDEX_REFRESH_ENV = "APERIODIC_INDEX_REFRESH_SECONDS"

API_PREFIX = "/api/v1"


class ConfigError(AperiodicError, ValueError):
    """A setting the operator must fix; names the variable."""


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
    """Everything `serve` needs; `from_env` documents the variables and their defaults."""

    store_uri: str = DEFAULT_STORE
    api_keys_path: Path = Path(DEFAULT_API_KEYS)
    url_ttl_seconds: int = 300
    signing_key: bytes | None = None  # None: generated once and kept in the key database
    public_url: str | None = None  # the base clients use (…/api/v1); None: taken from each request
    rate_per_second: float = 10.0
    rate_burst: int = 20
    max_range_days: int = 3660
    index_refresh_seconds: float = 30.0
    preview: tuple[PreviewMonth, ...] = field(default_factory=tuple)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, *, preview: Iterable[str] = ()) -> ApiSettings:
        env = os.environ if environ is None else environ
        signing = env.get(SIGNING_KEY_ENV) or None
        if signing is not None and len(signing) < 32:
            raise ConfigError(f"{SIGNING_KEY_ENV} must be at least 32 characters (use e.g. `openssl rand -hex 32`)")
        public = env.get(PUBLIC_URL_ENV) or None
        if public is not None and not re.match(r"^https?://[^/\s]+(/\S*)?$", public):
            raise ConfigError(f"{PUBLIC_URL_ENV}={public!r}: expected an absolute http(s) URL ending in /api/v1")
        return cls(
            store_uri=env.get(STORE_ENV) or DEFAULT_STORE,
            api_keys_path=Path(env.get(API_KEYS_ENV) or DEFAULT_API_KEYS),
            url_ttl_seconds=int(_number(env, URL_TTL_ENV, 300, minimum=1)),
            signing_key=signing.encode() if signing else None,
            public_url=public.rstrip("/") if public else None,
            rate_per_second=_number(env, RATE_ENV, 10.0, minimum=0.001),
            rate_burst=int(_number(env, BURST_ENV, 20, minimum=1)),
            max_range_days=int(_number(env, MAX_RANGE_ENV, 3660, minimum=1)),
            index_refresh_seconds=_number(env, INDEX_REFRESH_ENV, 30.0, minimum=0),
            preview=tuple(PreviewMonth.parse(p) for p in preview),
        )


def _number(env: Mapping[str, str], name: str, default: float, *, minimum: float) -> float:
    text = env.get(name)
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value >= minimum:
        raise ConfigError(f"{name}={text!r}: expected a number >= {minimum:g}")
    return value
