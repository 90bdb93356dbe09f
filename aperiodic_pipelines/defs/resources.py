"""Dagster resources: the object store and the archive sources. Thin wrappers over the storage/sources layers.

dagster-aws is imported only when an S3 store is configured: importing it costs every process that loads the
definitions (webserver, daemon, each run) about a second, and a local store never needs it. The `s3` fields
accept any resource with `get_client()`, such as dagster-aws' `S3Resource`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from dagster import ConfigurableResource, EnvVar

from aperiodic_pipelines.sources.config import SourceConfig
from aperiodic_pipelines.storage import (
    DEFAULT_STORE,
    STORE_ENV,
    ObjectStore,
    s3_client_from_env,
    store_from_uri,
)


class StoreResource(ConfigurableResource):
    """Where raw trades, intermediates, staged and published bars live.

    `uri` is a directory or `s3://bucket/prefix`; unset means `$APERIODIC_STORE`, else `./data`, read when the
    run starts. For S3, `s3` supplies the client (endpoint, region; credentials as `EnvVar`s so the UI and
    run metadata show only the variable names); without it boto3's own chain and AWS_ENDPOINT_URL* apply.
    """

    uri: str | None = None
    s3: ConfigurableResource | None = None  # dagster-aws `S3Resource`

    def resolved_uri(self) -> str:
        uri = self.uri.get_value() if isinstance(self.uri, EnvVar) else self.uri  # EnvVar: used outside a run
        return uri or os.environ.get(STORE_ENV) or DEFAULT_STORE

    def is_s3(self) -> bool:
        return self.resolved_uri().startswith("s3://")

    def get_store(self) -> ObjectStore:
        client = None
        if self.s3 is not None and self.is_s3():
            unresolved = any(isinstance(getattr(self.s3, name), EnvVar) for name in type(self.s3).model_fields)
            # Outside a run Dagster does not resolve EnvVar fields; boto3 then reads the same variables itself.
            client = s3_client_from_env() if unresolved else self.s3.get_client()
        return store_from_uri(self.resolved_uri(), s3_client=client)


class SourcesResource(ConfigurableResource):
    """Archive locations (`APERIODIC_*_URL`, see `SourceConfig.from_env`), read when the run starts.

    `s3` optionally supplies the client for S3-hosted archives (Hyperliquid's requester-pays bucket).
    """

    s3: ConfigurableResource | None = None  # dagster-aws `S3Resource`

    def get_config(self) -> SourceConfig:
        return SourceConfig.from_env()

    def get_s3_client(self) -> Any:
        return self.s3.get_client() if self.s3 is not None else None


def _s3_resource_from_env(environ: Mapping[str, str]) -> ConfigurableResource:
    from dagster_aws.s3 import S3Resource

    # Credentials stay EnvVar references: Dagster resolves them in the run process and never displays values.
    return S3Resource(
        endpoint_url=environ.get("AWS_ENDPOINT_URL_S3") or environ.get("AWS_ENDPOINT_URL") or None,
        region_name=environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION") or "us-east-1",
        aws_access_key_id=EnvVar("AWS_ACCESS_KEY_ID") if environ.get("AWS_ACCESS_KEY_ID") else None,
        aws_secret_access_key=EnvVar("AWS_SECRET_ACCESS_KEY") if environ.get("AWS_SECRET_ACCESS_KEY") else None,
        aws_session_token=EnvVar("AWS_SESSION_TOKEN") if environ.get("AWS_SESSION_TOKEN") else None,
    )


def store_resource_from_env(environ: Mapping[str, str] | None = None) -> StoreResource:
    """The store the deployment uses: `$APERIODIC_STORE` (default ./data); an S3Resource when it is s3://."""
    env = os.environ if environ is None else environ
    uri = env.get(STORE_ENV) or None
    if uri and uri.startswith("s3://"):
        return StoreResource(uri=EnvVar(STORE_ENV), s3=_s3_resource_from_env(env))
    return StoreResource(uri=EnvVar(STORE_ENV) if uri else None)


def sources_resource_from_env() -> SourcesResource:
    """Sources resource. The Hyperliquid source builds its own boto3 client from AWS_* variables unless an
    `S3Resource` is injected here (e.g. `SourcesResource(s3=S3Resource(...))`)."""
    return SourcesResource()


def store_is_s3(environ: Mapping[str, str] | None = None) -> bool:
    """Whether the deployment's store is S3 (decides the `s3` kind tag on assets at load time)."""
    env = os.environ if environ is None else environ
    return (env.get(STORE_ENV) or DEFAULT_STORE).startswith("s3://")
