"""The delivery API (spec §5) as a FastAPI application over the store, its index and the key database.

No `from __future__ import annotations` here: FastAPI reads the route signatures at definition time.
"""


import logging
import time
from collections.abc import Awaitable, Callable
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import Depends, FastAPI, Query, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.security import APIKeyHeader
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from aperiodic_pipelines import __version__
from aperiodic_pipelines.api.catalog import Catalog
from aperiodic_pipelines.api.errors import ApiError, bad_request
from aperiodic_pipelines.api.keys import DEMO_KEY, ApiKeyStore
from aperiodic_pipelines.api.params import (
    METRICS,
    ListingQuery,
    check_exchange,
    check_listing,
    check_symbol,
)
from aperiodic_pipelines.api.ratelimit import RateLimiter
from aperiodic_pipelines.api.settings import API_PREFIX, ApiSettings
from aperiodic_pipelines.api.signing import UrlSigner
from aperiodic_pipelines.domain.errors import StoreError
from aperiodic_pipelines.domain.exchanges import EXCHANGES
from aperiodic_pipelines.domain.intervals import INTERVALS, TIMESTAMPS
from aperiodic_pipelines.storage import LocalStore, ObjectStore, S3Store, store_from_uri
from aperiodic_pipelines.storage.index import PublishedMonth

access_log = logging.getLogger("aperiodic_pipelines.api.access")
log = logging.getLogger("aperiodic_pipelines.api")
PARQUET_MEDIA_TYPE = "application/vnd.apache.parquet"
_SCOPE_INFO = "aperiodic.access"  # per-request facts the access log reads (the key's name, never the key)


# --- response models (the OpenAPI document; handlers return plain JSON for speed) ------------------------------


class ErrorBody(BaseModel):
    error: str
    details: list[str]
    code: str


class FileEntry(BaseModel):
    year: int
    month: int
    url: str


class FilesBody(BaseModel):
    files: list[FileEntry]


class SymbolsBody(BaseModel):
    symbols: list[str]
    exchange: str
    bucket: str


class CoverageMonth(BaseModel):
    month: str
    rows: int
    size: int
    sha256: str


class CoverageVariant(BaseModel):
    timestamp: str
    interval: str
    months: list[CoverageMonth]


class CoverageBody(BaseModel):
    exchange: str
    symbol: str
    native_symbol: str
    variants: list[CoverageVariant]


class HealthBody(BaseModel):
    status: str
    version: str


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": ErrorBody} for status in statuses}


class _LargeChunkFileResponse(FileResponse):
    chunk_size = 1024 * 1024  # fewer, larger writes: bars files are tens of MB at 1s


# --- access log --------------------------------------------------------------------------------------------------


class AccessLogMiddleware:
    """One line per request: method, path (never the query, which holds URL signatures), status, key name, ms."""

    def __init__(self, app: Callable[..., Awaitable[None]]) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        info: dict[str, Any] = {"status": 500, "key": "-"}
        scope[_SCOPE_INFO] = info

        async def send_recording_status(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                info["status"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_recording_status)
        finally:
            access_log.info(
                "%s %s %s key=%s %.1fms",
                scope["method"],
                scope["path"],
                info["status"],
                info["key"],
                (time.perf_counter() - started) * 1000,
            )


# --- the application ---------------------------------------------------------------------------------------------


class Api:
    """The pieces a request needs; `create_app` wires them into routes."""

    def __init__(self, settings: ApiSettings, store: ObjectStore, keys: ApiKeyStore) -> None:
        self.settings = settings
        self.store = store
        self.keys = keys
        self.catalog = Catalog(store, settings.index_refresh_seconds)
        self.limiter = RateLimiter(settings.rate_per_second, settings.rate_burst)
        # URLs are reused for up to a tenth of the TTL (at most 30 s) and signed for that much longer.
        self.reuse_seconds = min(30, settings.url_ttl_seconds // 10)
        self.url_lifetime = settings.url_ttl_seconds + self.reuse_seconds
        self.signer = (
            UrlSigner(settings.signing_key or keys.signing_secret(), self.url_lifetime)
            if isinstance(store, LocalStore)
            else None
        )
        self.preview = {(p.exchange, p.symbol, p.interval, p.month) for p in settings.preview}
        self._urls: dict[str, tuple[float, str]] = {}  # key -> (signed at, URL; a path suffix for local stores)
        self._bases: dict[tuple[object, ...], str] = {}

    def authenticate(self, request: Request, *, preview: bool) -> str:
        """The caller's key name; 401 without a valid key, 403 for DEMO-KEY off the preview path; rate-limited."""
        presented = request.headers.get("x-api-key")
        if not presented:
            raise ApiError(401, "missing_api_key", "an API key is required", ["send it in the X-API-KEY header"])
        if presented == DEMO_KEY:
            if not preview:
                raise ApiError(
                    403, "preview_only", "DEMO-KEY reads the preview only", ["use /data/preview/{metric} or a key"]
                )
            name = DEMO_KEY
        else:
            name = self.keys.authenticate(presented)
            if name is None:
                raise ApiError(401, "invalid_api_key", "the API key is not valid (unknown or revoked)")
        request.scope[_SCOPE_INFO]["key"] = name
        retry_after = self.limiter.acquire(name)
        if retry_after:
            raise ApiError(
                429,
                "rate_limited",
                f"too many requests for key {name!r}",
                [f"this deployment allows {self.settings.rate_per_second:g} requests/s, bursts of {self.settings.rate_burst}"],
                headers={"Retry-After": str(retry_after)},
            )
        return name

    async def months(self, exchange: str, native: str) -> dict[str, PublishedMonth]:
        cached = self.catalog.cached(("months", exchange, native))
        if cached is not None:
            return cached  # type: ignore[return-value]
        return await run_in_threadpool(self.catalog.load_months, exchange, native)

    def base_url(self, request: Request) -> str:
        """APERIODIC_PUBLIC_URL, else this request's scheme, host and root path (cached: building it is slow)."""
        if self.settings.public_url:
            return self.settings.public_url
        origin = (request.scope.get("scheme"), request.headers.get("host"), request.scope.get("root_path"))
        base = self._bases.get(origin)
        if base is None:
            base = str(request.base_url).rstrip("/") + API_PREFIX
            if len(self._bases) < 64:  # a few host names; never grows with hostile Host headers
                self._bases[origin] = base
        return base

    def file_urls(self, request: Request, keys: list[str]) -> list[str]:
        """Self-authorising URLs: S3 presigned GETs, or signed paths of this API for a local store.

        A URL is signed for TTL + `reuse_seconds` and handed out again for `reuse_seconds`, so every URL a
        listing returns is valid for at least the TTL, and repeated listings do not sign again (an S3 presign
        costs about 0.4 ms of CPU).
        """
        now = time.time()
        base = self.base_url(request) if self.signer is not None else ""
        if len(self._urls) > 100_000:
            self._urls.clear()
        urls = []
        for key in keys:
            hit = self._urls.get(key)
            if hit is None or now - hit[0] >= self.reuse_seconds:
                if self.signer is None:
                    assert isinstance(self.store, S3Store)
                    url = self.store.presigned_get_url(key, self.url_lifetime)
                else:
                    expires, signature = self.signer.sign(key, now=now)
                    # The key is made of validated parts; quote() only matters for ':' in HIP-3 ids.
                    url = f"/files/{quote(key, safe='/')}?expires={expires}&signature={signature}"
                hit = self._urls[key] = (now, url)
            urls.append(base + hit[1])
        return urls

    async def listing(self, request: Request, query: ListingQuery, *, preview: bool) -> dict[str, Any]:
        if preview:
            if query.timestamp != "exchange":
                raise bad_request("preview_timestamp", "the preview serves timestamp=exchange only")
            allowed = {m for e, s, i, m in self.preview if (e, s, i) == (query.exchange, query.symbol, query.interval)}
            if not allowed:
                raise ApiError(
                    403,
                    "not_in_preview",
                    f"{query.exchange} {query.symbol} {query.interval} is not in this deployment's preview",
                    [f"preview: {e} {s} {i} {m}" for e, s, i, m in sorted(self.preview)] or ["the preview is empty"],
                )
        published = await self.months(query.exchange, query.native_symbol)
        found: list[tuple[str, str]] = []  # (month, key)
        for month in query.months():
            entry = published.get(month)
            if entry is None or (preview and month not in allowed):
                continue
            found.extend(
                (month, f.key) for f in entry.files if (f.timestamp, f.interval) == (query.timestamp, query.interval)
            )
        urls = self.file_urls(request, [key for _month, key in found])
        return {
            "files": [
                {"year": int(month[:4]), "month": int(month[5:]), "url": url}
                for (month, _key), url in zip(found, urls, strict=True)
            ]
        }


def _error_response(error: ApiError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers or None)


def create_app(
    settings: ApiSettings | None = None, *, store: ObjectStore | None = None, keys: ApiKeyStore | None = None
) -> FastAPI:
    """The ASGI application. Defaults: settings from the environment, the store in APERIODIC_STORE."""
    settings = settings or ApiSettings.from_env()
    api = Api(
        settings,
        store if store is not None else store_from_uri(settings.store_uri),
        keys if keys is not None else ApiKeyStore(settings.api_keys_path),
    )
    app = FastAPI(
        title="aperiodic-pipelines delivery API",
        version=__version__,
        description="Flow bars published by aperiodic-pipelines, served as the `aperiodic` client expects (spec §5).",
        openapi_url=f"{API_PREFIX}/openapi.json",
        docs_url=f"{API_PREFIX}/docs",
        redoc_url=None,
        redirect_slashes=False,  # the client does not follow redirects on JSON calls: never redirect an API path
    )
    app.state.api = api
    app.add_middleware(AccessLogMiddleware)
    key_header = APIKeyHeader(name="X-API-KEY", auto_error=False, description="Your API key (DEMO-KEY: preview only)")

    @app.exception_handler(ApiError)
    async def on_api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return _error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        missing = [str(e["loc"][-1]) for e in exc.errors() if e.get("type") == "missing"]
        if missing:
            return _error_response(bad_request("missing_parameter", f"missing query parameter(s): {', '.join(missing)}"))
        names = sorted({str(e["loc"][-1]) for e in exc.errors()})
        return _error_response(bad_request("invalid_parameter", f"invalid parameter(s): {', '.join(names)}"))

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return _error_response(ApiError(exc.status_code, code, str(exc.detail)))

    @app.exception_handler(Exception)
    async def on_unexpected(_request: Request, exc: Exception) -> JSONResponse:
        log.error("unexpected error: %s: %s", type(exc).__name__, exc, exc_info=not isinstance(exc, StoreError))
        return _error_response(ApiError(500, "internal_error", "the server failed; the error is in its log"))

    async def listing_params(  # async: a sync dependency would cost a thread hop per request
        timestamp: str = Query(description="timestamp variant", json_schema_extra={"enum": list(TIMESTAMPS)}),
        interval: str = Query(description="bar interval", json_schema_extra={"enum": list(INTERVALS)}),
        exchange: str = Query(json_schema_extra={"enum": list(EXCHANGES)}),
        symbol: str = Query(description="Atlas symbol, e.g. perpetual-BTC-USDT:USDT"),
        start_date: str = Query(description="first day, YYYY-MM-DD (inclusive)", json_schema_extra={"format": "date"}),
        end_date: str = Query(description="last day, YYYY-MM-DD (inclusive)", json_schema_extra={"format": "date"}),
    ) -> dict[str, str]:
        return {
            "timestamp": timestamp, "interval": interval, "exchange": exchange, "symbol": symbol,
            "start_date": start_date, "end_date": end_date,
        }

    listing_doc = {
        "response_model": FilesBody,
        "responses": _errors(400, 401, 403, 404, 429),
        "description": "Every published month overlapping [start_date, end_date], each with a self-authorising URL.",
    }

    async def handle_listing(request: Request, metric: str, params: dict[str, str], *, preview: bool) -> JSONResponse:
        api.authenticate(request, preview=preview)
        query = check_listing(metric=metric, max_range_days=settings.max_range_days, **params)
        return JSONResponse(await api.listing(request, query, preview=preview))

    # The preview route first: its path would otherwise read as metric "preview".
    @app.get(f"{API_PREFIX}/data/preview/{{metric}}", **listing_doc, operation_id="list_preview_files")
    async def list_preview_files(
        request: Request,
        metric: str,
        params: Annotated[dict[str, str], Depends(listing_params)],
        _key: str | None = Security(key_header),
    ) -> JSONResponse:
        return await handle_listing(request, metric, params, preview=True)

    @app.get(f"{API_PREFIX}/data/{{metric}}", **listing_doc, operation_id="list_files")
    async def list_files(
        request: Request,
        metric: str,
        params: Annotated[dict[str, str], Depends(listing_params)],
        _key: str | None = Security(key_header),
    ) -> JSONResponse:
        return await handle_listing(request, metric, params, preview=False)

    @app.get(
        f"{API_PREFIX}/metadata/symbols",
        response_model=SymbolsBody,
        responses=_errors(400, 401, 403, 429),
        description="Atlas symbols of the exchange with at least one published month.",
    )
    async def symbols(
        request: Request,
        exchange: str = Query(json_schema_extra={"enum": list(EXCHANGES)}),
        _key: str | None = Security(key_header),
    ) -> JSONResponse:
        api.authenticate(request, preview=False)
        check_exchange(exchange)
        cached = api.catalog.cached(("symbols", exchange))
        found = cached if cached is not None else await run_in_threadpool(api.catalog.load_symbols, exchange)
        return JSONResponse({"symbols": found, "exchange": exchange, "bucket": METRICS[0]})

    @app.get(
        f"{API_PREFIX}/metadata/coverage",
        response_model=CoverageBody,
        responses=_errors(400, 401, 403, 429),
        description="Months published per timestamp variant and interval, with row counts, sizes and sha256.",
    )
    async def coverage(
        request: Request,
        exchange: str = Query(json_schema_extra={"enum": list(EXCHANGES)}),
        symbol: str = Query(description="Atlas symbol"),
        _key: str | None = Security(key_header),
    ) -> JSONResponse:
        api.authenticate(request, preview=False)
        check_exchange(exchange)
        atlas, native = check_symbol(exchange, symbol)
        variants: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for month, entry in sorted((await api.months(exchange, native)).items()):
            for f in entry.files:
                variants.setdefault((f.timestamp, f.interval), []).append(
                    {"month": month, "rows": f.rows, "size": f.size, "sha256": f.sha256}
                )
        order = {name: i for i, name in enumerate(INTERVALS)}
        return JSONResponse(
            {
                "exchange": exchange,
                "symbol": atlas,
                "native_symbol": native,
                "variants": [
                    {"timestamp": t, "interval": i, "months": months}
                    for (t, i), months in sorted(variants.items(), key=lambda kv: (kv[0][0], order[kv[0][1]]))
                ],
            }
        )

    @app.get(
        f"{API_PREFIX}/files/{{key:path}}",
        responses={200: {"content": {PARQUET_MEDIA_TYPE: {}}}, **_errors(403, 404)},
        response_class=FileResponse,
        description="A published file behind a signed URL from a listing (local stores; S3 stores presign instead).",
        include_in_schema=isinstance(api.store, LocalStore),
    )
    async def download(key: str, expires: str | None = None, signature: str | None = None) -> FileResponse:
        if api.signer is None or not isinstance(api.store, LocalStore):
            raise ApiError(404, "not_found", "this deployment's files are served by S3 presigned URLs")
        api.signer.verify(key, expires, signature)
        # Signed by us, so built by us from validated parts; checked again before it becomes a path.
        if not (key.startswith("flow/") and key.endswith(".parquet")):
            raise ApiError(404, "not_found", "no such published file")
        try:
            path = api.store.path(key)
        except StoreError:
            raise ApiError(404, "not_found", "no such published file") from None
        if not path.is_file():
            raise ApiError(404, "not_found", "the file is no longer published: request a new listing")
        remaining = max(int(expires or 0) - int(time.time()), 0)
        return _LargeChunkFileResponse(
            path,
            media_type=PARQUET_MEDIA_TYPE,
            filename=key.rsplit("/", 1)[-1],
            headers={"Cache-Control": f"private, max-age={remaining}"},
        )

    @app.get("/healthz", response_model=HealthBody, responses=_errors(503))
    async def healthz() -> JSONResponse:
        ok = await run_in_threadpool(_store_reachable, api.store)
        if not ok:
            raise ApiError(503, "store_unavailable", "the store cannot be reached", [repr(api.store)])
        return JSONResponse({"status": "ok", "version": __version__})

    return app


def _store_reachable(store: ObjectStore) -> bool:
    """A cheap probe: the root directory exists, or the bucket answers HEAD."""
    if isinstance(store, LocalStore):
        return store.root.is_dir()
    if isinstance(store, S3Store):
        try:
            store.client.head_bucket(Bucket=store.bucket)
        except Exception:  # any failure means "not reachable"; the reason goes to the log, not the answer
            log.warning("health check: %r unreachable", store, exc_info=True)
            return False
        return True
    return True
