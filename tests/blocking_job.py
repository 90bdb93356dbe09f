"""A test-only code location: one job whose run blocks until the test opens a gate.

Lets the dead-worker tests hold a run in STARTED for as long as they need, kill its worker at a chosen moment
and check what Dagster does with the run, the retry and the queue, without depending on the data pipeline.
The op records its pid (`<gate_dir>/<name>.<run_id>.pid`) and waits for `<gate_dir>/open`, at most
GATE_TIMEOUT_S.
"""

import os
import time
from pathlib import Path

import dagster as dg

GATE_TIMEOUT_S = 600


@dg.op(config_schema={"gate_dir": str, "name": str})
def wait_for_gate(context: dg.OpExecutionContext) -> None:
    gate = Path(context.op_config["gate_dir"])
    (gate / f"{context.op_config['name']}.{context.run_id}.pid").write_text(str(os.getpid()))
    deadline = time.monotonic() + GATE_TIMEOUT_S
    while not (gate / "open").exists():
        if time.monotonic() > deadline:
            raise RuntimeError(f"the gate {gate} did not open within {GATE_TIMEOUT_S} s")
        time.sleep(0.2)


@dg.job(executor_def=dg.in_process_executor)
def blocking_job() -> None:
    wait_for_gate()


defs = dg.Definitions(jobs=[blocking_job])
