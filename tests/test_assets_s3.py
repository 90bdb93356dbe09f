"""The same two months through the asset graph, with the store on a real S3 API (moto server on 127.0.0.1)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aperiodic_pipelines.defs.resources import SourcesResource, store_resource_from_env
from aperiodic_pipelines.mirror.http import ArchiveMirror
from aperiodic_pipelines.storage import S3Store
from tests.s3_fixtures import aws_env, moto_endpoint, s3_bucket, s3_client  # noqa: F401
from tests.test_assets_local import (
    MONTHS,
    assert_published_months,
    digests,
    new_instance,
    point_sources_at,
    run_month,
    write_binance_months,
)

FAKE_SECRET = "fake-secret-0123456789abcdef"  # moto accepts any credentials; this one must never show up


@pytest.mark.slow
def test_two_months_on_s3_store_exact_objects_metadata_and_identical_rerun(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, s3_bucket: str, s3_client, aws_env: str  # noqa: F811
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", FAKE_SECRET)
    monkeypatch.setenv("APERIODIC_STORE", f"s3://{s3_bucket}/aperiodic")
    counts = write_binance_months(tmp_path / "archives")
    with ArchiveMirror(tmp_path / "archives") as mirror:
        point_sources_at(monkeypatch, mirror.url, tmp_path / "cache")
        # The production wiring: store URI and credentials as EnvVars, endpoint from AWS_ENDPOINT_URL_S3.
        store_resource = store_resource_from_env()
        resources = {"store": store_resource, "sources": SourcesResource()}
        instance = new_instance()
        results = [run_month(instance, resources, month) for month in MONTHS]

        store = store_resource.get_store()
        assert isinstance(store, S3Store) and store.bucket == s3_bucket and store.prefix == "aperiodic"
        assert_published_months(store, counts)
        listed = s3_client.list_objects_v2(Bucket=s3_bucket)["Contents"]
        assert all(obj["Key"].startswith("aperiodic/") for obj in listed)
        uri = {k: v.value for k, v in results[1].asset_materializations_for_node("published_flow_bars")[0]
               .metadata.items()}["dagster/uri"]
        assert uri == f"s3://{s3_bucket}/aperiodic/flow/exchange/binance-futures/1m/BTCUSDT/2024-02.parquet"

        # Credentials never reach run metadata or logs.
        for result in results:
            for event in instance.all_logs(result.run_id):
                text = json.dumps(str(event.dagster_event.event_specific_data if event.dagster_event else ""))
                assert FAKE_SECRET not in text and FAKE_SECRET not in (event.user_message or "")

        before = digests(store)
        for month in MONTHS:
            run_month(instance, resources, month)
        assert digests(store) == before
