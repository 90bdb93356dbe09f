"""Self-authorising file URLs for a local store: an HMAC over the object key and the expiry time."""

from __future__ import annotations

import hashlib
import hmac
import math
import re
import time

from aperiodic_pipelines.api.errors import ApiError

_EXPIRES = re.compile(r"[0-9]{1,12}")  # Unix seconds
_SIGNATURE = re.compile(r"[0-9a-f]{64}")  # hex SHA-256 HMAC


class UrlSigner:
    """Signs `(key, expires)`; a URL is good until `expires` (Unix seconds) if its signature matches."""

    def __init__(self, secret: bytes, ttl_seconds: int) -> None:
        self._secret = secret
        self.ttl_seconds = ttl_seconds

    def _signature(self, key: str, expires: int) -> str:
        return hmac.new(self._secret, f"{key}\n{expires}".encode(), hashlib.sha256).hexdigest()

    def sign(self, key: str, *, now: float | None = None) -> tuple[int, str]:
        # Rounded up, not down: a URL signed at 10.9 s with a 1 s TTL must not expire at 11 s.
        expires = math.ceil(now if now is not None else time.time()) + self.ttl_seconds
        return expires, self._signature(key, expires)

    def verify(self, key: str, expires: str | None, signature: str | None, *, now: float | None = None) -> None:
        """Raise a 403 `ApiError` unless the signature matches (checked first) and the URL has not expired."""
        # ASCII only: str.isdigit() accepts '¹' (which int() refuses) and compare_digest refuses non-ASCII text.
        if not expires or not signature or not _EXPIRES.fullmatch(expires) or not _SIGNATURE.fullmatch(signature):
            raise ApiError(403, "bad_signature", "this file URL is not signed: request a new one from the listing")
        expected = self._signature(key, int(expires))
        if not hmac.compare_digest(expected, signature):
            raise ApiError(403, "bad_signature", "this file URL's signature does not match: request a new one")
        if int(expires) <= (now if now is not None else time.time()):
            raise ApiError(403, "url_expired", "this file URL has expired: request a new one from the listing")
