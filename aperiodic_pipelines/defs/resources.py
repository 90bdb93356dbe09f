"""Dagster resources: the object store and the archive sources. Thin wrappers over the storage/sources layers.

`definitions.py` builds both from the one `Settings` object it reads (`store_resource`, `sources_resource`), so
the UI shows the configuration the code location runs with. A resource built bare (`StoreResource()`,
`SourcesResource()`, as tests and scripts do) reads the settings when the run starts instead.

dagster-aws is imported only when an S3 store is configured: importing it costs every process that loads the
definitions (webserver, daemon, each run) about a second, and a local store never needs it. The `s3` fields
accept any resource with `get_client()`, such as dagster-aws' `S3Resource`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from dagster import ConfigurableResource, EnvVar

from aperiodic_pipelines.domain.settings import (
    Settings,
    SourceSettings,
    StoreSettings,
    aws_endpoint,
    aws_region,
)
from aperiodic_pipelines.storage import ObjectStore, s3_client_from_env, store_from_uri

# The one secret of the sources' settings: handed to Dagster as an `EnvVar` (its name, never its value), which
# Dagster resolves in the run process.
TARDIS_API_KEY_VARIABLE = "APERIODIC_TARDIS_API_KEY"


def _value(field: Any) -> Any:
    # Outside a run Dagster does not resolve EnvVar fields.
    return field.get_value() if isinstance(field, EnvVar) else field


class StoreResource(ConfigurableResource):
    """Where raw trades, intermediates, staged and published bars live.

    `uri` is a directory or `s3://bucket/prefix`; unset means the settings' store (`APERIODIC_STORE`, default
    `./data`) read when the run starts. For S3, `s3` supplies the client (endpoint, region; credentials as
    `EnvVar`s so the UI and run metadata show only the variable names); without it boto3's own chain and
    AWS_ENDPOINT_URL* apply.
    """

    uri: str | None = None
    s3: ConfigurableResource | None = None  # dagster-aws `S3Resource`

    def resolved_uri(self) -> str:
        return _value(self.uri) or Settings.from_env().store.uri

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
    """Where the archives live and how they are read: the fields of `SourceSettings`. With none set, the settings
    are read when the run starts. `s3` optionally supplies the client for S3-hosted archives (Hyperliquid's
    requester-pays bucket)."""

    binance_url: str | None = None
    okx_url: str | None = None
    hyperliquid_url: str | None = None
    tardis_url: str | None = None
    cache_dir: str | None = None
    binance_dataset: str | None = None
    source: str | None = None
    allow_missing_days: bool | None = None
    tardis_api_key: str | None = None  # an EnvVar: the UI shows its name only
    s3: ConfigurableResource | None = None  # dagster-aws `S3Resource`

    def get_config(self) -> SourceSettings:
        given = {
            name: _value(getattr(self, name))
            for name in (
                "binance_url", "okx_url", "hyperliquid_url", "tardis_url", "cache_dir", "binance_dataset",
                "source", "allow_missing_days", "tardis_api_key",
            )
        }
        given = {name: value for name, value in given.items() if value is not None}
        if not given:
            return Settings.from_env().sources
        if "cache_dir" in given:
            given["cache_dir"] = Path(given["cache_dir"])
        return SourceSettings(**given)

    def get_s3_client(self) -> Any:
        return self.s3.get_client() if self.s3 is not None else None


def _s3_resource() -> ConfigurableResource:
    from dagster_aws.s3 import S3Resource

    # Credentials stay EnvVar references: Dagster resolves them in the run process and never displays values.
    return S3Resource(
        endpoint_url=aws_endpoint(),
        region_name=aws_region(),
        aws_access_key_id=EnvVar("AWS_ACCESS_KEY_ID") if os.environ.get("AWS_ACCESS_KEY_ID") else None,
        aws_secret_access_key=EnvVar("AWS_SECRET_ACCESS_KEY") if os.environ.get("AWS_SECRET_ACCESS_KEY") else None,
        aws_session_token=EnvVar("AWS_SESSION_TOKEN") if os.environ.get("AWS_SESSION_TOKEN") else None,
    )


def store_resource(store: StoreSettings) -> StoreResource:
    """The store the deployment uses; with an S3Resource (credentials as EnvVars) when it is s3://."""
    return StoreResource(uri=store.uri, s3=_s3_resource() if store.is_s3 else None)


def sources_resource(sources: SourceSettings) -> SourcesResource:
    """The sources as configured. The Hyperliquid source builds its own boto3 client from AWS_* variables unless
    an `S3Resource` is injected (`SourcesResource(s3=S3Resource(...))`)."""
    return SourcesResource(
        binance_url=sources.binance_url,
        okx_url=sources.okx_url,
        hyperliquid_url=sources.hyperliquid_url,
        tardis_url=sources.tardis_url,
        cache_dir=str(sources.cache_dir),
        binance_dataset=sources.binance_dataset,
        source=sources.source,
        allow_missing_days=sources.allow_missing_days,
        tardis_api_key=EnvVar(TARDIS_API_KEY_VARIABLE) if sources.tardis_api_key else None,
    )
