"""`aperiodic-pipelines materialize --month <the open month>`: one run of the daily job, submitted through the code
location (as the daily schedule submits it), publishes the open month's complete days not yet published; a second
one says "nothing new" and exits 0. The sources are Tardis-format files of the real current month, dated relative
to today (`mirror.open_month`), and of the month before (day 1's carry reads it)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from dagster import DagsterInstance

from aperiodic_pipelines import cli
from aperiodic_pipelines.domain.months import current_month, previous_month
from aperiodic_pipelines.mirror.archives import write_tardis_days
from aperiodic_pipelines.mirror.open_month import published_days, write_tardis_open_month
from aperiodic_pipelines.storage import LocalStore
from aperiodic_pipelines.storage.daily import published_days as store_published_days
from aperiodic_pipelines.synthetic import generate_tape

pytestmark = pytest.mark.slow  # a code server and real runs

EXCHANGE, NATIVE = "binance-futures", "BTCUSDT"


def test_materialize_of_the_open_month_publishes_its_complete_days_then_nothing_new(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    month = current_month()
    root, store_dir = tmp_path / "tardis", tmp_path / "store"
    write_tardis_days(root, EXCHANGE, NATIVE, previous_month(month),
                      generate_tape(previous_month(month), 1_500, seed=41, with_arrival=True))
    write_tardis_open_month(root, EXCHANGE, NATIVE, layout="download")  # arrival-day files of the days before today
    for name, value in {"DAGSTER_HOME": tmp_path / "home", "APERIODIC_STORE": store_dir, "APERIODIC_SOURCE": "tardis",
                        "APERIODIC_TARDIS_URL": root, "APERIODIC_CACHE_DIR": tmp_path / "cache"}.items():
        monkeypatch.setenv(name, str(value))
    # exchange time: day d needs files d and d+1; true time: raw day d+1 too, so complete through today−3
    last = (datetime.now(UTC).date() - timedelta(days=3)).isoformat()
    expected = [d for d in published_days() if d <= last]

    argv = ["materialize", "--exchange", EXCHANGE, "--symbol", NATIVE, "--month", month, "--wait-timeout", "600"]
    assert cli.main(argv) == 0
    out, err = capsys.readouterr()
    assert store_published_days(LocalStore(store_dir), EXCHANGE, NATIVE, month) == expected, (out, err)
    if expected:
        assert f"published {len(expected)} day(s): {', '.join(expected)}; complete through {expected[-1]}" in out, out
    else:  # the 1st..3rd of a month: no complete day has all its raw inputs yet
        assert "nothing new" in out, out

    assert cli.main(argv) == 0
    out, err = capsys.readouterr()
    assert f"nothing new for {EXCHANGE} {NATIVE} {month}" in out, (out, err)
    with DagsterInstance.get() as instance:  # runs the UI knows: under the daily job, with the partition
        runs = instance.get_runs()
        assert {r.job_name for r in runs} == {"binance_futures_daily_flow_bars_job"} and len(runs) == 2
        assert all(r.tags.get("dagster/partition") == NATIVE and r.remote_job_origin is not None for r in runs)
