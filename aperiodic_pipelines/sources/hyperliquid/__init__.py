"""hyperliquid-perps: trades from Hyperliquid's node data (S3 bucket `hl-mainnet-node-data`), one LZ4 NDJSON
object per hour holding every coin.

The package's face; the parts live in its modules, none of which imports this package back:
`source.py` (prepare a month once for all coins, then each coin's month), `eras.py` (which dataset covers which
hour), `bucket.py` (listing, downloads, the cache), `parse.py` (one object → a parsed hour), `month.py` (a coin's
hours → canonical trades).
"""

from aperiodic_pipelines.sources.hyperliquid.bucket import make_s3_client
from aperiodic_pipelines.sources.hyperliquid.eras import (
    ARCHIVE_START,
    DATASETS,
    ERAS,
    NODE_FILLS,
    NODE_FILLS_BY_BLOCK,
    NODE_TRADES,
    datasets_for_hour,
    hour_key,
    month_bounds,
    parse_s3_url,
)
from aperiodic_pipelines.sources.hyperliquid.month import AmbiguousAggressorError
from aperiodic_pipelines.sources.hyperliquid.parse import parse_ndjson, parse_object
from aperiodic_pipelines.sources.hyperliquid.source import (
    EXCHANGE,
    MonthNotPreparedError,
    ParsedHour,
    PreparedMonth,
    fetch_day,
    fetch_month,
    fetch_months,
    load_prepared_month,
    prepare_month,
)

__all__ = [
    "ARCHIVE_START",
    "DATASETS",
    "ERAS",
    "EXCHANGE",
    "NODE_FILLS",
    "NODE_FILLS_BY_BLOCK",
    "NODE_TRADES",
    "AmbiguousAggressorError",
    "MonthNotPreparedError",
    "ParsedHour",
    "PreparedMonth",
    "datasets_for_hour",
    "fetch_day",
    "fetch_month",
    "fetch_months",
    "hour_key",
    "load_prepared_month",
    "make_s3_client",
    "month_bounds",
    "parse_ndjson",
    "parse_object",
    "parse_s3_url",
    "prepare_month",
]
