"""Whole publication of an instrument-month (spec §4): every interval and variant, and the index, change together.

How (docs/storage.md, "Whole publication"):

1. **A lease per partition.** One writer at a time publishes a month: locally an exclusive `flock` (released by
   the kernel when its holder dies, even by SIGKILL); on S3 a lease object created with `If-None-Match: *`,
   renewed by a heartbeat, taken over only when expired and only with `If-Match` on the expired lease's ETag.
   A second writer fails at once with `PublicationConflictError` naming the partition and the holder.
2. **Immutable versions.** Each file goes to a content-addressed key,
   `versions/flow/{exchange}/{native}/{YYYY-MM}/{timestamp}/{interval}/{sha256}/{YYYY-MM}.parquet`, written once and never
   replaced: an object under such a key always has the bytes its name (and the index) says.
3. **One commit point.** The month's index entry `index/flow/{exchange}/{native}/{YYYY-MM}.json` names the
   version keys and their sha256; it is replaced by one conditional write (S3: `If-Match` on the ETag read at
   the start, or `If-None-Match: *` for a first publication; locally a compare-and-swap under a lock, then
   `os.replace`). Before it, readers through the index see the whole old month; after it, the whole new one.
4. **Stable keys after the commit.** `flow/{timestamp}/{exchange}/{interval}/{native}/{YYYY-MM}.parquet`
   (spec §4's layout, for direct readers) is then pointed at the new bytes (a hard link locally, a server-side
   copy on S3), one file at a time: a direct reader of those keys can see a mix for those seconds (or until the
   rerun, if the writer dies in between); the index and the API never do.
5. **Retirement.** Versions the new entry no longer names stay in its `retiring` list until every URL that
   could name them has expired (`retention_seconds`: URL lifetime + the API's index cache + a margin); a later
   publication of the month deletes them, and any version no entry names (a dead writer's upload) once it is
   older than that.

The functions take an `on_step(name)` callback, called at each step; tests use it to kill a real writer there.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, timedelta
from pathlib import Path

from aperiodic_pipelines.atomic import flocked
from aperiodic_pipelines.domain.errors import StoreError
from aperiodic_pipelines.domain.intervals import check_interval, check_timestamp
from aperiodic_pipelines.domain.layout import _segment, daily_flow_key, flow_key
from aperiodic_pipelines.domain.months import check_day, check_month
from aperiodic_pipelines.domain.settings import ApiSettings
from aperiodic_pipelines.storage.base import (
    HASH_CHUNK,
    ObjectNotFoundError,
    ObjectStore,
    PreconditionFailedError,
    sha256_file,
)
from aperiodic_pipelines.storage.index import (
    PublishedCarry,
    PublishedFile,
    PublishedMonth,
    RetiringObject,
    index_key,
)
from aperiodic_pipelines.storage.json_objects import canonical_json
from aperiodic_pipelines.storage.local import LocalStore
from aperiodic_pipelines.storage.s3 import S3Store

VERSIONS_PREFIX = "versions/flow/"
CARRIES_PREFIX = "intermediate/carry/"  # flow carries published with days of the open month (never under flow/)
LEASES_PREFIX = "leases/flow/"
# Keys a reader may be handed for a published file: a version (what the index names) or a stable layout key
# (what indexes written before versions named). The API's file route accepts exactly these.
SERVABLE_PREFIXES = ("flow/", VERSIONS_PREFIX)
LEASE_SECONDS = 120.0  # an S3 lease not renewed for this long is a dead writer's (renewed every quarter of it)
RETIRE_MARGIN_SECONDS = 60.0  # clock skew between the API's hosts and this one, and slow downloads starting late
log = logging.getLogger(__name__)

StepHook = Callable[[str], None]


class PublicationConflictError(StoreError):
    """Another writer holds the partition's lease, or committed the month since this writer read it."""


def version_key(
    exchange: str, native_symbol: str, month: str, timestamp: str, interval: str, sha256: str, *, day: str | None = None
) -> str:
    """`versions/flow/{exchange}/{native}/{YYYY-MM}/{timestamp}/{interval}/{sha256}/{YYYY-MM}.parquet`: immutable.

    The file name is the layout's (`{YYYY-MM}.parquet`, or `{YYYY-MM-DD}.parquet` for a daily file), so readers
    that tell monthly from daily files by the name (the API's listing) and downloads keep it; the sha256 of the
    bytes is the directory, so each content has its own key.
    """
    if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
        raise ValueError(f"sha256 must be 64 lowercase hex digits, got {sha256!r}")
    if day is not None and not check_day(day).startswith(f"{month}-"):
        raise ValueError(f"day {day!r} is not in month {month!r}")
    return (
        f"{month_versions_prefix(exchange, native_symbol, month)}{check_timestamp(timestamp)}/"
        f"{check_interval(interval)}/{sha256}/{day or month}.parquet"
    )


def month_versions_prefix(exchange: str, native_symbol: str, month: str) -> str:
    """Every version of one instrument-month lives under this prefix (one listing finds them all)."""
    return (
        f"{VERSIONS_PREFIX}{_segment('exchange', exchange)}/{_segment('native symbol', native_symbol)}/"
        f"{check_month(month)}/"
    )


def carry_version_key(
    exchange: str, native_symbol: str, month: str, timestamp: str, sha256: str, *, for_day: str
) -> str:
    """`intermediate/carry/{exchange}/{native}/{YYYY-MM}/{timestamp}/{sha256}/{for_day}.parquet`: immutable.

    `month` is the month of the day the carry was published with (`for_day` - 1): its entry names it.
    """
    if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
        raise ValueError(f"sha256 must be 64 lowercase hex digits, got {sha256!r}")
    return f"{month_carries_prefix(exchange, native_symbol, month)}{check_timestamp(timestamp)}/{sha256}/{check_day(for_day)}.parquet"


def month_carries_prefix(exchange: str, native_symbol: str, month: str) -> str:
    return (
        f"{CARRIES_PREFIX}{_segment('exchange', exchange)}/{_segment('native symbol', native_symbol)}/"
        f"{check_month(month)}/"
    )


def stable_key(entry_exchange: str, native_symbol: str, month: str, file: PublishedFile) -> str:
    """The spec §4 layout key of a published file: `flow/…/{YYYY-MM}.parquet`, or `…/{YYYY-MM-DD}.parquet`."""
    if file.day is not None:
        return daily_flow_key(file.timestamp, entry_exchange, file.interval, native_symbol, file.day)
    return flow_key(file.timestamp, entry_exchange, file.interval, native_symbol, month)


def lease_key(exchange: str, native_symbol: str, month: str) -> str:
    return (
        f"{LEASES_PREFIX}{_segment('exchange', exchange)}/{_segment('native symbol', native_symbol)}/"
        f"{check_month(month)}.json"
    )


def is_version_key(key: str) -> bool:
    """An immutable, content-addressed key (a file version or a carry): retired, never replaced."""
    return key.startswith((VERSIONS_PREFIX, CARRIES_PREFIX))


def retention_seconds(api: ApiSettings | None = None) -> float:
    """How long a superseded version must stay: the longest a URL naming it can be valid after the commit.

    The API may serve the old index entry for `index_refresh_seconds` (its cache), and a URL it hands out is
    valid for the TTL plus its reuse window (`min(30, TTL // 10)`, see api/app.py); plus a margin.
    """
    if api is None:
        from aperiodic_pipelines.domain.settings import Settings

        api = Settings.from_env().api
    ttl = api.url_ttl_seconds
    return ttl + min(30, ttl // 10) + api.index_refresh_seconds + RETIRE_MARGIN_SECONDS


# --- the lease -------------------------------------------------------------------------------------------------


@dataclass
class Lease:
    """A held partition lease. `check()` raises when it was lost (S3: not renewed in time and taken over)."""

    partition: str
    key: str
    owner: dict[str, object]
    lost: str | None = None

    def check(self) -> None:
        if self.lost is not None:
            raise PublicationConflictError(f"lost the publication lease of {self.partition}: {self.lost}")


def _owner() -> dict[str, object]:
    return {"host": socket.gethostname(), "pid": os.getpid(), "id": uuid.uuid4().hex, "since": time.time()}


def _describe(owner: object) -> str:
    if not isinstance(owner, dict):
        return "an unknown writer"
    since, expires = owner.get("since"), owner.get("expires")
    age = f", since {time.time() - since:.0f} s" if isinstance(since, int | float) else ""
    left = f", lease expires in {expires - time.time():.0f} s unless renewed" if isinstance(expires, int | float) else ""
    return f"pid {owner.get('pid')} on {owner.get('host')}{age}{left}"


def _conflict(partition: str, holder: str, where: str) -> PublicationConflictError:
    return PublicationConflictError(
        f"{partition} is being published by another writer ({holder}; lease {where}): this run did not publish "
        "it. Two runs of one partition never publish at once; rerun this one when the other has finished"
    )


@contextlib.contextmanager
def partition_lease(
    store: ObjectStore, exchange: str, native_symbol: str, month: str, *, lease_seconds: float = LEASE_SECONDS
) -> Iterator[Lease]:
    """Hold the partition's publication lease, or raise `PublicationConflictError` naming the partition."""
    partition = f"{exchange} {native_symbol} {month}"
    key = lease_key(exchange, native_symbol, month)
    if isinstance(store, LocalStore):
        with _local_lease(store, partition, key) as lease:
            yield lease
    elif isinstance(store, S3Store):
        with _s3_lease(store, partition, key, lease_seconds) as lease:
            yield lease
    else:
        raise StoreError(f"{store!r} supports no publication lease")


@contextlib.contextmanager
def _local_lease(store: LocalStore, partition: str, key: str) -> Iterator[Lease]:
    path = store.lock_path(key)
    with flocked(path, blocking=False) as fd:
        if fd is None:
            try:
                holder = _describe(json.loads(path.read_text() or "null"))
            except (OSError, ValueError):
                holder = "an unknown writer"
            raise _conflict(partition, holder, str(path))
        owner = _owner()
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(owner).encode(), 0)  # who holds it, for the loser's message
        yield Lease(partition, key, owner)


@contextlib.contextmanager
def _s3_lease(store: S3Store, partition: str, key: str, lease_seconds: float) -> Iterator[Lease]:
    owner = _owner()

    def body() -> bytes:
        return json.dumps({**owner, "expires": time.time() + lease_seconds}).encode()

    try:
        tag = store.put_bytes_if(key, body(), tag=None, content_type="application/json")
    except PreconditionFailedError:
        current = store.read_tagged(key)
        if current is None:  # released in between: one more try, still conditional
            try:
                tag = store.put_bytes_if(key, body(), tag=None, content_type="application/json")
            except PreconditionFailedError:
                raise _conflict(partition, "a writer that just took it", store.uri(key)) from None
        else:
            try:
                held = json.loads(current[0])
            except ValueError:
                held = {}
            if float(held.get("expires", 0)) > time.time():
                raise _conflict(partition, _describe(held), store.uri(key)) from None
            try:  # expired: a dead writer's; take it over, unless someone else just did
                tag = store.put_bytes_if(key, body(), tag=current[1], content_type="application/json")
            except PreconditionFailedError:
                raise _conflict(partition, "a writer that just took over an expired lease", store.uri(key)) from None
            log.warning("took over the expired publication lease of %s from %s", partition, _describe(held))
    lease = Lease(partition, key, owner)
    stop = threading.Event()

    def heartbeat() -> None:
        nonlocal tag
        renewed = time.monotonic()
        while not stop.wait(lease_seconds / 4):
            try:
                tag = store.put_bytes_if(key, body(), tag=tag, content_type="application/json")
                renewed = time.monotonic()
            except PreconditionFailedError as exc:  # taken over: the commit must not happen
                lease.lost = str(exc)
                return
            except StoreError as exc:  # S3 unreachable: try again next beat, unless the lease may have run out
                if time.monotonic() - renewed > lease_seconds * 0.75:
                    lease.lost = f"not renewed for {time.monotonic() - renewed:.0f} s ({exc})"
                    return

    thread = threading.Thread(target=heartbeat, name=f"lease {partition}", daemon=True)
    thread.start()
    try:
        yield lease
    finally:
        stop.set()
        thread.join(timeout=30)
        if lease.lost is None:
            with contextlib.suppress(StoreError):  # an unreleased lease expires on its own
                store.delete_if(key, tag)


# --- a publication ---------------------------------------------------------------------------------------------


def read_month_tagged(
    store: ObjectStore, exchange: str, native_symbol: str, month: str
) -> tuple[PublishedMonth | None, str | None]:
    """The month's index entry and the tag a conditional commit compares (None, None when absent)."""
    found = store.read_tagged(index_key(exchange, native_symbol, month))
    if found is None:
        return None, None
    return PublishedMonth.from_json(found[0]), found[1]


def object_sha256(store: ObjectStore, key: str) -> tuple[int, str]:
    """(size, sha256) of a stored object, re-hashed from its bytes."""
    if isinstance(store, LocalStore):
        return sha256_file(store.path(key))
    digest, size = hashlib.sha256(), 0
    with store.open_read(key) as body:
        while chunk := body.read(HASH_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


@dataclass(frozen=True)
class Committed:
    """What a commit made current: the month's entry, the index object's URI, and what it retired."""

    month: PublishedMonth
    index_uri: str
    retired: tuple[str, ...] = ()


@dataclass
class MonthPublication:
    """One writer's publication of one instrument-month, inside its lease (see `month_publication`)."""

    store: ObjectStore
    exchange: str
    native_symbol: str
    month: str
    lease: Lease
    previous: PublishedMonth | None
    previous_tag: str | None
    retain_seconds: float
    on_step: StepHook
    # (timestamp, interval, day or None for the monthly file) → file; (for_day, timestamp) → carry.
    files: dict[tuple[str, str, str | None], PublishedFile] = field(default_factory=dict)
    carries: dict[tuple[str, str], PublishedCarry] = field(default_factory=dict)
    # Days whose files and carries in the previous entry are not carried into this one (republished or invalidated).
    replaced_days: set[str] = field(default_factory=set)

    def _upload(
        self, local_path: Path | str, key_of: Callable[[str], str], hashed: tuple[int, str] | None = None
    ) -> tuple[str, int, str]:
        """Upload a file to the immutable key `key_of(sha256)` (skipped when those exact bytes are there).

        `hashed`: the file's (size, sha256), when the caller has just hashed it (a private, pinned file)."""
        size, sha = hashed or sha256_file(local_path)
        key = key_of(sha)
        try:
            present = self.store.stored_sha256(key)
        except ObjectNotFoundError:
            present = None
        if present != (size, sha):
            obj = self.store.publish_file(local_path, key)
            if (obj.size, obj.sha256) != (size, sha):  # the store re-hashes what it wrote
                raise StoreError(f"{obj.uri}: stored bytes differ from {local_path} (sha256 {obj.sha256})")
        return key, size, sha

    def add_file(
        self, timestamp: str, interval: str, local_path: Path | str, rows: int, *, day: str | None = None,
        hashed: tuple[int, str] | None = None,
    ) -> PublishedFile:
        """Upload one file (the month's, or with `day` a daily file) to its immutable version key; `hashed` as
        `_upload`'s."""
        key, size, sha = self._upload(
            local_path,
            lambda sha: version_key(self.exchange, self.native_symbol, self.month, timestamp, interval, sha, day=day),
            hashed,
        )
        entry = PublishedFile(timestamp, interval, key, sha, int(rows), size, day)
        self.files[(timestamp, interval, day)] = entry
        self.on_step(f"uploaded {timestamp}/{interval}" + (f"/{day}" if day else ""))
        return entry

    def add_carry(self, timestamp: str, for_day: str, local_path: Path | str) -> PublishedCarry:
        """Upload the carry a day of this month hands to `for_day` (the next day) to its immutable key."""
        key, size, sha = self._upload(
            local_path,
            lambda sha: carry_version_key(self.exchange, self.native_symbol, self.month, timestamp, sha,
                                          for_day=for_day),
        )
        carry = PublishedCarry(for_day, timestamp, key, sha, size)
        self.carries[(for_day, timestamp)] = carry
        self.on_step(f"uploaded carry {timestamp}/{for_day}")
        return carry

    def keep(self, files: Sequence[PublishedFile]) -> list[PublishedFile]:
        """Carry files of the current entry into this publication after re-hashing them; a file an older index
        named by its stable key is copied to its version key first (stable keys are not immutable)."""
        kept = []
        for file in files:
            if not self.store.exists(file.key):
                raise StoreError(f"{self.store.uri(file.key)} is in the index but not in the store: rerun flow bars")
            size, sha = object_sha256(self.store, file.key)
            if (size, sha) != (file.size, file.sha256):
                raise StoreError(
                    f"{self.store.uri(file.key)} does not match the index (sha256 {sha}, expected {file.sha256}): "
                    "rerun flow bars"
                )
            if not is_version_key(file.key):
                target = version_key(
                    self.exchange, self.native_symbol, self.month, file.timestamp, file.interval, sha, day=file.day
                )
                self.store.copy_object(file.key, target)
                file = replace(file, key=target)
            self.files[(file.timestamp, file.interval, file.day)] = file
            kept.append(file)
        return kept

    def _carry_days_forward(self) -> None:
        """Keep the previous entry's days (files and carries) unless replaced, and close the month per variant:
        a (timestamp, interval) with a monthly file lists no days (the listing would give each bar twice), and a
        variant with monthly files keeps no carries."""
        monthly = {(t, i) for (t, i, day) in self.files if day is None}
        closed_variants = {t for t, _ in monthly}
        if self.previous is not None:
            for f in self.previous.files:
                if f.day is not None and f.day not in self.replaced_days:
                    self.files.setdefault((f.timestamp, f.interval, f.day), f)
            for c in self.previous.carries:
                if _day_before(c.for_day) not in self.replaced_days:
                    self.carries.setdefault((c.for_day, c.timestamp), c)
        for t, i, day in list(self.files):
            if day is not None and (t, i) in monthly:
                del self.files[(t, i, day)]
        for for_day, t in list(self.carries):
            if t in closed_variants:
                del self.carries[(for_day, t)]

    def commit(self, symbol: str) -> Committed:
        """Make the added and kept files the month's publication: one conditional write of the index entry.

        Then point the stable layout keys at the new bytes and delete versions whose retirement is due.
        """
        now = time.time()
        self._carry_days_forward()
        current = {f.key for f in self.files.values()} | {c.key for c in self.carries.values()}
        retiring: dict[str, float] = {}
        due: set[str] = set()
        if self.previous is not None:
            for old in self.previous.retiring:
                if old.retire_after <= now:
                    due.add(old.key)
                else:
                    retiring[old.key] = old.retire_after
            for old_key in self.previous.named_keys():
                if is_version_key(old_key) and old_key not in current:
                    retiring[old_key] = max(retiring.get(old_key, 0.0), now + self.retain_seconds)
        for key in current:
            retiring.pop(key, None)
            due.discard(key)
        entry = PublishedMonth(
            exchange=self.exchange, symbol=symbol, native_symbol=self.native_symbol, month=self.month,
            files=tuple(sorted(self.files.values(), key=lambda f: (f.timestamp, f.interval, f.day or ""))),
            retiring=tuple(RetiringObject(k, round(t, 3)) for k, t in sorted(retiring.items())),
            carries=tuple(sorted(self.carries.values(), key=lambda c: (c.for_day, c.timestamp))),
        )
        self.on_step("committing")
        self.lease.check()
        key = index_key(self.exchange, self.native_symbol, self.month)
        try:
            self.store.put_bytes_if(
                key, (canonical_json(entry.to_dict()) + "\n").encode(), tag=self.previous_tag,
                content_type="application/json",
            )
        except PreconditionFailedError as exc:
            raise PublicationConflictError(
                f"{self.lease.partition} was published by another writer while this one was publishing it; this "
                f"run's files were not committed ({exc})"
            ) from None
        self.on_step("committed")
        sync_stable_keys(self.store, entry, on_step=self.on_step)
        self._remove_stable_day_keys(entry)
        retired = self._retire(due, {*current, *retiring}, now)
        self.on_step("retired")
        return Committed(entry, self.store.uri(key), retired)

    def _remove_stable_day_keys(self, entry: PublishedMonth) -> None:
        """Delete the stable `flow/…/{YYYY-MM-DD}.parquet` keys of days the new entry no longer lists (closed by
        the monthly file, or invalidated): a direct reader of `flow/` would otherwise count their bars twice, or
        read bars computed from a superseded carry. No URL names a stable key (the index names versions).

        The days come from the previous entry and from every retiring version, so a writer killed between its
        commit and this step leaves nothing behind once the month is published again."""
        if self.previous is None:
            return
        listed = {stable_key(self.exchange, self.native_symbol, self.month, f) for f in entry.files}
        candidates = {stable_key(self.exchange, self.native_symbol, self.month, f)
                      for f in self.previous.files if f.day is not None}
        for old in (*self.previous.retiring, *entry.retiring):
            if (stable := self._stable_day_key_of(old.key)) is not None:
                candidates.add(stable)
        for key in sorted(candidates - listed):
            self.store.delete(key)

    def _stable_day_key_of(self, key: str) -> str | None:
        """The stable key of a daily file's version key (`…/{timestamp}/{interval}/{sha256}/{YYYY-MM-DD}.parquet`)."""
        prefix = month_versions_prefix(self.exchange, self.native_symbol, self.month)
        parts = key[len(prefix):].split("/") if key.startswith(prefix) else []
        if len(parts) != 4 or len(parts[3]) != len("YYYY-MM-DD.parquet"):
            return None
        timestamp, interval, _sha, name = parts
        return daily_flow_key(timestamp, self.exchange, interval, self.native_symbol, name.removesuffix(".parquet"))

    def _retire(self, due: set[str], named: set[str], now: float) -> tuple[str, ...]:
        """Delete versions whose retirement is due, and versions nobody names that are older than the retention
        (uploads of a writer that died before its commit). Only the lease holder does this."""
        doomed = set(due)
        for key in [
            *self.store.list(month_versions_prefix(self.exchange, self.native_symbol, self.month)),
            *self.store.list(month_carries_prefix(self.exchange, self.native_symbol, self.month)),
        ]:
            if key in named or key in doomed:
                continue
            with contextlib.suppress(ObjectNotFoundError):
                if self.store.modified_at(key) < now - self.retain_seconds:
                    doomed.add(key)
        for key in sorted(doomed):
            self.store.delete(key)
        return tuple(sorted(doomed))


def sync_stable_keys(store: ObjectStore, entry: PublishedMonth, *, on_step: StepHook | None = None) -> list[str]:
    """Point each stable layout key of the entry at its version's bytes; returns the keys that changed."""
    changed = []
    for file in entry.files:
        stable = stable_key(entry.exchange, entry.native_symbol, entry.month, file)
        if file.key != stable and not store.same_object(file.key, stable):
            store.copy_object(file.key, stable)
            changed.append(stable)
        if on_step is not None:
            on_step(f"stable {file.timestamp}/{file.interval}" + (f"/{file.day}" if file.day else ""))
    return changed


@contextlib.contextmanager
def month_publication(
    store: ObjectStore,
    exchange: str,
    native_symbol: str,
    month: str,
    *,
    retain_seconds: float | None = None,
    lease_seconds: float = LEASE_SECONDS,
    on_step: StepHook | None = None,
) -> Iterator[MonthPublication]:
    """Hold the partition's lease and read its current entry; add or keep files, then `commit`.

    Leaving the block without a commit changes nothing a reader of the index sees (uploaded versions that were
    never committed are deleted by a later publication once they are older than the retention).
    """
    step = on_step or (lambda _name: None)
    with partition_lease(store, exchange, native_symbol, month, lease_seconds=lease_seconds) as lease:
        step("leased")
        previous, tag = read_month_tagged(store, exchange, native_symbol, month)
        yield MonthPublication(
            store, exchange, native_symbol, month, lease, previous, tag,
            retention_seconds() if retain_seconds is None else retain_seconds, step,
        )


def _day_before(day: str) -> str:
    return (date.fromisoformat(day) - timedelta(days=1)).isoformat()
