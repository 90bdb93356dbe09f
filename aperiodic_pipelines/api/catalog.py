"""What is published, from the store's index (`storage.index`), cached in memory.

Each instrument's months are read once (one listing of its index prefix, one small read per month) and
kept for `refresh_seconds`; the first request after that reloads them. A month published meanwhile is
therefore listed at most `refresh_seconds` later (`APERIODIC_INDEX_REFRESH_SECONDS`, default 30; 0 reads
the index on every request). No request ever lists the `flow/` tree.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TypeVar

from aperiodic_pipelines.domain.errors import SymbolError
from aperiodic_pipelines.domain.symbols import to_atlas
from aperiodic_pipelines.storage.base import ObjectStore
from aperiodic_pipelines.storage.index import PublishedMonth, list_indexed_symbols, list_published_months

T = TypeVar("T")


class _Entry:
    __slots__ = ("loaded_at", "lock", "value")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.loaded_at = float("-inf")
        self.value: object = None


class Catalog:
    def __init__(self, store: ObjectStore, refresh_seconds: float = 30.0) -> None:
        self.store = store
        self.refresh_seconds = refresh_seconds
        self._entries: dict[tuple[str, ...], _Entry] = {}
        self._entries_lock = threading.Lock()

    def _entry(self, key: tuple[str, ...]) -> _Entry:
        entry = self._entries.get(key)
        if entry is None:
            with self._entries_lock:
                entry = self._entries.setdefault(key, _Entry())
        return entry

    def _fresh(self, entry: _Entry) -> bool:
        return time.monotonic() - entry.loaded_at < self.refresh_seconds

    def cached(self, key: tuple[str, ...]) -> object | None:
        """The cached value when still fresh, else None (then call `load`, off the event loop)."""
        entry = self._entries.get(key)
        return entry.value if entry is not None and self._fresh(entry) else None

    def _load(self, key: tuple[str, ...], read: Callable[[], T]) -> T:
        entry = self._entry(key)
        with entry.lock:  # one reader per key; the others wait and take its result
            if not self._fresh(entry):
                entry.value = read()
                entry.loaded_at = time.monotonic()
            return entry.value  # type: ignore[return-value]

    def load_months(self, exchange: str, native_symbol: str) -> dict[str, PublishedMonth]:
        """`{YYYY-MM: PublishedMonth}` of one instrument (blocking: may read the store)."""
        return self._load(
            ("months", exchange, native_symbol),
            lambda: {m.month: m for m in list_published_months(self.store, exchange, native_symbol)},
        )

    def load_symbols(self, exchange: str) -> list[str]:
        """Atlas symbols of `exchange` with at least one published file (blocking: may read the store)."""

        def read() -> list[str]:
            symbols = []
            for native in list_indexed_symbols(self.store, exchange):
                months = self.load_months(exchange, native)
                if any(m.files for m in months.values()):
                    try:
                        symbols.append(to_atlas(exchange, native))
                    except SymbolError:  # published under an id the symbology no longer maps: not servable
                        continue
            return sorted(symbols)

        return self._load(("symbols", exchange), read)
