"""Ephemeral Dagster instances for tests, disposed without leaving process-wide state behind."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from dagster import DagsterInstance


@contextmanager
def ephemeral_instance() -> Iterator[DagsterInstance]:
    """An in-memory instance, disposed at the end.

    Not `with DagsterInstance.ephemeral()`: in Dagster 1.13 `__enter__` makes the instance's defs-state storage
    the process-wide current one and `__exit__` never resets it, so every later `Definitions` resolution of the
    test session (e.g. `dagster.materialize`) reaches for the disposed instance and fails with "Attempted to
    resolve undefined DagsterInstance weakref".
    """
    instance = DagsterInstance.ephemeral()
    try:
        yield instance
    finally:
        instance.dispose()
