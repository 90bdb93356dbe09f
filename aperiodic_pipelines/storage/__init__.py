"""Storage layer: where raw trades, intermediates and published flow bars live (local directory or S3).

Nothing here knows Dagster; the definitions wrap these objects in resources.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from aperiodic_pipelines.domain.errors import StoreError
from aperiodic_pipelines.domain.intervals import INTERVALS, TIMESTAMPS
from aperiodic_pipelines.domain.layout import flow_key, raw_key, seconds_key
from aperiodic_pipelines.domain.months import check_month
from aperiodic_pipelines.storage.base import (
    STALE_WRITE_SECONDS,
    ObjectNotFoundError,
    ObjectStore,
    PublishedObject,
    sha256_file,
)
from aperiodic_pipelines.storage.local import LocalStore
from aperiodic_pipelines.storage.parquet import (
    bars_metadata,
    read_parquet_metadata,
    write_parquet_deterministic,
)
from aperiodic_pipelines.storage.s3 import S3Store

STORE_ENV = "APERIODIC_STORE"
DEFAULT_STORE = "./data"
STALE_WRITE_ENV = "APERIODIC_STALE_WRITE_SECONDS"


def s3_client_from_env(environ: dict[str, str] | None = None) -> Any:
    """A boto3 S3 client; endpoint from AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL (e.g. a local moto or MinIO).

    Credentials come from boto3's usual chain (environment, profile, instance role), never from arguments.
    """
    import boto3
    from botocore.config import Config

    env = os.environ if environ is None else environ
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or None
    region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1"
    # SigV4 for presigned URLs too (boto3 would presign with the legacy SigV2 in us-east-1).
    return boto3.client("s3", endpoint_url=endpoint, region_name=region, config=Config(signature_version="s3v4"))


def store_from_uri(uri: str | None = None, *, s3_client: Any = None) -> ObjectStore:
    """`s3://bucket/prefix` → `S3Store`; a path or `file://` URI → `LocalStore`.

    With `uri=None`, reads `APERIODIC_STORE` (default `./data`).
    """
    if uri is None:
        uri = os.environ.get(STORE_ENV) or DEFAULT_STORE
    stale_after = _stale_write_seconds()
    parsed = urlparse(uri)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise StoreError(f"store URI {uri!r} has no bucket (expected s3://bucket/prefix)")
        client = s3_client if s3_client is not None else s3_client_from_env()
        return S3Store(client, parsed.netloc, parsed.path, stale_after=stale_after)
    if parsed.scheme == "file":
        return LocalStore(Path(parsed.path), stale_after=stale_after)
    if parsed.scheme and len(parsed.scheme) > 1:  # one letter is a Windows drive, not a scheme
        raise StoreError(f"store URI {uri!r}: unsupported scheme {parsed.scheme!r} (use a path or s3://)")
    return LocalStore(Path(uri), stale_after=stale_after)


def _stale_write_seconds() -> float:
    text = os.environ.get(STALE_WRITE_ENV)
    if not text:
        return STALE_WRITE_SECONDS
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise StoreError(f"{STALE_WRITE_ENV}={text!r}: expected a positive number of seconds")
    return value


__all__ = [
    "DEFAULT_STORE",
    "INTERVALS",
    "STALE_WRITE_ENV",
    "STALE_WRITE_SECONDS",
    "STORE_ENV",
    "TIMESTAMPS",
    "LocalStore",
    "ObjectNotFoundError",
    "ObjectStore",
    "PublishedObject",
    "S3Store",
    "bars_metadata",
    "check_month",
    "flow_key",
    "raw_key",
    "read_parquet_metadata",
    "s3_client_from_env",
    "seconds_key",
    "sha256_file",
    "store_from_uri",
    "write_parquet_deterministic",
]
