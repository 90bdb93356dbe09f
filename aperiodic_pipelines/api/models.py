"""Response models: the OpenAPI document. Handlers return plain JSON (faster than validating each answer)."""

from typing import Any

from pydantic import BaseModel


class ErrorBody(BaseModel):
    error: str
    details: list[str]
    code: str


class FileEntry(BaseModel):
    year: int
    month: int
    day: int | None = None  # only for a daily file of a month whose monthly file is not published yet
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


class CoverageDay(BaseModel):
    day: str
    rows: int
    size: int
    sha256: str


class CoverageVariant(BaseModel):
    timestamp: str
    interval: str
    months: list[CoverageMonth]
    days: list[CoverageDay] = []  # daily files of the open month (a month with a monthly file lists none)
    complete_through: str | None = None  # the last day whose bars are published (YYYY-MM-DD)


class CoverageBody(BaseModel):
    exchange: str
    symbol: str
    native_symbol: str
    variants: list[CoverageVariant]


class HealthBody(BaseModel):
    status: str
    version: str


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": ErrorBody} for status in statuses}
