"""The access log: one line per request, whatever the request holds.

The path is logged decoded (readable), so a `%0A` in it would be a newline in the log and could forge whole
lines (`… 200 key=admin`). Every character that is not printable, and the space and the backslash, is written
as an escape instead: one request is one line with fixed fields.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

access_log = logging.getLogger("aperiodic_pipelines.api.access")
SCOPE_INFO = "aperiodic.access"  # per-request facts the access log reads (the key's name, never the key)


def escape_for_log(text: str, limit: int = 2048) -> str:
    """`text` with control characters, spaces and backslashes escaped (`\\x0a`, `\\x20`, `\\\\`), cut at `limit`."""
    if text.isprintable() and " " not in text and "\\" not in text:  # the usual case: nothing to do
        escaped = text
    else:
        escaped = "".join(
            "\\\\" if ch == "\\"
            else ch if ch.isprintable() and ch != " "
            else f"\\x{ord(ch):02x}" if ord(ch) < 0x100
            else f"\\u{ord(ch):04x}" if ord(ch) < 0x10000
            else f"\\U{ord(ch):08x}"
            for ch in text
        )
    return escaped if len(escaped) <= limit else escaped[:limit] + "…"


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
        scope[SCOPE_INFO] = info

        async def send_recording_status(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                info["status"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_recording_status)
        finally:
            access_log.info(
                "%s %s %s key=%s %.1fms",
                escape_for_log(scope["method"], 32),
                escape_for_log(scope["path"]),
                info["status"],
                escape_for_log(str(info["key"]), 64),
                (time.perf_counter() - started) * 1000,
            )
