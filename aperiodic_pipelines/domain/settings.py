"""Settings: the one owner of every `APERIODIC_*` variable, its default and its check.

`Settings.from_env()` reads the environment once and checks every value, naming the variable when one is wrong.
Each layer takes the part it needs (`settings.sources`, `settings.http`, `settings.store`, `settings.api`,
`settings.alerts`) as arguments; nothing else in the package reads `APERIODIC_*` variables. Secrets (the Tardis
API key, the URL signing key, the alert webhook) are kept out of `repr`, so they never reach a log line or an
error message through these objects. `VARIABLES` lists every variable with its default and meaning; the docs'
tables and `aperiodic-pipelines settings` are made from it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aperiodic_pipelines.domain.errors import AperiodicError

# Where the public archives live; tests and the demo point these at a local mirror.
DEFAULT_BINANCE_URL = "https://data.binance.vision"
# The archive's S3 bucket listing (ListObjects XML); data.binance.vision itself answers `?prefix=` with a JS page.
DEFAULT_BINANCE_LISTING_URL = "https://s3-ap-northeast-1.amazonaws.com/data.binance.vision"
DEFAULT_OKX_URL = "https://static.okx.com/cdn/okex/traderecords"
DEFAULT_HYPERLIQUID_URL = "s3://hl-mainnet-node-data"
DEFAULT_STORE = "./data"
DEFAULT_AWS_REGION = "us-east-1"  # boto3's own default when AWS_REGION / AWS_DEFAULT_REGION are unset
SOURCE_KINDS = ("archive", "tardis")
BINANCE_DATASETS = ("aggTrades", "trades")


class ConfigError(AperiodicError, ValueError):
    """A setting the operator must fix; names the variable, never a secret's value."""


@dataclass(frozen=True)
class Variable:
    name: str
    default: str | None
    meaning: str
    secret: bool = False


VARIABLES: tuple[Variable, ...] = (
    Variable("APERIODIC_STORE", DEFAULT_STORE, "where raw trades and flow bars are published: a directory or s3://bucket/prefix"),
    Variable("APERIODIC_STALE_WRITE_SECONDS", "3600", "age after which an unfinished temporary upload is cleaned up"),
    Variable("APERIODIC_CACHE_DIR", "data/cache", "downloaded archives"),
    Variable("APERIODIC_SOURCE", "archive", "`tardis` reads every exchange from APERIODIC_TARDIS_URL instead"),
    Variable("APERIODIC_BINANCE_URL", DEFAULT_BINANCE_URL, "Binance archive base"),
    Variable("APERIODIC_BINANCE_LISTING_URL", DEFAULT_BINANCE_LISTING_URL, "Binance archive's S3 listing (which symbols and months exist)"),
    Variable("APERIODIC_OKX_URL", DEFAULT_OKX_URL, "OKX archive base"),
    Variable("APERIODIC_HYPERLIQUID_URL", DEFAULT_HYPERLIQUID_URL, "Hyperliquid bucket (endpoint from AWS_ENDPOINT_URL_S3)"),
    Variable("APERIODIC_TARDIS_URL", None, "Tardis-format files: a directory of downloads or an http(s) datasets API base"),
    Variable("APERIODIC_TARDIS_API_KEY", None, "sent as `Authorization: Bearer` to a Tardis http(s) base", secret=True),
    Variable("APERIODIC_BINANCE_DATASET", "aggTrades", "or `trades` (individual fills); recorded in the lineage"),
    Variable("APERIODIC_ALLOW_MISSING_DAYS", "0", "`1`: build a month whose upstream lacks days, recorded as missing_days"),
    Variable("APERIODIC_HTTP_ATTEMPTS", "5", "transport attempts per download"),
    Variable("APERIODIC_HTTP_BACKOFF", "1.0", "seconds before the first retry (doubling)"),
    Variable("APERIODIC_HTTP_404_ATTEMPTS", "3", "attempts for a 404 of an object the exchange is expected to publish"),
    Variable("APERIODIC_HTTP_READ_TIMEOUT_SECONDS", "60", "longest silence on a connection"),
    Variable("APERIODIC_HTTP_DEADLINE_SECONDS", "1800", "total time one download may take, its retries and waits included"),
    Variable("APERIODIC_HTTP_MIN_BYTES_PER_SECOND", "65536", "slowest transfer tolerated, averaged after the first 30 s"),
    Variable("APERIODIC_API_KEYS", ".aperiodic/api-keys.sqlite", "the API's key database (keys are stored hashed)"),
    Variable("APERIODIC_URL_TTL_SECONDS", "300", "lifetime of a file URL the API hands out"),
    Variable("APERIODIC_URL_SIGNING_KEY", None, "signs the local store's file URLs (>= 32 characters; generated when unset)", secret=True),
    Variable("APERIODIC_PUBLIC_URL", None, "the base clients use (…/api/v1); taken from each request when unset"),
    Variable("APERIODIC_RATE_LIMIT_PER_SECOND", "10", "requests per second per API key"),
    Variable("APERIODIC_RATE_LIMIT_BURST", "20", "burst per API key"),
    Variable("APERIODIC_MAX_RANGE_DAYS", "3660", "longest date range one listing may ask for"),
    Variable("APERIODIC_INDEX_REFRESH_SECONDS", "30", "how often the API re-reads the store's index"),
    Variable("APERIODIC_API_URL", "http://127.0.0.1:8000/api/v1", "the API the CLI and the demo's client read from"),
    Variable("APERIODIC_ALERT_WEBHOOK_URL", None, "Slack-compatible webhook for failed checks, runs and overdue data", secret=True),
    Variable("APERIODIC_DAGSTER_URL", "http://127.0.0.1:3000", "base of the run links in alerts"),
    Variable("APERIODIC_CELERY_BROKER_URL", None, "Celery broker of the multi-machine deployment (deploy/celery), e.g. redis://host:6379/0", secret=True),
    Variable("APERIODIC_CELERY_BACKEND_URL", None, "Celery result backend (persistent, e.g. redis://host:6379/1); the broker URL when unset", secret=True),
    Variable("APERIODIC_DAILY_HOUR_BINANCE", "2", "UTC hour of binance-futures' daily run (its daily zips are out by then)"),
    Variable("APERIODIC_DAILY_HOUR_OKX", "10", "UTC hour of okx-perps' daily run (the UTC+8 file ending the day is out by then)"),
    Variable("APERIODIC_DAILY_HOUR_HYPERLIQUID", "1", "UTC hour of hyperliquid-perps' daily run (the hour after the day is out)"),
    Variable("APERIODIC_DAILY_HOUR_TARDIS", "7", "UTC hour of every exchange's daily run when APERIODIC_SOURCE=tardis"),
    Variable("APERIODIC_DAILY_DUE_HOURS", "36", "hours after a day ends by which its daily files must be published (else: overdue)"),
)
VARIABLES_BY_NAME: dict[str, Variable] = {v.name: v for v in VARIABLES}


class _Reader:
    """Reads variables from one environment mapping, checking each and naming it when it is wrong."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env

    def text(self, name: str) -> str | None:
        value = self.env.get(name)
        if value is None or value.strip() == "":
            return VARIABLES_BY_NAME[name].default
        return value.strip()

    def required_text(self, name: str) -> str:
        value = self.text(name)
        assert value is not None, name  # every variable read this way has a default
        return value

    def number(self, name: str, *, minimum: float, cast: Callable[[str], Any] = float) -> Any:
        text = self.required_text(name)
        try:
            value = cast(text)
        except ValueError:
            value = None
        if value is None or not value >= minimum:
            raise ConfigError(f"{name}={text!r}: expected a number >= {minimum:g}")
        return value

    def flag(self, name: str) -> bool:
        text = self.required_text(name).lower()
        if text not in ("0", "1", "true", "false", "yes", "no"):
            raise ConfigError(f"{name}={text!r}: expected 1 or 0")
        return text in ("1", "true", "yes")

    def choice(self, name: str, choices: tuple[str, ...]) -> str:
        text = self.required_text(name)
        if text not in choices:
            raise ConfigError(f"{name}={text!r}: expected one of {', '.join(choices)}")
        return text


@dataclass(frozen=True)
class StoreSettings:
    uri: str = DEFAULT_STORE
    stale_write_seconds: float = 3600.0

    @property
    def is_s3(self) -> bool:
        return self.uri.startswith("s3://")


@dataclass(frozen=True)
class SourceSettings:
    """Where the archives live and how they are read."""

    binance_url: str = DEFAULT_BINANCE_URL
    binance_listing_url: str = DEFAULT_BINANCE_LISTING_URL
    okx_url: str = DEFAULT_OKX_URL
    hyperliquid_url: str = DEFAULT_HYPERLIQUID_URL
    tardis_url: str | None = None  # a directory or an http(s) base; no public default
    cache_dir: Path = Path("data/cache")
    binance_dataset: str = "aggTrades"
    source: str = "archive"  # "archive": the exchange's public archive; "tardis": Tardis-format CSV files
    allow_missing_days: bool = False
    tardis_api_key: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.source not in SOURCE_KINDS:
            raise ConfigError(f"APERIODIC_SOURCE must be one of {', '.join(SOURCE_KINDS)}, got {self.source!r}")
        if self.source == "tardis" and not self.tardis_url:
            raise ConfigError("APERIODIC_SOURCE=tardis needs APERIODIC_TARDIS_URL (a directory or an http(s) base)")
        if self.binance_dataset not in BINANCE_DATASETS:
            raise ConfigError(
                f"APERIODIC_BINANCE_DATASET must be one of {', '.join(BINANCE_DATASETS)}, got {self.binance_dataset!r}"
            )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> SourceSettings:
        return Settings.from_env(environ).sources


@dataclass(frozen=True)
class HttpSettings:
    """Retries and deadlines of every download."""

    attempts: int = 5
    backoff_seconds: float = 1.0
    not_found_attempts: int = 3
    read_timeout_seconds: float = 60.0
    deadline_seconds: float = 1800.0
    min_bytes_per_second: float = 65536.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> HttpSettings:
        return Settings.from_env(environ).http


@dataclass(frozen=True)
class ApiSettings:
    api_keys_path: Path = Path(".aperiodic/api-keys.sqlite")
    url_ttl_seconds: int = 300
    signing_key: bytes | None = field(default=None, repr=False)  # None: generated once, kept in the key database
    public_url: str | None = None
    rate_per_second: float = 10.0
    rate_burst: int = 20
    max_range_days: int = 3660
    index_refresh_seconds: float = 30.0
    api_url: str = "http://127.0.0.1:8000/api/v1"


@dataclass(frozen=True)
class AlertSettings:
    webhook_url: str | None = field(default=None, repr=False)
    dagster_url: str = "http://127.0.0.1:3000"


DAILY_HOUR_VARIABLES = {
    "binance-futures": "APERIODIC_DAILY_HOUR_BINANCE",
    "okx-perps": "APERIODIC_DAILY_HOUR_OKX",
    "hyperliquid-perps": "APERIODIC_DAILY_HOUR_HYPERLIQUID",
    "tardis": "APERIODIC_DAILY_HOUR_TARDIS",
}


@dataclass(frozen=True)
class DailySettings:
    """The open month's daily runs: the UTC hour of each exchange's schedule (after it usually publishes a day;
    `tardis` when every exchange is read from Tardis) and when a day is overdue."""

    # (exchange or "tardis", UTC hour) pairs: a tuple, so that Settings stays hashable (definitions are cached on it).
    schedule_hours: tuple[tuple[str, int], ...] = (
        ("binance-futures", 2), ("okx-perps", 10), ("hyperliquid-perps", 1), ("tardis", 7),
    )
    due_hours: float = 36.0  # after the day ends (UTC)

    def schedule_hour(self, exchange: str, source: str = "archive") -> int:
        return dict(self.schedule_hours)["tardis" if source == "tardis" else exchange]


@dataclass(frozen=True)
class CelerySettings:
    """Where the Celery run launcher and its workers meet (deploy/celery). URLs may carry passwords: no repr."""

    broker_url: str | None = field(default=None, repr=False)
    backend_url: str | None = field(default=None, repr=False)

    def require_broker(self) -> tuple[str, str]:
        """(broker, backend) for the Celery deployment; the backend defaults to the broker."""
        if not self.broker_url:
            raise ConfigError(
                "APERIODIC_CELERY_BROKER_URL is not set: the Celery run launcher and `aperiodic-pipelines worker` "
                "need a broker, e.g. redis://host:6379/0"
            )
        return self.broker_url, self.backend_url or self.broker_url


@dataclass(frozen=True)
class Settings:
    store: StoreSettings = field(default_factory=StoreSettings)
    sources: SourceSettings = field(default_factory=SourceSettings)
    http: HttpSettings = field(default_factory=HttpSettings)
    api: ApiSettings = field(default_factory=ApiSettings)
    alerts: AlertSettings = field(default_factory=AlertSettings)
    celery: CelerySettings = field(default_factory=CelerySettings)
    daily: DailySettings = field(default_factory=DailySettings)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Every `APERIODIC_*` setting from `environ` (default: the process environment), checked."""
        read = _Reader(os.environ if environ is None else environ)
        signing = read.text("APERIODIC_URL_SIGNING_KEY")
        if signing is not None and len(signing) < 32:
            raise ConfigError("APERIODIC_URL_SIGNING_KEY must be at least 32 characters (e.g. `openssl rand -hex 32`)")
        public = read.text("APERIODIC_PUBLIC_URL")
        if public is not None and not re.fullmatch(r"https?://[^/\s]+(/\S*)?", public):
            raise ConfigError(f"APERIODIC_PUBLIC_URL={public!r}: expected an absolute http(s) URL ending in /api/v1")
        return cls(
            store=StoreSettings(
                uri=read.required_text("APERIODIC_STORE"),
                stale_write_seconds=read.number("APERIODIC_STALE_WRITE_SECONDS", minimum=1e-9),
            ),
            sources=SourceSettings(
                binance_url=read.required_text("APERIODIC_BINANCE_URL").rstrip("/"),
                binance_listing_url=read.required_text("APERIODIC_BINANCE_LISTING_URL").rstrip("/"),
                okx_url=read.required_text("APERIODIC_OKX_URL").rstrip("/"),
                hyperliquid_url=read.required_text("APERIODIC_HYPERLIQUID_URL").rstrip("/"),
                tardis_url=read.text("APERIODIC_TARDIS_URL"),
                cache_dir=Path(read.required_text("APERIODIC_CACHE_DIR")),
                binance_dataset=read.choice("APERIODIC_BINANCE_DATASET", BINANCE_DATASETS),
                source=read.choice("APERIODIC_SOURCE", SOURCE_KINDS),
                allow_missing_days=read.flag("APERIODIC_ALLOW_MISSING_DAYS"),
                tardis_api_key=read.text("APERIODIC_TARDIS_API_KEY"),
            ),
            http=HttpSettings(
                attempts=read.number("APERIODIC_HTTP_ATTEMPTS", minimum=1, cast=int),
                backoff_seconds=read.number("APERIODIC_HTTP_BACKOFF", minimum=0),
                not_found_attempts=read.number("APERIODIC_HTTP_404_ATTEMPTS", minimum=1, cast=int),
                read_timeout_seconds=read.number("APERIODIC_HTTP_READ_TIMEOUT_SECONDS", minimum=0.001),
                deadline_seconds=read.number("APERIODIC_HTTP_DEADLINE_SECONDS", minimum=0.001),
                min_bytes_per_second=read.number("APERIODIC_HTTP_MIN_BYTES_PER_SECOND", minimum=0),
            ),
            api=ApiSettings(
                api_keys_path=Path(read.required_text("APERIODIC_API_KEYS")),
                url_ttl_seconds=int(read.number("APERIODIC_URL_TTL_SECONDS", minimum=1)),
                signing_key=signing.encode() if signing else None,
                public_url=public.rstrip("/") if public else None,
                rate_per_second=read.number("APERIODIC_RATE_LIMIT_PER_SECOND", minimum=0.001),
                rate_burst=int(read.number("APERIODIC_RATE_LIMIT_BURST", minimum=1)),
                max_range_days=int(read.number("APERIODIC_MAX_RANGE_DAYS", minimum=1)),
                index_refresh_seconds=read.number("APERIODIC_INDEX_REFRESH_SECONDS", minimum=0),
                api_url=read.required_text("APERIODIC_API_URL").rstrip("/"),
            ),
            alerts=AlertSettings(
                webhook_url=read.text("APERIODIC_ALERT_WEBHOOK_URL"),
                dagster_url=read.required_text("APERIODIC_DAGSTER_URL").rstrip("/"),
            ),
            celery=CelerySettings(
                broker_url=read.text("APERIODIC_CELERY_BROKER_URL"),
                backend_url=read.text("APERIODIC_CELERY_BACKEND_URL"),
            ),
            daily=DailySettings(
                schedule_hours=tuple((name, _hour(read, variable)) for name, variable in DAILY_HOUR_VARIABLES.items()),
                due_hours=read.number("APERIODIC_DAILY_DUE_HOURS", minimum=1),
            ),
        )


def _hour(read: _Reader, name: str) -> int:
    hour = read.number(name, minimum=0, cast=int)
    if hour > 23:
        raise ConfigError(f"{name}={hour}: expected a UTC hour, 0 to 23")
    return hour


def aws_region(environ: Mapping[str, str] | None = None, default: str = DEFAULT_AWS_REGION) -> str:
    """The AWS region boto3 would use (AWS_REGION, then AWS_DEFAULT_REGION), else `default`."""
    env = os.environ if environ is None else environ
    return env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or default


def aws_endpoint(environ: Mapping[str, str] | None = None) -> str | None:
    """An S3 endpoint override (AWS_ENDPOINT_URL_S3, then AWS_ENDPOINT_URL): moto, MinIO, …"""
    env = os.environ if environ is None else environ
    return env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or None
