"""What a request needs from the deployment: settings, store, keys, the index cache, the limiter and the signer.

One `ApiContext` lives on `app.state.context`; the dependencies (`api/dependencies.py`) and routes reach it
through the request. It holds the rules every route shares: who the caller is (key, rate limit), whether the
store can be read (503 otherwise, never an empty answer), and how a published key becomes a file URL.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import TypeVar
from urllib.parse import quote

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from aperiodic_pipelines.api.accesslog import SCOPE_INFO
from aperiodic_pipelines.api.catalog import Catalog
from aperiodic_pipelines.api.errors import ApiError
from aperiodic_pipelines.api.keys import DEMO_KEY, ApiKeyStore
from aperiodic_pipelines.api.ratelimit import RateLimiter
from aperiodic_pipelines.api.settings import API_PREFIX, ApiSettings
from aperiodic_pipelines.api.signing import UrlSigner
from aperiodic_pipelines.domain.errors import StoreError
from aperiodic_pipelines.storage import LocalStore, ObjectStore, S3Store
from aperiodic_pipelines.storage.index import PublishedMonth

log = logging.getLogger("aperiodic_pipelines.api")
T = TypeVar("T")


def store_unavailable() -> ApiError:
    # Nothing about where the store is: that is for the server's log, not for whoever asks.
    return ApiError(503, "store_unavailable", "the store cannot be read right now; try again later")


class ApiContext:
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

    # --- the caller ----------------------------------------------------------------------------------------------

    def authenticate(self, request: Request, *, preview: bool) -> str:
        """The caller's key name; 401 without a valid key, 403 for DEMO-KEY off the preview path; rate-limited."""
        presented = request.headers.getlist("x-api-key")
        if len(presented) > 1:  # which one would count is ambiguous: refuse rather than pick one
            raise ApiError(400, "repeated_api_key", "send one X-API-KEY header, not several")
        if not presented or not presented[0]:
            raise ApiError(401, "missing_api_key", "an API key is required", ["send it in the X-API-KEY header"])
        if presented[0] == DEMO_KEY:
            if not preview:
                raise ApiError(
                    403, "preview_only", "DEMO-KEY reads the preview only", ["use /data/preview/{metric} or a key"]
                )
            name = DEMO_KEY
        else:
            name = self.keys.authenticate(presented[0])
            if name is None:
                raise ApiError(401, "invalid_api_key", "the API key is not valid (unknown or revoked)")
        request.scope[SCOPE_INFO]["key"] = name
        retry_after = self.limiter.acquire(name)
        if retry_after:
            raise ApiError(
                429,
                "rate_limited",
                f"too many requests for key {name!r}",
                [
                    f"this deployment allows {self.settings.rate_per_second:g} requests/s, "
                    f"bursts of {self.settings.rate_burst}"
                ],
                headers={"Retry-After": str(retry_after)},
            )
        return name

    # --- the store -----------------------------------------------------------------------------------------------

    def store_readable(self) -> bool:
        """A local store's root is a directory we may list. (An S3 store is judged by its answers instead.)"""
        if isinstance(self.store, LocalStore):
            root = self.store.root
            return root.is_dir() and os.access(root, os.R_OK | os.X_OK)
        return True

    def require_store(self) -> None:
        if not self.store_readable():
            log.warning("store unavailable: %r is missing or unreadable", self.store)
            raise store_unavailable()

    async def read_store(self, cached: object | None, load: Callable[[], T]) -> T:
        """`cached` when fresh, else `load()` off the event loop; any store failure becomes a 503."""
        self.require_store()  # also with a fresh cache: a store that is gone must not be served from memory
        if cached is not None:
            return cached  # type: ignore[return-value]
        try:
            return await run_in_threadpool(load)
        except (StoreError, OSError, ValueError, KeyError, TypeError) as exc:
            # Unreachable S3, a directory we cannot read, a manifest that does not parse: the answer would be
            # wrong or empty, so there is none. The reason (which may name the store) goes to the log only.
            log.warning("store read failed: %s: %s", type(exc).__name__, exc, exc_info=not isinstance(exc, StoreError))
            raise store_unavailable() from None

    async def months(self, exchange: str, native: str) -> dict[str, PublishedMonth]:
        """`{YYYY-MM: PublishedMonth}` of one instrument, from the index (cached)."""
        return await self.read_store(
            self.catalog.cached(("months", exchange, native)), lambda: self.catalog.load_months(exchange, native)
        )

    async def symbols(self, exchange: str) -> list[str]:
        """Atlas symbols of `exchange` with something published (cached)."""
        return await self.read_store(
            self.catalog.cached(("symbols", exchange)), lambda: self.catalog.load_symbols(exchange)
        )

    async def store_reachable(self) -> bool:
        """A cheap probe for /healthz: the root directory is readable, or the bucket answers HEAD."""
        if not isinstance(self.store, S3Store):
            return self.store_readable()
        store = self.store

        def head_bucket() -> bool:
            try:
                store.client.head_bucket(Bucket=store.bucket)
            except Exception:  # any failure means "not reachable"; the reason goes to the log, not the answer
                log.warning("health check: %r unreachable", store, exc_info=True)
                return False
            return True

        return await run_in_threadpool(head_bucket)

    # --- file URLs -----------------------------------------------------------------------------------------------

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


def context_of(request: Request) -> ApiContext:
    return request.app.state.context  # type: ignore[no-any-return]
