"""The checks every route shares, as FastAPI dependencies: the caller's key and the request's parameters.

Order (docs/api.md, "Check order"): parameters absent → 400; then the key (401/403/400 for a repeated header)
and the rate limit (429); then the values (metric 404, timestamp, interval, exchange, symbol, dates: 400). A
dependency that declares query parameters runs only when they are all present, so each one below takes its
parameters and then authenticates: a route body never checks a key or an exchange itself.

No `from __future__ import annotations` here: FastAPI reads these signatures at definition time.
"""

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Path, Query, Request, Security
from fastapi.security import APIKeyHeader

from aperiodic_pipelines.api.context import ApiContext, context_of
from aperiodic_pipelines.api.params import ListingQuery, check_exchange, check_listing, check_symbol
from aperiodic_pipelines.domain.exchanges import EXCHANGES
from aperiodic_pipelines.domain.intervals import INTERVALS, TIMESTAMPS

# Documents the header in OpenAPI; `ApiContext.authenticate` reads it (all of its values: a repeat is refused).
key_header = APIKeyHeader(name="X-API-KEY", auto_error=False, description="Your API key (DEMO-KEY: preview only)")
KeyHeader = Annotated[str | None, Security(key_header)]
ExchangeQuery = Annotated[str, Query(json_schema_extra={"enum": list(EXCHANGES)})]
SymbolQuery = Annotated[str, Query(description="Atlas symbol, e.g. perpetual-BTC-USDT:USDT")]


@dataclass(frozen=True)
class Instrument:
    exchange: str
    symbol: str  # Atlas
    native_symbol: str


@dataclass(frozen=True)
class ListingRequest:
    context: ApiContext
    query: ListingQuery
    preview: bool


async def listing_parameters(  # async: a sync dependency would cost a thread hop per request
    timestamp: Annotated[str, Query(description="timestamp variant", json_schema_extra={"enum": list(TIMESTAMPS)})],
    interval: Annotated[str, Query(description="bar interval", json_schema_extra={"enum": list(INTERVALS)})],
    exchange: ExchangeQuery,
    symbol: SymbolQuery,
    start_date: Annotated[
        str, Query(description="first day, YYYY-MM-DD (inclusive)", json_schema_extra={"format": "date"})
    ],
    end_date: Annotated[str, Query(description="last day, YYYY-MM-DD (inclusive)", json_schema_extra={"format": "date"})],
) -> dict[str, str]:
    return {
        "timestamp": timestamp, "interval": interval, "exchange": exchange, "symbol": symbol,
        "start_date": start_date, "end_date": end_date,
    }


def _listing(request: Request, metric: str, parameters: dict[str, str], *, preview: bool) -> ListingRequest:
    context = context_of(request)
    context.authenticate(request, preview=preview)
    query = check_listing(metric=metric, max_range_days=context.settings.max_range_days, **parameters)
    return ListingRequest(context, query, preview)


async def listing_request(
    request: Request,
    metric: Annotated[str, Path()],
    parameters: Annotated[dict[str, str], Depends(listing_parameters)],
    _key: KeyHeader = None,
) -> ListingRequest:
    return _listing(request, metric, parameters, preview=False)


async def preview_listing_request(
    request: Request,
    metric: Annotated[str, Path()],
    parameters: Annotated[dict[str, str], Depends(listing_parameters)],
    _key: KeyHeader = None,
) -> ListingRequest:
    return _listing(request, metric, parameters, preview=True)


async def exchange_request(request: Request, exchange: ExchangeQuery, _key: KeyHeader = None) -> str:
    context_of(request).authenticate(request, preview=False)
    return check_exchange(exchange)


async def instrument_request(
    request: Request, exchange: ExchangeQuery, symbol: SymbolQuery, _key: KeyHeader = None
) -> Instrument:
    context_of(request).authenticate(request, preview=False)
    check_exchange(exchange)
    atlas, native = check_symbol(exchange, symbol)
    return Instrument(exchange, atlas, native)


async def context(request: Request) -> ApiContext:
    return context_of(request)


Listing = Annotated[ListingRequest, Depends(listing_request)]
PreviewListing = Annotated[ListingRequest, Depends(preview_listing_request)]
ExchangeParam = Annotated[str, Depends(exchange_request)]
InstrumentParam = Annotated[Instrument, Depends(instrument_request)]
Context = Annotated[ApiContext, Depends(context)]
