"""Two consecutive months of one instrument through the whole asset graph, against a local store.

Archives are Binance-format zips served by the real HTTP mirror on 127.0.0.1; Dagster runs in an ephemeral
instance. The stage and its helpers are `tests/binance_stage.py`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from dagster import AssetKey, DagsterEventType, MultiPartitionKey

from aperiodic_pipelines.defs.metadata import FLOW_COLUMN_DESCRIPTIONS
from aperiodic_pipelines.defs.raw import raw_sources_key
from aperiodic_pipelines.flow import FLOW_SCHEMA, INTERVALS, bars_in_month
from aperiodic_pipelines.storage import flow_key, raw_key, seconds_key
from aperiodic_pipelines.storage.index import index_key, read_published_month
from tests.binance_stage import (
    ASSETS,
    EXCHANGE,
    MONTHS,
    NATIVE,
    PREFIX,
    Stage,
    assert_published_months,
    digests,
    materialization_metadata,
    new_instance,
    run_month,
)


def test_two_months_published_with_metadata_and_rerun_is_byte_identical(stage: Stage) -> None:
    instance = new_instance()
    results = {month: run_month(instance, stage.resources(), month) for month in MONTHS}
    store = stage.store()
    assert_published_months(store, stage.trade_counts)

    # Materialisation metadata that is true: every uri names an object that exists after the run.
    raw = materialization_metadata(results["2024-02"], "raw_trades")
    assert raw["dagster/row_count"] == stage.trade_counts["2024-02"]
    assert raw["dataset"] == "aggTrades"
    assert raw["duplicates_dropped"] == 0 and raw["missing_days"] == 0
    assert raw["dagster/uri"] == store.uri(raw_key(EXCHANGE, NATIVE, "2024-02"))
    # Lineage: a count, a digest and a link to the sidecar listing the objects, not the objects inline.
    sidecar = json.loads(store.read_bytes(raw_sources_key(EXCHANGE, NATIVE, "2024-02")))
    assert raw["source_objects"] == len(sidecar["objects"]) == 1
    assert raw["source_digest"] == hashlib.sha256(
        json.dumps(sidecar["objects"], sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()
    assert raw["source_lineage"] == store.uri(raw_sources_key(EXCHANGE, NATIVE, "2024-02"))
    assert [c.description for c in raw["dagster/column_schema"].columns if not c.description] == []

    bars = materialization_metadata(results["2024-02"], "flow_bars_exchange")
    columns = bars["dagster/column_schema"].columns
    assert [c.name for c in columns] == list(FLOW_SCHEMA) and len(columns) == 37
    assert [c.description for c in columns] == [FLOW_COLUMN_DESCRIPTIONS[c.name] for c in columns]
    assert all(c.description for c in columns)
    # Row counts per interval, and dagster/row_count = the 1m rows of the month.
    assert {k: v for k, v in bars.items() if k.startswith("rows/")} == {
        f"rows/{i}": bars_in_month("2024-02", i) for i in INTERVALS
    }
    assert bars["dagster/row_count"] == bars_in_month("2024-02", "1m")
    assert bars["trades"] == stage.trade_counts["2024-02"]

    published = materialization_metadata(results["2024-02"], "published_flow_bars")
    assert list(published)[0] == "month_picture" and "data:image/png;base64," in published["month_picture"]
    assert published["files"] == len(INTERVALS) and published["variants"] == "exchange"
    assert published["dagster/uri"] == store.uri(index_key(EXCHANGE, NATIVE, "2024-02"))
    assert published["dagster/row_count"] == bars_in_month("2024-02", "1m")
    assert published["source_objects"] == 1

    stats = materialization_metadata(results["2024-02"], "second_stats")
    assert "from the store" in stats["previous_month"] and "from the store" in stats["this_month"]
    assert stats["dagster/uri"] == store.uri(seconds_key("exchange", EXCHANGE, NATIVE, "2024-02"))
    first = materialization_metadata(results["2024-01"], "second_stats")
    assert "first month" in first["previous_month"]
    for result in results.values():  # every uri of every asset names an object in the store after the run
        for event in result.get_asset_materialization_events():
            uri = event.event_specific_data.materialization.metadata["dagster/uri"].value
            assert Path(uri).is_file(), uri

    # Every check ran per partition and passed: where data enters (raw), in the middle (bars), where it leaves.
    records = instance.get_records_for_run(
        results["2024-02"].run_id, of_type={DagsterEventType.ASSET_CHECK_EVALUATION}
    ).records
    evaluations = [r.event_log_entry.dagster_event.event_specific_data for r in records]
    assert {(e.asset_key.to_user_string(), e.check_name) for e in evaluations} == {
        *((f"{PREFIX}/raw_trades", c) for c in ("canonical_schema", "nonempty_month", "duplicates_and_gaps",
                                                  "complete_month")),
        *((f"{PREFIX}/flow_bars_exchange", c) for c in ("schema_and_invariants", "dense_grid", "nonempty_month",
                                                         "reconciles_with_exchange_klines")),
        (f"{PREFIX}/published_flow_bars", "matches_staged_and_index"),
    }
    assert all(e.passed for e in evaluations)
    (klines,) = [e for e in evaluations if e.check_name == "reconciles_with_exchange_klines"]
    assert klines.metadata["bars_compared"].value == 29 * 24 * 60 and klines.metadata["bars_differing"].value == 0
    partition = MultiPartitionKey({"instrument": NATIVE, "month": "2024-02-01"})
    assert {e.partition for e in evaluations} == {partition}

    # Rerunning both months (cache hits, same inputs) rewrites every object with identical bytes.
    before = digests(store)
    for month in MONTHS:
        run_month(instance, stage.resources(), month)
    assert digests(store) == before

    # Republishing alone (staging was cleared) re-verifies against the index: succeeds, same bytes.
    (published_asset,) = [a for a in ASSETS if a.key == AssetKey([PREFIX, "published_flow_bars"])]
    again = run_month(instance, stage.resources(), "2024-02", assets=[published_asset])
    assert materialization_metadata(again, "published_flow_bars")["published_now"] == "none (re-verified)"
    assert digests(store) == before
    # ... repairs a stable layout key that no longer holds its version's bytes (written in place, unlinked) ...
    stable = flow_key("exchange", EXCHANGE, "1h", NATIVE, "2024-02")
    store.path(stable).unlink()
    store.path(stable).write_bytes(store.read_bytes(flow_key("exchange", EXCHANGE, "1h", NATIVE, "2024-01")))
    run_month(instance, stage.resources(), "2024-02", assets=[published_asset])
    assert digests(store) == before
    # ... and refuses when a published object no longer matches the index, naming it.
    (entry,) = [f for f in read_published_month(store, EXCHANGE, NATIVE, "2024-02").files if f.interval == "1h"]
    damaged = entry.key
    store.path(damaged).unlink()  # the stable key is a hard link to it: damage the version alone
    store.path(damaged).write_bytes(store.read_bytes(flow_key("exchange", EXCHANGE, "1h", NATIVE, "2024-01")))
    failed = run_month(instance, stage.resources(), "2024-02", assets=[published_asset], raise_on_error=False)
    assert not failed.success
    (failure,) = [e for e in failed.all_events if e.is_step_failure]
    assert f"{damaged} does not match the index" in failure.step_failure_data.error.message


def test_a_run_that_loses_the_partition_fails_clearly_and_records_nothing(stage: Stage) -> None:
    """Another writer holds the month's publication lease (here: this test process, as a concurrent run would):
    the run's publishing step fails at once, not retried, naming the partition; no materialization of the
    published asset is recorded and the index is untouched. The staged bars stay, and publish once it is free."""
    from aperiodic_pipelines.storage.publication import partition_lease

    instance = new_instance()
    store = stage.store()
    with partition_lease(store, EXCHANGE, NATIVE, "2024-01"):
        failed = run_month(instance, stage.resources(), "2024-01", raise_on_error=False)
    assert not failed.success
    (failure,) = [e for e in failed.all_events if e.is_step_failure]
    assert failure.step_key == f"{PREFIX}__published_flow_bars"
    message = failure.step_failure_data.error.message
    assert f"PublicationConflictError: {EXCHANGE} {NATIVE} 2024-01 is being published by another writer" in message
    assert not [e for e in failed.all_events if e.event_type_value in ("STEP_UP_FOR_RETRY", "STEP_RESTARTED")]
    assert [e.asset_key for e in failed.get_asset_materialization_events()
            if e.asset_key == AssetKey([PREFIX, "published_flow_bars"])] == []
    assert read_published_month(store, EXCHANGE, NATIVE, "2024-01") is None
    assert store.list("flow/") == []

    (published_asset,) = [a for a in ASSETS if a.key == AssetKey([PREFIX, "published_flow_bars"])]
    again = run_month(instance, stage.resources(), "2024-01", assets=[published_asset])
    assert materialization_metadata(again, "published_flow_bars")["published_now"] == "exchange"
    assert len(read_published_month(store, EXCHANGE, NATIVE, "2024-01").files) == len(INTERVALS)
