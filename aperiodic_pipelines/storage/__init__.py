"""Storage layer: where raw trades, intermediates and published flow bars live (local directory or S3).

Nothing here knows Dagster; the definitions wrap these objects in resources.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from aperiodic_pipelines.domain.errors import StoreError
from aperiodic_pipelines.domain.intervals import INTERVALS, TIMESTAMPS
from aperiodic_pipelines.domain.layout import flow_key, raw_key, seconds_key
from aperiodic_pipelines.domain.months import check_month
from aperiodic_pipelines.domain.settings import (
    DEFAULT_STORE,
    Settings,
    StoreSettings,
    aws_endpoint,
    aws_region,
)
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
    write_parquet_row_groups,
)
from aperiodic_pipelines.storage.s3 import S3Store

STORE_ENV = "APERIODIC_STORE"  # the variable's name, for messages and Dagster's EnvVar; read by domain.settings
STALE_WRITE_ENV = "APERIODIC_STALE_WRITE_SECONDS"


def s3_client_from_env(environ: Mapping[str, str] | None = None) -> Any:
    """A boto3 S3 client; endpoint and region as `domain.settings.aws_endpoint` / `aws_region` read them
    (AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL, e.g. a local moto or MinIO; AWS_REGION or AWS_DEFAULT_REGION).

    Credentials come from boto3's usual chain (environment, profile, instance role), never from arguments.
    """
    import boto3
    from botocore.config import Config

    # SigV4 for presigned URLs too (boto3 would presign with the legacy SigV2 in us-east-1).
    return boto3.client(
        "s3", endpoint_url=aws_endpoint(environ), region_name=aws_region(environ),
        config=Config(signature_version="s3v4"),
    )


def store_from_settings(settings: StoreSettings, *, s3_client: Any = None) -> ObjectStore:
    """`s3://bucket/prefix` → `S3Store`; a path or `file://` URI → `LocalStore`; stale-write age from `settings`."""
    uri, stale_after = settings.uri, settings.stale_write_seconds
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


def store_from_uri(uri: str | None = None, *, s3_client: Any = None, settings: StoreSettings | None = None) -> ObjectStore:
    """The store at `uri`; with `uri=None`, the one `APERIODIC_STORE` names (default `./data`).

    Settings (the URI's default and the stale-write age) come from `settings`, else `Settings.from_env().store`.
    """
    if settings is None:
        settings = Settings.from_env().store
    if uri is not None:
        settings = replace(settings, uri=uri)
    return store_from_settings(settings, s3_client=s3_client)


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
    "store_from_settings",
    "store_from_uri",
    "write_parquet_deterministic",
    "write_parquet_row_groups",
]
