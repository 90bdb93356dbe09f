"""An S3 bucket (or a prefix inside one) as the object store.

Atomicity comes from S3 itself: a single PUT or a completed multipart upload becomes visible whole, so
readers see the old object or the new one, never a partial one. A failed multipart upload is aborted so
no orphaned parts stay billed.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import logging
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urlsplit

from botocore.exceptions import BotoCoreError, ClientError

from aperiodic_pipelines.atomic import atomic_write
from aperiodic_pipelines.domain.errors import StoreError
from aperiodic_pipelines.storage.base import (
    HASH_CHUNK,
    STALE_WRITE_SECONDS,
    ObjectNotFoundError,
    PreconditionFailedError,
    PublishedObject,
    check_key,
    check_publishable,
    sha256_file,
)

MIN_PART_SIZE = 5 * 1024 * 1024  # S3's minimum for every part but the last
DEFAULT_MULTIPART_THRESHOLD = 64 * 1024 * 1024
SHA256_METADATA = "sha256"  # stored as x-amz-meta-sha256 so readers can verify without downloading
_MISSING_CODES = {"404", "NoSuchKey", "NotFound"}
_CONFLICT_CODES = {"412", "PreconditionFailed", "409", "ConditionalRequestConflict"}
log = logging.getLogger(__name__)


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode("ascii")


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


class S3Store:
    """Objects live at `s3://{bucket}/{prefix}/{key}`. `client` is a boto3 S3 client."""

    def __init__(
        self,
        client: Any,
        bucket: str,
        prefix: str = "",
        *,
        multipart_threshold: int = DEFAULT_MULTIPART_THRESHOLD,
        part_size: int = 16 * 1024 * 1024,
        stale_after: float = STALE_WRITE_SECONDS,
    ) -> None:
        if not bucket:
            raise StoreError("S3Store needs a bucket name")
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.multipart_threshold = multipart_threshold
        self.part_size = max(part_size, MIN_PART_SIZE)
        self.stale_after = stale_after

    def __repr__(self) -> str:
        # Only where the data lives; never the client's credentials.
        endpoint = getattr(getattr(self.client, "meta", None), "endpoint_url", None)
        if endpoint and "@" in (netloc := urlsplit(endpoint).netloc):  # user:password@host
            endpoint = endpoint.replace(netloc, netloc.rsplit("@", 1)[1], 1)
        return f"S3Store(bucket={self.bucket!r}, prefix={self.prefix!r}, endpoint={endpoint!r})"

    def _object_key(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _fail(self, action: str, key: str, exc: Exception) -> StoreError:
        if isinstance(exc, ClientError):
            err = exc.response.get("Error", {})
            detail = f"{err.get('Code', '?')}: {err.get('Message', '')}".rstrip(": ")
        else:
            detail = f"{type(exc).__name__}: {exc}"
        return StoreError(f"S3 {action} {self.uri(key)} failed ({detail})")

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._object_key(key)}"

    def exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self._object_key(key))
        except ClientError as exc:
            if _error_code(exc) in _MISSING_CODES:
                return False
            raise self._fail("HEAD", key, exc) from None
        except BotoCoreError as exc:
            raise self._fail("HEAD", key, exc) from None
        return True

    def list(self, prefix: str = "") -> list[str]:
        """Keys (relative to the store's prefix) that start with `prefix`, sorted."""
        root = f"{self.prefix}/" if self.prefix else ""
        keys: list[str] = []
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=root + prefix
            ):
                keys.extend(obj["Key"][len(root) :] for obj in page.get("Contents", []))
        except (ClientError, BotoCoreError) as exc:
            raise StoreError(f"S3 LIST s3://{self.bucket}/{root}{prefix} failed ({exc})") from None
        return sorted(keys)

    def open_read(self, key: str) -> BinaryIO:
        """A streaming body; close it when done (it supports `with`)."""
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self._object_key(key))
        except ClientError as exc:
            if _error_code(exc) in _MISSING_CODES:
                raise ObjectNotFoundError(f"no object {self.uri(key)}") from None
            raise self._fail("GET", key, exc) from None
        except BotoCoreError as exc:
            raise self._fail("GET", key, exc) from None
        return response["Body"]

    def read_bytes(self, key: str) -> bytes:
        body = self.open_read(key)
        try:
            return body.read()
        finally:
            body.close()

    @contextlib.contextmanager
    def pinned(self, key: str) -> Iterator[Path]:
        """A private local copy of `key` for a step's several reads (a download into a temp dir), removed after."""
        with tempfile.TemporaryDirectory(prefix="aperiodic-pin-") as tmp:
            yield self.download(key, Path(tmp) / Path(key).name)

    def download(self, key: str, local_path: Path | str) -> Path:
        """Stream `key` into `local_path` via a temp file in the same directory, then rename (`atomic_write`)."""
        target = Path(local_path)
        body = self.open_read(key)
        try:
            with atomic_write(target) as out:
                while chunk := body.read(HASH_CHUNK):
                    out.write(chunk)
        except (ClientError, BotoCoreError) as exc:
            raise self._fail("GET", key, exc) from None
        finally:
            body.close()
        return target

    def publish_file(
        self, local_path: Path | str, key: str, *, content_type: str | None = None
    ) -> PublishedObject:
        """Upload `local_path` to `key` in one atomic step, then verify the stored size and sha256.

        Each request carries the bytes' SHA-256 checksum, which S3 checks on receipt (corrupted bytes are
        rejected, not stored); the sha256 is also kept as object metadata and compared after the upload.
        """
        source = Path(local_path)
        check_publishable(source, key)
        size, sha = sha256_file(source)
        extra: dict[str, Any] = {"Metadata": {SHA256_METADATA: sha}}
        if content_type:
            extra["ContentType"] = content_type
        try:
            if size <= self.multipart_threshold:
                with open(source, "rb") as fh:
                    data = fh.read()
                self.client.put_object(
                    Bucket=self.bucket,
                    Key=self._object_key(key),
                    Body=data,
                    ChecksumSHA256=_b64(hashlib.sha256(data).digest()),
                    **extra,
                )
            else:
                self._multipart_upload(source, key, extra)
            head = self.client.head_object(Bucket=self.bucket, Key=self._object_key(key))
        except (ClientError, BotoCoreError) as exc:
            raise self._fail("PUT", key, exc) from None
        stored_sha = head.get("Metadata", {}).get(SHA256_METADATA)
        if head.get("ContentLength") != size or stored_sha != sha:
            raise StoreError(
                f"{self.uri(key)}: stored object does not match {source} "
                f"(size {head.get('ContentLength')} vs {size}, sha256 {stored_sha} vs {sha})"
            )
        # A killed run's multipart upload stays (and is billed) until aborted: the next publish next to it
        # aborts those old enough to be a dead writer's. The object is published either way.
        directory = key.rsplit("/", 1)[0] + "/" if "/" in key else ""
        try:
            self.remove_stale_leftovers(directory)
        except StoreError as exc:
            log.warning("published %s, but could not clean stale uploads: %s", self.uri(key), exc)
        return PublishedObject(uri=self.uri(key), key=key, size=size, sha256=sha)

    def remove_stale_leftovers(
        self, prefix: str = "", *, older_than: float | None = None, now: datetime | None = None
    ) -> int:
        """Abort multipart uploads under `prefix` initiated more than `older_than` seconds ago; returns how many.

        Uploads younger than that may belong to a live writer and are left alone.
        """
        age = timedelta(seconds=self.stale_after if older_than is None else older_than)
        cutoff = (now or datetime.now(UTC)) - age
        root = f"{self.prefix}/" if self.prefix else ""
        aborted = 0
        try:
            for page in self.client.get_paginator("list_multipart_uploads").paginate(
                Bucket=self.bucket, Prefix=root + prefix
            ):
                for upload in page.get("Uploads", []):
                    if upload["Initiated"] < cutoff:
                        self.client.abort_multipart_upload(
                            Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                        )
                        aborted += 1
        except (ClientError, BotoCoreError) as exc:
            raise StoreError(f"S3 cleaning uploads under s3://{self.bucket}/{root}{prefix} failed ({exc})") from None
        return aborted

    def presigned_get_url(self, key: str, expires_in: int) -> str:
        """A GET URL for `key` that S3 honours for `expires_in` seconds, signed with this client's credentials."""
        try:
            return self.client.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": self._object_key(key)}, ExpiresIn=expires_in
            )
        except (ClientError, BotoCoreError) as exc:
            raise self._fail("PRESIGN", key, exc) from None

    def _multipart_upload(self, source: Path, key: str, extra: dict[str, Any]) -> None:
        object_key = self._object_key(key)
        upload_id = self.client.create_multipart_upload(
            Bucket=self.bucket, Key=object_key, ChecksumAlgorithm="SHA256", **extra
        )["UploadId"]
        try:
            parts = []
            with open(source, "rb") as fh:
                number = 1
                while chunk := fh.read(self.part_size):
                    part_sha = _b64(hashlib.sha256(chunk).digest())
                    response = self.client.upload_part(
                        Bucket=self.bucket,
                        Key=object_key,
                        UploadId=upload_id,
                        PartNumber=number,
                        Body=chunk,
                        ChecksumSHA256=part_sha,
                    )
                    parts.append({"PartNumber": number, "ETag": response["ETag"], "ChecksumSHA256": part_sha})
                    number += 1
            self.client.complete_multipart_upload(
                Bucket=self.bucket, Key=object_key, UploadId=upload_id, MultipartUpload={"Parts": parts}
            )
        except BaseException:
            # Nothing becomes visible until complete; aborting frees the parts already uploaded.
            with contextlib.suppress(ClientError, BotoCoreError):
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=object_key, UploadId=upload_id)
            raise

    def delete(self, key: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._object_key(key))
        except (ClientError, BotoCoreError) as exc:
            raise self._fail("DELETE", key, exc) from None

    # --- what whole publication needs (storage.publication): conditional writes, copies, ages -----------------

    def read_tagged(self, key: str) -> tuple[bytes, str] | None:
        """(bytes, ETag) of `key`, or None when absent; the ETag is what `put_bytes_if` compares."""
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self._object_key(key))
            try:
                return response["Body"].read(), response["ETag"]
            finally:
                response["Body"].close()
        except ClientError as exc:
            if _error_code(exc) in _MISSING_CODES:
                return None
            raise self._fail("GET", key, exc) from None
        except BotoCoreError as exc:
            raise self._fail("GET", key, exc) from None

    def put_bytes_if(self, key: str, data: bytes, *, tag: str | None, content_type: str | None = None) -> str:
        """One conditional PUT: replaces `key` only if its ETag is still `tag` (`If-Match`), or, with
        `tag=None`, only if it does not exist (`If-None-Match: *`); returns the new ETag.

        S3 decides the condition atomically, so of two writers that read the same ETag exactly one succeeds;
        the other gets `PreconditionFailedError` (S3 answers 412, or 409 when the two requests overlap).
        """
        condition = {"IfNoneMatch": "*"} if tag is None else {"IfMatch": tag}
        extra: dict[str, Any] = {"ContentType": content_type} if content_type else {}
        sha = hashlib.sha256(data)
        try:
            response = self.client.put_object(
                Bucket=self.bucket, Key=self._object_key(key), Body=data, ChecksumSHA256=_b64(sha.digest()),
                Metadata={SHA256_METADATA: sha.hexdigest()}, **condition, **extra,
            )
        except ClientError as exc:
            if _error_code(exc) in _CONFLICT_CODES:
                raise PreconditionFailedError(
                    f"{self.uri(key)} changed since it was read ({_error_code(exc)}: expected "
                    f"{'absent' if tag is None else 'ETag ' + tag})"
                ) from None
            if tag is not None and _error_code(exc) in _MISSING_CODES:
                raise PreconditionFailedError(f"{self.uri(key)} was removed since it was read") from None
            raise self._fail("conditional PUT", key, exc) from None
        except BotoCoreError as exc:
            raise self._fail("conditional PUT", key, exc) from None
        return response["ETag"]

    def delete_if(self, key: str, tag: str) -> bool:
        """Delete `key` only if its ETag is still `tag`; False when it changed or is gone (nothing deleted)."""
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._object_key(key), IfMatch=tag)
        except ClientError as exc:
            if _error_code(exc) in _CONFLICT_CODES | _MISSING_CODES:
                return False
            raise self._fail("conditional DELETE", key, exc) from None
        except BotoCoreError as exc:
            raise self._fail("conditional DELETE", key, exc) from None
        return True

    def _head(self, key: str) -> dict[str, Any]:
        try:
            return self.client.head_object(Bucket=self.bucket, Key=self._object_key(key))
        except ClientError as exc:
            if _error_code(exc) in _MISSING_CODES:
                raise ObjectNotFoundError(f"no object {self.uri(key)}") from None
            raise self._fail("HEAD", key, exc) from None
        except BotoCoreError as exc:
            raise self._fail("HEAD", key, exc) from None

    def stored_sha256(self, key: str) -> tuple[int, str | None]:
        """(size, sha256) as the object's metadata records it (None when it was written by another tool)."""
        head = self._head(key)
        return head["ContentLength"], head.get("Metadata", {}).get(SHA256_METADATA)

    def copy_object(self, source_key: str, target_key: str) -> PublishedObject:
        """Server-side copy (no bytes through this process), atomic like any PUT; verifies size and sha256."""
        size, sha = self.stored_sha256(source_key)
        try:
            self.client.copy_object(
                Bucket=self.bucket, Key=self._object_key(target_key), MetadataDirective="COPY",
                CopySource={"Bucket": self.bucket, "Key": self._object_key(source_key)},
            )
        except (ClientError, BotoCoreError) as exc:
            raise self._fail("COPY", target_key, exc) from None
        if self.stored_sha256(target_key) != (size, sha) or sha is None:
            raise StoreError(f"{self.uri(target_key)}: copy of {self.uri(source_key)} does not match it")
        return PublishedObject(uri=self.uri(target_key), key=target_key, size=size, sha256=sha)

    def same_object(self, key: str, other: str) -> bool:
        """True when both keys hold the same bytes by their recorded size and sha256 (no download)."""
        try:
            first, second = self.stored_sha256(key), self.stored_sha256(other)
        except ObjectNotFoundError:
            return False
        return first[1] is not None and first == second

    def modified_at(self, key: str) -> float:
        """When `key` was last written (epoch seconds, S3's LastModified)."""
        return self._head(key)["LastModified"].timestamp()
