"""The operator's package: what the CLI and the demo do to a Dagster instance.

- `instance`: DAGSTER_HOME set-up (a fresh home gets the project's `dagster.yaml`, from the source tree or the
  installed package) and `get_instance`.
- `coordinator`: `ExchangeTaggingRunCoordinator`, the run coordinator `dagster.yaml` configures.
- `registry`: instruments (resolve, check against the exchange's universe, register with their first month, list,
  remove) and the check of a month request before any run exists.
- `submission`: runs created from the code location and submitted to the instance, waited for with a deadline,
  and their failures summarised. The only module that uses Dagster's private API (`dagster._core`,
  `dagster._daemon`: creating a run from a code location has no public call); a test holds that.
- `outcomes`: what happened in a run, in short lines (the failing step's own error, failed checks, metadata).
- `backfill`: backfills submitted to a running webserver through its GraphQL API.
- `launchers`: run launchers whose workers run monitoring can health-check (the default one, and Celery's in
  `celery_launcher`); `worker`: `aperiodic-pipelines worker`, a Celery worker that executes whole runs
  (deploy/celery, docs/deploy.md). Run launchers are Dagster's extension point: they use its private launcher
  types as `submission` does.
- `pg_storage`: `PooledPostgresStorage`, Dagster's PostgreSQL storage with a connection pool in every process
  (the PostgreSQL instance files' `storage: custom:`). An instance storage is an extension point too: it swaps
  the storages' private engines.

Nothing here is imported by the definitions except the coordinator, the launcher and the storage (through
`dagster.yaml`).
"""
