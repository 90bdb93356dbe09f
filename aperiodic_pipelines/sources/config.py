"""Where the archives live: the sources' part of the settings (`domain.settings`, the one owner of variables)."""

from aperiodic_pipelines.domain.settings import (
    DEFAULT_BINANCE_URL,
    DEFAULT_HYPERLIQUID_URL,
    DEFAULT_OKX_URL,
    SOURCE_KINDS,
)
from aperiodic_pipelines.domain.settings import SourceSettings as SourceConfig

__all__ = ["DEFAULT_BINANCE_URL", "DEFAULT_HYPERLIQUID_URL", "DEFAULT_OKX_URL", "SOURCE_KINDS", "SourceConfig"]
