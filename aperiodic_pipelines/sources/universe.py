"""Which instruments an exchange's archive holds, and from which month: checked before an instrument is registered.

- **binance-futures**: the archive's own S3 listing (`APERIODIC_BINANCE_LISTING_URL`, ListObjects XML, as the
  data.binance.vision page reads it). The instrument's directory under `data/futures/um/monthly/{dataset}/`
  names its monthly files; the first one is its first month, the last one its last (an instrument whose files
  stopped is delisted). No directory: the symbol is refused, with the closest names the listing has.
- **okx-perps**: OKX's trade archive has no listing (daily files by URL only). A swap id of the form
  `BASE-USDT-SWAP`, `BASE-USDC-SWAP` or `BASE-USD-SWAP` is accepted from the exchange's archive start; a month
  before the instrument's first trade day then fails at download as "not published".
- **hyperliquid-perps**: the node archive holds every coin in one hourly object and has no per-coin listing. A
  coin name (`BTC`, `kPEPE`, `xyz:AAPL`) is accepted from the archive start; a name that is another exchange's
  id (`BTCUSDT`, `BTC-USDT-SWAP`) is refused, saying the coin it probably means.
- With `APERIODIC_SOURCE=tardis` every instrument is accepted from the exchange's archive start (Tardis files
  have no listing here either).

Imports only the domain (a source module); the operator's registry stores what this finds.
"""

from __future__ import annotations

import difflib
import re
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass

from aperiodic_pipelines.domain.errors import AperiodicError, SymbolError
from aperiodic_pipelines.domain.exchanges import exchange_of
from aperiodic_pipelines.domain.months import check_month
from aperiodic_pipelines.domain.settings import SourceSettings

S3_NAMESPACE = "{http://s3.amazonaws.com/doc/2006-03-01/}"
LISTING_TIMEOUT = (5.0, 20.0)  # connect, read: the CLI answers within seconds even when the listing is down
MAX_LISTING_PAGES = 50  # 1,000 keys a page: far more than the ~700 USD-M symbols or one symbol's months

_OKX_SWAP = re.compile(r"[A-Z0-9]+-(USDT|USDC|USD)-SWAP")
_HYPERLIQUID_COIN = re.compile(r"(?:[a-z0-9]+:)?[A-Za-z0-9]+")
_QUOTED_PAIR = re.compile(r"(?P<base>[A-Z0-9]{2,}?)[-_/]?(?P<quote>USDT|USDC|USD)(?:[-_/]?SWAP|_PERP)?")


class NotListedError(SymbolError):
    """The exchange's archive does not hold the instrument; the message says how that was found out."""


class ListingUnavailableError(AperiodicError):
    """The exchange's listing could not be read; names the URL and the setting."""


@dataclass(frozen=True)
class Listing:
    """An instrument the exchange's archive holds, from `first_month` on; `basis` says how that is known."""

    exchange: str
    native: str
    first_month: str
    basis: str
    last_month: str | None = None  # the last monthly file, where the listing tells it


def find_listing(exchange: str, native: str, settings: SourceSettings) -> Listing:
    """The archive's listing of `native` on `exchange`; `NotListedError` when it holds no such instrument."""
    venue = exchange_of(exchange)
    if settings.source == "tardis":
        return Listing(exchange, native, venue.first_month, "Tardis-format source: from the exchange's first month")
    if exchange == "binance-futures":
        return _binance_listing(native, settings)
    if exchange == "okx-perps":
        if not _OKX_SWAP.fullmatch(native):
            raise NotListedError(
                f"okx-perps has no swap {native!r}: OKX swaps read BASE-USDT-SWAP, BASE-USDC-SWAP or BASE-USD-SWAP "
                f"(e.g. {venue.native_examples})"
            )
        return Listing(exchange, native, venue.first_month,
                       f"OKX's archive has no listing: accepted from its archive start {venue.first_month}")
    if exchange == "hyperliquid-perps":
        looks_like_pair = _QUOTED_PAIR.fullmatch(native)
        if looks_like_pair or not _HYPERLIQUID_COIN.fullmatch(native):
            hint = f"; did you mean {looks_like_pair['base']!r}?" if looks_like_pair else ""
            raise NotListedError(
                f"hyperliquid-perps has no coin {native!r}: Hyperliquid names its perpetuals by coin, all quoted "
                f"in USDC (e.g. {venue.native_examples}){hint}"
            )
        return Listing(exchange, native, venue.first_month,
                       f"Hyperliquid's node archive has no per-coin listing: accepted from its start {venue.first_month}")
    raise AssertionError(f"no universe rule for {exchange}")  # exchange_of() accepted it: a rule is missing here


# --- Binance: the archive's S3 listing ----------------------------------------------------------------------


def _binance_prefix(settings: SourceSettings) -> str:
    return f"data/futures/um/monthly/{settings.binance_dataset}/"


def _binance_listing(native: str, settings: SourceSettings) -> Listing:
    prefix = _binance_prefix(settings)
    keys, _ = list_bucket(settings.binance_listing_url, f"{prefix}{native}/")
    months = sorted(
        match.group(1)
        for key in keys
        if (match := re.fullmatch(rf"{re.escape(prefix + native)}/{re.escape(native)}-[A-Za-z]+-(\d{{4}}-\d{{2}})\.zip", key))
    )
    if months:
        first = check_month(months[0])
        return Listing("binance-futures", native, first,
                       f"{settings.binance_listing_url} lists {len(months)} monthly file(s), the first {first}",
                       last_month=check_month(months[-1]))
    _, symbols = list_bucket(settings.binance_listing_url, prefix)
    names = [p[len(prefix):].rstrip("/") for p in symbols]
    close = difflib.get_close_matches(native, names, n=3, cutoff=0.6)
    raise NotListedError(
        f"binance-futures has no {native!r} in its archive: the listing of {prefix} at "
        f"{settings.binance_listing_url} has no monthly files for it ({len(names)} symbols listed"
        + (f"; closest: {', '.join(close)}" if close else "")
        + ")"
    )


def list_bucket(url: str, prefix: str) -> tuple[list[str], list[str]]:
    """Every key and common prefix (delimiter `/`) under `prefix` of an S3 bucket listing at `url`, page by page
    (ListObjects v1: `marker`, `IsTruncated`, `NextMarker`)."""
    import requests  # here: a refusal that needs no listing should not pay for importing it

    keys: list[str] = []
    prefixes: list[str] = []
    marker = ""
    for _ in range(MAX_LISTING_PAGES):
        params = {"delimiter": "/", "prefix": prefix, **({"marker": marker} if marker else {})}
        try:
            response = requests.get(url, params=params, timeout=LISTING_TIMEOUT)
        except requests.RequestException as exc:
            raise ListingUnavailableError(
                f"cannot read the archive listing at {url} (APERIODIC_BINANCE_LISTING_URL): {type(exc).__name__}"
            ) from None
        if response.status_code != 200:
            raise ListingUnavailableError(
                f"the archive listing at {url} (APERIODIC_BINANCE_LISTING_URL) answered HTTP {response.status_code}"
            )
        try:
            root = ElementTree.fromstring(response.content)
        except ElementTree.ParseError:
            raise ListingUnavailableError(f"the archive listing at {url} did not answer S3 listing XML") from None
        page_keys = [element.text or "" for element in root.iter(f"{S3_NAMESPACE}Key")]
        page_prefixes = [
            element.text or "" for common in root.iter(f"{S3_NAMESPACE}CommonPrefixes")
            for element in common.iter(f"{S3_NAMESPACE}Prefix")
        ]
        keys += page_keys
        prefixes += page_prefixes
        if (root.findtext(f"{S3_NAMESPACE}IsTruncated") or "").lower() != "true":
            return keys, prefixes
        marker = root.findtext(f"{S3_NAMESPACE}NextMarker") or max(page_keys + page_prefixes, default="")
        if not marker:
            break
    raise ListingUnavailableError(f"the archive listing at {url} did not end within {MAX_LISTING_PAGES} pages")
