"""API errors: one JSON shape, `{"error", "details", "code"}` (spec §5), with a stable machine-readable code."""

from __future__ import annotations

from collections.abc import Mapping, Sequence


class ApiError(Exception):
    """An answer other than 200: HTTP status, stable `code`, a sentence, and details naming what was wrong."""

    def __init__(
        self,
        status: int,
        code: str,
        error: str,
        details: Sequence[str] = (),
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(f"{status} {code}: {error}")
        self.status = status
        self.code = code
        self.error = error
        self.details = list(details)
        self.headers = dict(headers or {})

    def body(self) -> dict[str, object]:
        return {"error": self.error, "details": self.details, "code": self.code}


def bad_request(code: str, error: str, *details: str) -> ApiError:
    return ApiError(400, code, error, details)
