"""Local HTTP archive mirror fixtures: `mirror_root`, `archive_mirror`, `source_config`, `fast_downloader`, available
to every test module through `tests/conftest.py`'s `pytest_plugins` (name them as arguments; no import). The
plain helpers (`tiny_tape`, `cached_files`, `as_ms`) are imported as usual.

`archive_mirror` is a real `ArchiveMirror` (ThreadingHTTPServer on 127.0.0.1) serving `mirror_root`;
`source_config` points every HTTP source at it with a per-test cache; `fast_downloader` retries with tiny
backoffs so fault tests stay fast.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest

from aperiodic_pipelines.mirror.http import ArchiveMirror
from aperiodic_pipelines.sources.config import SourceConfig
from aperiodic_pipelines.sources.download import Downloader, RetryPolicy

FAST_RETRY = RetryPolicy(attempts=4, backoff_seconds=0.001, max_backoff_seconds=0.01)


@pytest.fixture
def mirror_root(tmp_path: Path) -> Path:
    root = tmp_path / "mirror"
    root.mkdir()
    return root


@pytest.fixture
def archive_mirror(mirror_root: Path) -> Iterator[ArchiveMirror]:
    with ArchiveMirror(mirror_root) as mirror:
        yield mirror


@pytest.fixture
def source_config(archive_mirror: ArchiveMirror, tmp_path: Path) -> SourceConfig:
    return SourceConfig(
        binance_url=archive_mirror.url,
        okx_url=archive_mirror.url,
        tardis_url=f"{archive_mirror.url}/tardis",
        cache_dir=tmp_path / "cache",
    )


@pytest.fixture
def fast_downloader(source_config: SourceConfig) -> Downloader:
    return Downloader(source_config.cache_dir, retry=FAST_RETRY, progress=False)


def cached_files(cache_dir: Path) -> list[Path]:
    """Files in the cache other than metadata sidecars and fetch locks (what a rerun would trust)."""
    from aperiodic_pipelines.sources.download import LOCKS_DIR

    if not cache_dir.exists():
        return []
    return sorted(p for p in cache_dir.rglob("*") if p.is_file() and not p.name.endswith(".meta.json")
                  and LOCKS_DIR not in p.relative_to(cache_dir).parts)


def tiny_tape(month: str = "2024-01", n: int = 400, seed: int = 11, *, with_arrival: bool = False) -> pl.DataFrame:
    """Seeded canonical trades spread over the month (µs, sorted, unique increasing ids)."""
    from aperiodic_pipelines.synthetic import generate_tape

    tape = generate_tape(month=month, n_trades=n, seed=seed, with_arrival=with_arrival)
    return tape.sort("ts_exchange", "trade_id")


def as_ms(trades: pl.DataFrame) -> pl.DataFrame:
    """What a ms-resolution archive of `trades` converts back to: µs truncated to ms, no arrival times."""
    return trades.with_columns(
        ts_exchange=pl.col("ts_exchange") // 1000 * 1000, ts_arrival=pl.lit(None, dtype=pl.Int64)
    ).sort("ts_exchange", "trade_id")
