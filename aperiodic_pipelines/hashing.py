"""File digests shared by the sources (what was downloaded) and the store (what was published)."""

from __future__ import annotations

import hashlib
from pathlib import Path

HASH_CHUNK = 1 << 20


def sha256_file(path: Path | str) -> tuple[int, str]:
    """Size in bytes and hex sha256 of a local file, read in chunks."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(HASH_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()
