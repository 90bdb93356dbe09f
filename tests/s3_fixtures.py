"""S3 fixtures over a real moto server on 127.0.0.1 (HTTP): `moto_endpoint`, `aws_env`, `s3_client`, `s3_bucket`,
available to every test module through `tests/conftest.py`'s `pytest_plugins` (name them as arguments; no import).

`moto_endpoint` is one server per test session; every test gets its own bucket, so tests never see each other's
objects. `aws_env` points boto3 at the server through its own env vars (AWS_ENDPOINT_URL_S3) with fake credentials,
so code under test builds its client exactly as in production.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from aperiodic_pipelines.mirror.s3 import FAKE_CREDENTIALS, create_bucket, make_client, start_moto_server

MOTO_REGION = "us-east-1"
# Variables that could point boto3 at real AWS or at another profile; cleared for every test.
_AWS_VARIABLES = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_ENDPOINT_URL",
    "AWS_REGION",
    "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
)


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """One moto S3 server for the session, on 127.0.0.1 and a free port: its endpoint URL."""
    server, endpoint = start_moto_server("127.0.0.1")
    try:
        yield endpoint
    finally:
        server.stop()


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, moto_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """Fake credentials and the moto endpoint in the environment; returns the endpoint URL."""
    for name in _AWS_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    empty = tmp_path_factory.mktemp("aws-config") / "none"
    monkeypatch.setenv("AWS_CONFIG_FILE", str(empty))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(empty))
    for name, value in FAKE_CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_DEFAULT_REGION", MOTO_REGION)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", moto_endpoint)
    return moto_endpoint


@pytest.fixture
def s3_client(aws_env: str) -> Any:
    """A boto3 S3 client on the moto server."""
    return make_client(aws_env, region=MOTO_REGION)


@pytest.fixture
def s3_bucket(s3_client: Any) -> str:
    """A fresh, empty bucket for this test."""
    name = f"test-{uuid.uuid4().hex[:20]}"
    create_bucket(s3_client, name, region=MOTO_REGION)
    return name
