"""schemathesis over the API's own OpenAPI document, against a live server on 127.0.0.1:
no 5xx, and every answer (status, content type, body) matches the document."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from aperiodic_pipelines.api import ApiKeyStore, ApiSettings, PreviewMonth, running_server
from aperiodic_pipelines.storage import LocalStore
from tests.api_fixtures import EXCHANGE, SYMBOL, compute_test_bars, publish_test_bars

pytestmark = pytest.mark.slow


class Live:
    def __init__(self, base: str, key: str) -> None:
        self.base, self.key = base, key


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    root: Path = tmp_path_factory.mktemp("api-schema")
    publish_test_bars(LocalStore(root / "store"), compute_test_bars(5_000))
    keys = ApiKeyStore(root / "keys.sqlite")
    config = ApiSettings(
        store_uri=str(root / "store"), api_keys_path=root / "keys.sqlite", rate_per_second=10_000, rate_burst=10_000,
        preview=(PreviewMonth.parse(f"{EXCHANGE}:{SYMBOL}:1h:2024-01"),),
    )
    with running_server(config) as base:
        yield Live(base, keys.create("fuzzer"))


CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


# schemathesis' pytest integration (`from_fixture`) reads a pytest private attribute that pytest 9 removed, so
# each operation's strategy is driven by hypothesis directly; the checks are the same.
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_every_answer_matches_the_openapi_document(live: Live, mode: GenerationMode) -> None:
    schema = schemathesis.openapi.from_url(f"{live.base}/openapi.json")
    base_url = live.base.removesuffix("/api/v1")
    labels = []
    for result in schema.get_all_operations():
        operation = result.ok()
        labels.append(operation.label)
        if mode == GenerationMode.NEGATIVE and not list(operation.iter_parameters()):
            continue  # nothing to make invalid (/healthz)

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def exercise(case: schemathesis.Case) -> None:
            case.call_and_validate(base_url=base_url, headers={"X-API-KEY": live.key}, checks=CHECKS)

        exercise()
    assert "GET /api/v1/data/{metric}" in labels and "GET /api/v1/files/{key}" in labels
