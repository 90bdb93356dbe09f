"""`PooledPostgresStorage`: Dagster's PostgreSQL storage with a connection pool in every process.

dagster-postgres 0.29 opens a new PostgreSQL connection for every storage call (SQLAlchemy's `NullPool`) in every
process but the webserver: each event a run writes, each pass of the daemon's run queue. Each connection costs
PostgreSQL a backend process (fork, authentication, catalog caches) and the caller a TCP and auth round trip; in
the control-plane benchmark (`benchmarks/backfill_bench.py --noop`) PostgreSQL was the busiest process. Dagster
offers no setting for it outside the webserver (`dagster-webserver --db-pool-max-overflow`), so this storage keeps
up to `pool_size` idle connections per storage (runs, events, schedules) and process, and opens up to
`max_overflow` more under concurrency (the daemon's threads).

Configured as `storage: custom:` in `deploy/celery/dagster.yaml` and `dagster.postgres.yaml`; the instance
reference Dagster hands to code servers and run workers names this class, so they pool too. Uses dagster-postgres'
storages' `_engine` attribute (no public way to set their engine's pool).
"""

from __future__ import annotations

import os
import weakref
from typing import TYPE_CHECKING, Any

from dagster import Field, IntSource
from dagster_postgres import DagsterPostgresStorage
from dagster_postgres.event_log import PostgresEventLogStorage
from dagster_postgres.run_storage import PostgresRunStorage
from dagster_postgres.schedule_storage import PostgresScheduleStorage
from dagster_postgres.utils import create_pg_engine, get_token_provider_from_config, pg_url_from_config
from sqlalchemy.engine import Engine

if TYPE_CHECKING:
    from dagster._serdes import ConfigurableClassData

POOL_SIZE = 2
MAX_OVERFLOW = 8
POOL_RECYCLE_S = 3600  # PostgreSQL or a proxy may drop idle connections; pre-ping catches the rest


# Every pooled engine of this process: a forked child (a Celery pool process) must open its own connections, never
# use its parent's sockets (SQLAlchemy's advice: dispose(close=False) in the child).
_ENGINES: weakref.WeakSet[Engine] = weakref.WeakSet()
os.register_at_fork(after_in_child=lambda: [engine.dispose(close=False) for engine in list(_ENGINES)])


def _pooled_engine(storage: Any, pool: dict[str, int]) -> None:
    """Replace the storage's per-call engine by a pooled one."""
    storage._engine.dispose()
    storage._engine = create_pg_engine(
        storage.postgres_url, storage._token_provider, isolation_level="AUTOCOMMIT", pool_pre_ping=True,
        pool_size=pool["pool_size"], max_overflow=pool["max_overflow"], pool_recycle=pool["pool_recycle"],
    )
    _ENGINES.add(storage._engine)


class _ClosesPool:
    _engine: Engine

    def dispose(self) -> None:
        super().dispose()  # type: ignore[misc]
        self._engine.dispose()  # the pool's idle connections, when the instance is closed


class PooledRunStorage(_ClosesPool, PostgresRunStorage):
    pass


class PooledEventLogStorage(_ClosesPool, PostgresEventLogStorage):
    pass


class PooledScheduleStorage(_ClosesPool, PostgresScheduleStorage):
    pass


class PooledPostgresStorage(DagsterPostgresStorage):
    """Dagster's PostgreSQL storage (the same tables and configuration) with pooled connections."""

    def __init__(
        self,
        postgres_url: str,
        should_autocreate_tables: bool = True,
        inst_data: ConfigurableClassData | None = None,
        token_provider: Any = None,
        pool_size: int = POOL_SIZE,
        max_overflow: int = MAX_OVERFLOW,
        pool_recycle: int = POOL_RECYCLE_S,
    ) -> None:
        self.postgres_url = postgres_url
        self.should_autocreate_tables = should_autocreate_tables
        self._inst_data = inst_data
        pool = {"pool_size": pool_size, "max_overflow": max_overflow, "pool_recycle": pool_recycle}
        storages = []
        for kind in (PooledRunStorage, PooledEventLogStorage, PooledScheduleStorage):
            storage = kind(postgres_url, should_autocreate_tables, token_provider=token_provider)
            _pooled_engine(storage, pool)
            storages.append(storage)
        self._run_storage, self._event_log_storage, self._schedule_storage = storages
        super(DagsterPostgresStorage, self).__init__()

    @classmethod
    def config_type(cls) -> dict:
        return {
            **DagsterPostgresStorage.config_type(),
            "pool_size": Field(IntSource, is_required=False, default_value=POOL_SIZE,
                               description="idle connections kept per storage (runs, events, schedules) and process"),
            "max_overflow": Field(IntSource, is_required=False, default_value=MAX_OVERFLOW,
                                  description="connections opened beyond pool_size under concurrency"),
            "pool_recycle": Field(IntSource, is_required=False, default_value=POOL_RECYCLE_S,
                                  description="seconds after which a pooled connection is replaced"),
        }

    @classmethod
    def from_config_value(cls, inst_data: ConfigurableClassData | None, config_value: Any) -> PooledPostgresStorage:
        return cls(
            inst_data=inst_data,
            postgres_url=pg_url_from_config(config_value),
            should_autocreate_tables=config_value.get("should_autocreate_tables", True),
            token_provider=get_token_provider_from_config(config_value),
            pool_size=config_value["pool_size"],
            max_overflow=config_value["max_overflow"],
            pool_recycle=config_value["pool_recycle"],
        )

    def dispose(self) -> None:
        for storage in (self._run_storage, self._event_log_storage, self._schedule_storage):
            storage.dispose()
