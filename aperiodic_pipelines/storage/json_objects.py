"""Small JSON objects in the store (manifests, index entries, lineage sidecars), in one canonical form.

Canonical = sorted keys, no spaces, one trailing newline in files: the same value always gives the same bytes,
so manifests and sidecars are as deterministic as the parquet files they describe.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from aperiodic_pipelines.storage.base import ObjectStore, PublishedObject


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def publish_json(store: ObjectStore, value: Any, key: str) -> PublishedObject:
    """Replace the object at `key` whole with the canonical JSON of `value` (the store's atomic publish)."""
    with tempfile.TemporaryDirectory(prefix="aperiodic-json-") as tmp:
        path = Path(tmp) / Path(key).name
        path.write_text(canonical_json(value) + "\n")
        return store.publish_file(path, key, content_type="application/json")


def read_json(store: ObjectStore, key: str) -> Any:
    return json.loads(store.read_bytes(key))
