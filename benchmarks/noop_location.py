"""A benchmark-only code location: one partitioned job whose single op does nothing.

`benchmarks/backfill_bench.py --noop RUNS` backfills RUNS of its partitions to measure what the control plane
alone sustains (daemon, run storage, launcher, Redis for Celery), with the runs doing no work. Partitioned like
the project's flow jobs (dynamic keys, one run per partition, the in-process executor), so a run passes through
the same backfill daemon, queue, tag limits, launcher and run monitoring.
"""

from dagster import Definitions, DynamicPartitionsDefinition, in_process_executor, job, op

NOOP_KEYS = DynamicPartitionsDefinition(name="noop_keys")
NOOP_JOB = "noop_job"


@op
def nothing() -> None:
    """No work: the run's cost is the control plane's alone."""


@job(name=NOOP_JOB, partitions_def=NOOP_KEYS, executor_def=in_process_executor)
def noop_job() -> None:
    nothing()


defs = Definitions(jobs=[noop_job])
