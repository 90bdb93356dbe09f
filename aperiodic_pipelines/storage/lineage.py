"""Lineage sidecars: the source list of a flow-bar file too long for its footer (spec §4, more than 32 objects).

`lineage/sources/{sha256}.json` holds the canonical JSON of the list (no trailing newline), so the bytes hash
to the name and to the `aperiodic.sources_sha256` the footer records. Content-addressed: written once, never
replaced, shared by every file (all intervals, both variants, reruns) built from the same sources.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

from aperiodic_pipelines.domain.errors import StoreError
from aperiodic_pipelines.storage.base import ObjectStore
from aperiodic_pipelines.storage.json_objects import canonical_json
from aperiodic_pipelines.storage.parquet import INLINE_SOURCES_MAX, lineage_key, sources_digest


def publish_sources_lineage(store: ObjectStore, sources: Iterable[Mapping[str, object]]) -> str | None:
    """Publish the sidecar a footer will name (before the files that name it); its key, or None when the list
    is short enough to stay inline."""
    objects = [dict(s) for s in sources]
    if len(objects) <= INLINE_SOURCES_MAX:
        return None
    key = lineage_key(sources_digest(objects))
    if not store.exists(key):  # same name, same bytes: nothing to do when present
        with tempfile.TemporaryDirectory(prefix="aperiodic-lineage-") as tmp:
            path = Path(tmp) / "sources.json"
            path.write_text(canonical_json(objects))
            store.publish_file(path, key, content_type="application/json")
    return key


def read_sources_lineage(store: ObjectStore, metadata: Mapping[str, str]) -> list[dict[str, object]]:
    """The source objects a file's footer describes: inline, or from the sidecar it names (digest checked)."""
    if "aperiodic.sources" in metadata:
        return json.loads(metadata["aperiodic.sources"])
    key, digest = metadata["aperiodic.sources_key"], metadata["aperiodic.sources_sha256"]
    data = store.read_bytes(key)
    if hashlib.sha256(data).hexdigest() != digest:
        raise StoreError(f"{store.uri(key)} does not hash to the digest the footer records ({digest})")
    return json.loads(data)
