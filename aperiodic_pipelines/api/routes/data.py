"""`GET /data/{metric}` and `GET /data/preview/{metric}`: the files of a range, as the client lists them."""

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from aperiodic_pipelines.api.dependencies import Listing, ListingRequest, PreviewListing
from aperiodic_pipelines.api.errors import ApiError, bad_request
from aperiodic_pipelines.api.listing import listing_entries, months_overlapping, published_files
from aperiodic_pipelines.api.models import FilesBody, error_responses
from aperiodic_pipelines.api.params import check_instrument_published, check_variant

router = APIRouter()
_DOC = {
    "response_model": FilesBody,
    "responses": error_responses(400, 401, 403, 404, 429, 503),
    "description": "Every published month overlapping [start_date, end_date], each with a self-authorising URL; "
    "for a month without its monthly file yet, each published day in the range (with `day`).",
}


def _preview_months(listing: ListingRequest) -> frozenset[str]:
    """The preview months of the query's instrument and interval; 400/403 when the preview does not serve it."""
    query, preview = listing.query, listing.context.preview
    if query.timestamp != "exchange":
        raise bad_request("preview_timestamp", "the preview serves timestamp=exchange only")
    allowed = frozenset(m for e, s, i, m in preview if (e, s, i) == (query.exchange, query.symbol, query.interval))
    if not allowed:
        raise ApiError(
            403,
            "not_in_preview",
            f"{query.exchange} {query.symbol} {query.interval} is not in this deployment's preview",
            [f"preview: {e} {s} {i} {m}" for e, s, i, m in sorted(preview)] or ["the preview is empty"],
        )
    return allowed


async def _answer(request: Request, listing: ListingRequest) -> JSONResponse:
    context, query = listing.context, listing.query
    allowed = _preview_months(listing) if listing.preview else None
    published = await context.months(query.exchange, query.native_symbol)
    check_instrument_published(query.exchange, query.symbol, anything_published=any(m.files for m in published.values()))
    check_variant(
        query.exchange, query.timestamp, source=context.settings.source,
        published=(f.timestamp for m in published.values() for f in m.files),
    )
    in_range = [published[m] for m in months_overlapping(query.start, query.end) if m in published]
    files = published_files(in_range, query.timestamp, query.interval)
    listed = listing_entries(files.months, files.days, query.start, query.end, allowed_months=allowed)
    urls = context.file_urls(request, [f.key for f in listed])
    return JSONResponse({"files": [f.entry(url) for f, url in zip(listed, urls, strict=True)]})


# The preview route first: its path would otherwise read as metric "preview".
@router.get("/data/preview/{metric}", **_DOC, operation_id="list_preview_files")
async def list_preview_files(request: Request, listing: PreviewListing) -> JSONResponse:
    return await _answer(request, listing)


@router.get("/data/{metric}", **_DOC, operation_id="list_files")
async def list_files(request: Request, listing: Listing) -> JSONResponse:
    return await _answer(request, listing)
