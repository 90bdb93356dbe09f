"""Stage, check, publish: how checked flow bars reach the published layout (spec §4). No Dagster here.

1. `stage_variant` writes one timestamp variant's files under `staging/flow/…` and a manifest
   `staging/manifests/{timestamp}/{exchange}/{native}/{YYYY-MM}.json` naming each file's sha256 and whether the
   checks passed.
2. `publish_month` copies every staged file whose checks passed to `flow/…` (each atomically), verifying its
   sha256 against the manifest, then writes the month's index manifest (`storage.index`), then clears staging.
3. Publishing is idempotent. Staging is cleared once a month is published (it would double the store), so a
   variant with no staged manifest is taken from the index instead: each published object is re-hashed and must
   match the index, which is rewritten with the same bytes. Same inputs, same published bytes, no error.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aperiodic_pipelines.domain.errors import AperiodicError
from aperiodic_pipelines.domain.layout import flow_key
from aperiodic_pipelines.storage.base import HASH_CHUNK, ObjectStore, sha256_file
from aperiodic_pipelines.storage.index import (
    PublishedFile,
    PublishedMonth,
    index_key,
    read_published_month,
    record_published_month,
)
from aperiodic_pipelines.storage.json_objects import publish_json, read_json
from aperiodic_pipelines.storage.local import LocalStore

STAGING_PREFIX = "staging/"


class MissingInputError(AperiodicError):
    """An object an upstream step should have written is absent or unusable; rerun that step first."""


def staged_key(timestamp: str, exchange: str, interval: str, native_symbol: str, month: str) -> str:
    return STAGING_PREFIX + flow_key(timestamp, exchange, interval, native_symbol, month)


def manifest_key(timestamp: str, exchange: str, native_symbol: str, month: str) -> str:
    """What a flow-bars step staged for one variant, and whether its checks passed."""
    return f"{STAGING_PREFIX}manifests/{timestamp}/{exchange}/{native_symbol}/{month}.json"


def object_sha256(store: ObjectStore, key: str) -> tuple[int, str]:
    """(size, sha256) of a stored object, streamed."""
    if isinstance(store, LocalStore):
        return sha256_file(store.path(key))
    digest, size = hashlib.sha256(), 0
    with store.open_read(key) as body:
        while chunk := body.read(HASH_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


@dataclass(frozen=True)
class StagedFile:
    interval: str
    local_path: Path
    rows: int


def stage_variant(
    store: ObjectStore,
    *,
    exchange: str,
    symbol: str,
    native_symbol: str,
    month: str,
    timestamp: str,
    files: Sequence[StagedFile],
    checks_passed: bool,
) -> dict[str, Any]:
    """Upload one variant's files to staging, then its manifest (last: it names only files in place)."""
    entries = []
    for staged in files:
        key = staged_key(timestamp, exchange, staged.interval, native_symbol, month)
        obj = store.publish_file(staged.local_path, key)
        entries.append(
            {
                "interval": staged.interval, "staged_key": key,
                "key": flow_key(timestamp, exchange, staged.interval, native_symbol, month),
                "sha256": obj.sha256, "size": obj.size, "rows": staged.rows,
            }
        )
    manifest = {
        "timestamp": timestamp, "exchange": exchange, "symbol": symbol, "native_symbol": native_symbol,
        "month": month, "checks_passed": checks_passed, "files": entries,
    }
    publish_json(store, manifest, manifest_key(timestamp, exchange, native_symbol, month))
    return manifest


def _publish_staged(store: ObjectStore, manifest: Mapping[str, Any], workdir: Path) -> list[PublishedFile]:
    if not manifest["checks_passed"]:
        raise MissingInputError(
            f"refusing to publish {manifest['timestamp']} bars of {manifest['exchange']} {manifest['native_symbol']} "
            f"{manifest['month']}: their checks failed"
        )
    published = []
    for entry in manifest["files"]:
        local = store.download(entry["staged_key"], workdir / f"{manifest['timestamp']}-{entry['interval']}.parquet")
        _size, sha = sha256_file(local)
        if sha != entry["sha256"]:
            raise MissingInputError(f"staged {entry['staged_key']} changed since its checks ran (sha256 {sha})")
        obj = store.publish_file(local, entry["key"])
        if obj.sha256 != entry["sha256"]:  # the store re-hashes what it wrote
            raise MissingInputError(f"published {obj.uri} differs from its staged file (sha256 {obj.sha256})")
        published.append(
            PublishedFile(
                timestamp=manifest["timestamp"], interval=entry["interval"], key=obj.key, sha256=obj.sha256,
                rows=entry["rows"], size=obj.size,
            )
        )
        local.unlink()
    return published


def _reverify_published(store: ObjectStore, files: Sequence[PublishedFile]) -> list[PublishedFile]:
    for file in files:
        if not store.exists(file.key):
            raise MissingInputError(f"{store.uri(file.key)} is in the index but not in the store: rerun flow bars")
        size, sha = object_sha256(store, file.key)
        if (size, sha) != (file.size, file.sha256):
            raise MissingInputError(
                f"{store.uri(file.key)} does not match the index (sha256 {sha}, expected {file.sha256}): rerun flow bars"
            )
    return list(files)


@dataclass(frozen=True)
class PublishOutcome:
    month: PublishedMonth
    index_uri: str
    from_staging: tuple[str, ...]  # variants copied from staging in this call
    reverified: tuple[str, ...]  # variants already published, re-verified against the index


def publish_month(
    store: ObjectStore, *, exchange: str, symbol: str, native_symbol: str, month: str, timestamps: Sequence[str]
) -> PublishOutcome:
    """Publish the month's staged variants (or re-verify the published ones), record the index, clear staging."""
    previous = read_published_month(store, exchange, native_symbol, month)
    files: list[PublishedFile] = []
    from_staging, reverified, manifests = [], [], []
    with tempfile.TemporaryDirectory(prefix="aperiodic-pub-") as tmp:
        for timestamp in timestamps:
            key = manifest_key(timestamp, exchange, native_symbol, month)
            if store.exists(key):
                manifests.append(key)
                files.extend(_publish_staged(store, read_json(store, key), Path(tmp)))
                from_staging.append(timestamp)
                continue
            indexed = [f for f in (previous.files if previous else ()) if f.timestamp == timestamp]
            if not indexed:
                raise MissingInputError(
                    f"nothing staged or published for the {timestamp} bars of {exchange} {native_symbol} {month} "
                    f"({store.uri(key)} missing): materialize flow_bars_{timestamp} first"
                )
            files.extend(_reverify_published(store, indexed))
            reverified.append(timestamp)
    # The index goes after the files: a manifest never names a file that is not published yet.
    published = PublishedMonth(
        exchange=exchange, symbol=symbol, native_symbol=native_symbol, month=month, files=tuple(files)
    )
    obj = record_published_month(store, published)
    # Staging is done with once the month is indexed; a failure above keeps it for the retry.
    for key in manifests:
        for entry in read_json(store, key)["files"]:
            store.delete(entry["staged_key"])
        store.delete(key)
    return PublishOutcome(published, obj.uri, tuple(from_staging), tuple(reverified))


def verify_published_month(store: ObjectStore, outcome: PublishOutcome) -> list[str]:
    """Problems (empty when none): the index in the store is the one just written, every file it names exists.

    Each file's sha256 was compared with its staged (or indexed) sha256 when it was published or re-verified.
    """
    problems = []
    stored = read_published_month(store, outcome.month.exchange, outcome.month.native_symbol, outcome.month.month)
    if stored is None or stored.to_dict() != outcome.month.to_dict():
        problems.append(f"{store.uri(index_key(outcome.month.exchange, outcome.month.native_symbol, outcome.month.month))}"
                        " differs from what was published")
    problems.extend(f"{f.key} missing" for f in outcome.month.files if not store.exists(f.key))
    return problems
