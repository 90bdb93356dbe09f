"""Session-wide test hygiene, and the fixture modules every test file can use without importing them.

`pytest_plugins` registers the shared fixtures once: the HTTP archive mirror (`archive_mirror`, `source_config`,
`fast_downloader`, …), the moto S3 server (`moto_endpoint`, `aws_env`, `s3_client`, `s3_bucket`) and the Binance
stage of the Dagster tests (`stage`). Test files import only the plain helpers of those modules.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

pytest_plugins = ["tests.http_fixtures", "tests.s3_fixtures", "tests.binance_stage"]

@pytest.fixture(autouse=True)
def _no_dagster_defs_state_storage_leaks_between_tests() -> Iterator[None]:
    """Each test starts and ends without a process-wide Dagster defs-state storage.

    In Dagster 1.13 entering an instance (`with DagsterInstance.ephemeral()`, `instance_for_test()`, the CLI's own
    instance contexts) makes its defs-state storage the current one and leaving it never resets it; once that
    instance is garbage-collected, every later `Definitions` resolution in the session (e.g. `dagster.materialize`)
    fails with "Attempted to resolve undefined DagsterInstance weakref", depending on test order.
    """
    from dagster._core.storage.defs_state.base import set_defs_state_storage

    with set_defs_state_storage(None):
        yield
