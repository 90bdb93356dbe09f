"""Stage, check, publish: how checked flow bars reach the published layout (spec §4). No Dagster here.

1. `stage_variant` writes one timestamp variant's files under `staging/flow/…` and a manifest
   `staging/manifests/{timestamp}/{exchange}/{native}/{YYYY-MM}.json` naming each file's sha256 and whether the
   checks passed.
2. `publish_month` publishes the month as a whole (`storage.publication`): under the partition's lease, every
   staged file whose checks passed goes to its immutable version key (its sha256 verified against the staged
   manifest), the month's index entry is committed in one conditional write, the stable `flow/…` keys follow,
   then staging is cleared. A kill at any point leaves the index naming the whole old or the whole new month.
3. Publishing is idempotent. Staging is cleared once a month is published (it would double the store), so a
   variant with no staged manifest is taken from the index instead: each published object is re-hashed and must
   match the index, which is committed again. Same inputs, same published bytes, no error.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from aperiodic_pipelines.domain.errors import AperiodicError, StoreError
from aperiodic_pipelines.domain.layout import flow_key
from aperiodic_pipelines.storage.base import ObjectStore, sha256_file
from aperiodic_pipelines.storage.index import PublishedMonth, index_key, read_published_month
from aperiodic_pipelines.storage.json_objects import publish_json
from aperiodic_pipelines.storage.publication import (
    LEASE_SECONDS,
    MonthPublication,
    PublicationConflictError,
    StepHook,
    month_publication,
    object_sha256,
    stable_key,
)

__all__ = [
    "MissingInputError",
    "PublicationConflictError",
    "PublishOutcome",
    "StagedFile",
    "manifest_key",
    "object_sha256",
    "publish_month",
    "stage_variant",
    "staged_key",
    "verify_published_month",
]

STAGING_PREFIX = "staging/"
RESTAGE_WAIT_SECONDS = 60.0  # longest wait for a run restaging a variant to finish its manifest


class MissingInputError(AperiodicError):
    """An object an upstream step should have written is absent or unusable; rerun that step first."""


def staged_key(timestamp: str, exchange: str, interval: str, native_symbol: str, month: str) -> str:
    return STAGING_PREFIX + flow_key(timestamp, exchange, interval, native_symbol, month)


def manifest_key(timestamp: str, exchange: str, native_symbol: str, month: str) -> str:
    """What a flow-bars step staged for one variant, and whether its checks passed."""
    return f"{STAGING_PREFIX}manifests/{timestamp}/{exchange}/{native_symbol}/{month}.json"


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


class _StagingChanged(Exception):
    """A staged file no longer has the sha256 its manifest records: another run is restaging the variant."""


def _publish_staged(publication: MonthPublication, manifest: Mapping[str, Any]) -> None:
    if not manifest["checks_passed"]:
        raise MissingInputError(
            f"refusing to publish {manifest['timestamp']} bars of {manifest['exchange']} {manifest['native_symbol']} "
            f"{manifest['month']}: their checks failed"
        )
    for entry in manifest["files"]:
        # Pinned (a hard link in a local store, a download from S3): the bytes verified here are the bytes
        # published, whatever a restaging run does to the staged key meanwhile. Hashed once, for both.
        with publication.store.pinned(entry["staged_key"]) as local:
            size, sha = sha256_file(local)
            if sha != entry["sha256"]:
                raise _StagingChanged(f"staged {entry['staged_key']} changed since its checks ran (sha256 {sha})")
            publication.add_file(manifest["timestamp"], entry["interval"], local, entry["rows"], hashed=(size, sha))


def _publish_variant(publication: MonthPublication, key: str) -> bytes | None:
    """Publish one variant exactly as one staged manifest names it; the manifest's bytes (None: nothing staged).

    Another run of the partition may restage the variant meanwhile (staging is not under the lease: the two
    variants of one run stage in parallel). Its files land before its manifest, so a file that no longer has the
    manifest's sha256 means a newer manifest is coming: wait for it (bounded) and publish that one whole.
    """
    store = publication.store
    deadline = time.monotonic() + RESTAGE_WAIT_SECONDS
    last_error = ""
    while True:
        staged = store.read_tagged(key)
        if staged is None:
            if last_error:  # cleared by the run that just published it
                raise MissingInputError(f"{last_error}; then its staging was cleared by another run")
            return None
        try:
            _publish_staged(publication, json.loads(staged[0]))
            return staged[0]
        except _StagingChanged as exc:
            last_error = str(exc)
        while (current := store.read_tagged(key)) is not None and current[0] == staged[0]:
            if time.monotonic() > deadline:
                raise MissingInputError(f"{last_error}, and no newer manifest appeared in {RESTAGE_WAIT_SECONDS:.0f} s")
            time.sleep(0.2)


@dataclass(frozen=True)
class PublishOutcome:
    month: PublishedMonth
    index_uri: str
    from_staging: tuple[str, ...]  # variants copied from staging in this call
    reverified: tuple[str, ...]  # variants already published, re-verified against the index
    retired: tuple[str, ...] = ()  # superseded versions deleted by this call (their URLs had all expired)
    problems: tuple[str, ...] = ()  # `verify_published_month`, run before the lease was released


def publish_month(
    store: ObjectStore,
    *,
    exchange: str,
    symbol: str,
    native_symbol: str,
    month: str,
    timestamps: Sequence[str],
    retain_seconds: float | None = None,
    lease_seconds: float | None = None,
    on_step: StepHook | None = None,
) -> PublishOutcome:
    """Publish the month's staged variants (or re-verify the published ones) as a whole, clear staging.

    Raises `PublicationConflictError` (naming the partition) when another writer holds the month's lease or
    committed it meanwhile: then nothing of this call is visible through the index.
    """
    from_staging, reverified, used = [], [], []
    with month_publication(
        store, exchange, native_symbol, month, retain_seconds=retain_seconds, on_step=on_step,
        lease_seconds=LEASE_SECONDS if lease_seconds is None else lease_seconds,
    ) as publication:
        previous = publication.previous
        for timestamp in timestamps:
            key = manifest_key(timestamp, exchange, native_symbol, month)
            staged = _publish_variant(publication, key)
            if staged is not None:
                used.append((key, staged))
                from_staging.append(timestamp)
                continue
            indexed = [f for f in (previous.monthly_files() if previous else ()) if f.timestamp == timestamp]
            if not indexed:
                raise MissingInputError(
                    f"nothing staged or published for the {timestamp} bars of {exchange} {native_symbol} {month} "
                    f"({store.uri(key)} missing): materialize flow_bars_{timestamp} first"
                )
            try:
                publication.keep(indexed)
            except StoreError as exc:
                raise MissingInputError(str(exc)) from None
            reverified.append(timestamp)
        committed = publication.commit(symbol)
        # Staging is done with once the month is committed; a failure above keeps it for the retry. A manifest
        # restaged by another run meanwhile (different bytes) is that run's: left alone.
        for key, data in used:
            current = store.read_tagged(key)
            if current is not None and current[0] == data:
                for entry in json.loads(data)["files"]:
                    store.delete(entry["staged_key"])
                store.delete(key)
        publication.on_step("staging cleared")
        outcome = PublishOutcome(
            committed.month, committed.index_uri, tuple(from_staging), tuple(reverified), committed.retired
        )
        problems = verify_published_month(store, outcome)
    return replace(outcome, problems=tuple(problems))


def verify_published_month(store: ObjectStore, outcome: PublishOutcome) -> list[str]:
    """Problems (empty when none): the index in the store is the one just committed, every file it names exists,
    and every stable layout key holds its version's bytes.

    Each file's sha256 was compared with its staged (or indexed) sha256 when it was published or re-verified.
    """
    problems = []
    month = outcome.month
    stored = read_published_month(store, month.exchange, month.native_symbol, month.month)
    if stored is None or stored.to_dict() != month.to_dict():
        problems.append(f"{store.uri(index_key(month.exchange, month.native_symbol, month.month))}"
                        " differs from what was published")
    problems.extend(f"{f.key} missing" for f in month.files if not store.exists(f.key))
    for f in month.files:
        stable = stable_key(month.exchange, month.native_symbol, month.month, f)
        if f.key != stable and not store.same_object(f.key, stable):
            problems.append(f"{stable} does not hold {f.key}")
    return problems
