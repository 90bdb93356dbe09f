"""The delivery API (spec §5): a FastAPI application over the store, its index and the key database.

`create_app` puts one `ApiContext` on `app.state`, the access log around everything, the error handlers (one
JSON shape, `{"error", "details", "code"}`) and the routers of `api/routes/`; the checks every route shares are
dependencies (`api/dependencies.py`).
"""

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from aperiodic_pipelines import __version__
from aperiodic_pipelines.api.accesslog import AccessLogMiddleware, escape_for_log
from aperiodic_pipelines.api.context import ApiContext
from aperiodic_pipelines.api.errors import ApiError, bad_request
from aperiodic_pipelines.api.keys import ApiKeyStore
from aperiodic_pipelines.api.routes import data, files, health, metadata
from aperiodic_pipelines.api.settings import API_PREFIX, ApiSettings
from aperiodic_pipelines.domain.errors import StoreError
from aperiodic_pipelines.storage import LocalStore, ObjectStore, store_from_uri

log = logging.getLogger("aperiodic_pipelines.api")


def create_app(
    settings: ApiSettings | None = None, *, store: ObjectStore | None = None, keys: ApiKeyStore | None = None
) -> FastAPI:
    """The ASGI application. Defaults: settings from the environment, the store in APERIODIC_STORE."""
    settings = settings or ApiSettings.from_env()
    store = store if store is not None else store_from_uri(settings.store_uri)
    app = FastAPI(
        title="aperiodic-pipelines delivery API",
        version=__version__,
        description="Flow bars published by aperiodic-pipelines, served as the `aperiodic` client expects (spec §5).",
        openapi_url=f"{API_PREFIX}/openapi.json",
        docs_url=f"{API_PREFIX}/docs",
        redoc_url=None,
        redirect_slashes=False,  # the client does not follow redirects on JSON calls: never redirect an API path
    )
    app.state.context = ApiContext(settings, store, keys if keys is not None else ApiKeyStore(settings.api_keys_path))
    app.add_middleware(AccessLogMiddleware)
    app.add_exception_handler(ApiError, on_api_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, on_validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, on_http_error)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, on_unexpected)
    app.include_router(data.router, prefix=API_PREFIX)
    app.include_router(metadata.router, prefix=API_PREFIX)
    # The file route is in the OpenAPI document only where it serves files (local stores).
    app.include_router(files.router, prefix=API_PREFIX, include_in_schema=isinstance(store, LocalStore))
    app.include_router(health.router)
    return app


def _error_response(error: ApiError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers or None)


async def on_api_error(_request: Request, exc: ApiError) -> JSONResponse:
    return _error_response(exc)


async def on_validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
    missing = [str(e["loc"][-1]) for e in exc.errors() if e.get("type") == "missing"]
    if missing:
        return _error_response(bad_request("missing_parameter", f"missing query parameter(s): {', '.join(missing)}"))
    names = sorted({str(e["loc"][-1]) for e in exc.errors()})
    return _error_response(bad_request("invalid_parameter", f"invalid parameter(s): {', '.join(names)}"))


async def on_http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return _error_response(ApiError(exc.status_code, code, str(exc.detail)))


async def on_unexpected(_request: Request, exc: Exception) -> JSONResponse:
    message = escape_for_log(str(exc))  # may quote request input: one line, whatever it holds
    log.error("unexpected error: %s: %s", type(exc).__name__, message, exc_info=not isinstance(exc, StoreError))
    return _error_response(ApiError(500, "internal_error", "the server failed; the error is in its log"))
