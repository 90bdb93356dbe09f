"""second_stats of an instrument's registered first month asks the archive for no month before it.

The registry records the first month the listing shows (`instruments add`, `materialize`); the month before it has
no archive, so asking for it would only wait out its 404s. The mirror here does hold the month before, so a request
for it would show; the per-second statistics then differ from those built with the previous month's tail.
"""

from __future__ import annotations

from dagster import AssetKey

from aperiodic_pipelines.defs.partitions import first_month_key
from aperiodic_pipelines.storage import read_parquet_metadata, seconds_key
from tests.binance_stage import (
    ASSETS,
    EXCHANGE,
    NATIVE,
    PREFIX,
    Stage,
    materialization_metadata,
    new_instance,
    run_month,
)

SECOND_STATS_GRAPH = [
    a for a in ASSETS if a.key in {AssetKey([PREFIX, "raw_trades"]), AssetKey([PREFIX, "second_stats"])}
]


def test_registered_first_month_reads_no_previous_month(stage: Stage) -> None:
    registered = new_instance()
    registered.run_storage.set_cursor_values({first_month_key(EXCHANGE, NATIVE): "2024-02"})
    result = run_month(registered, stage.resources(), "2024-02", assets=SECOND_STATS_GRAPH)

    assert stage.mirror.count("*2024-01*") == 0  # neither the monthly archive nor a daily one was asked for
    stats = materialization_metadata(result, "second_stats")
    assert stats["previous_month"] == "2024-02 is BTCUSDT's registered first archive month: no previous month"
    key = seconds_key("exchange", EXCHANGE, NATIVE, "2024-02")
    assert read_parquet_metadata(stage.store().read_bytes(key))["aperiodic.has_previous"] == "false"

    # Unregistered, the same month reads the month before from the archive (the mirror has it).
    unregistered = new_instance()
    result = run_month(unregistered, stage.resources(), "2024-02", assets=SECOND_STATS_GRAPH)
    assert stage.mirror.count("*2024-01*") > 0
    assert "fetched from the source" in materialization_metadata(result, "second_stats")["previous_month"]
    assert read_parquet_metadata(stage.store().read_bytes(key))["aperiodic.has_previous"] == "true"
