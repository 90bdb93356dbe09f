"""What loading the definitions imports: every process that loads them (webserver, daemon, each run) pays for it.

dagster-aws/boto3 only with an S3 store, pandera (and the pandas it imports) only where something is validated,
matplotlib only where a month picture is drawn. Each case runs in a fresh interpreter.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("dagster_aws", "boto3", "pandera", "pandas", "matplotlib")


def _imported_after(code: str, **environ: str) -> set[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("APERIODIC_", "AWS_"))}
    env.update(PYTHONPATH=str(REPO), **environ)
    probe = f"{code}\nimport json, sys\nprint(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    done = subprocess.run([sys.executable, "-c", probe], env=env, cwd=REPO, capture_output=True, text=True,
                          check=True)
    return set(json.loads(done.stdout.strip().splitlines()[-1]))


def test_definitions_with_a_local_store_import_no_aws_validation_or_plotting_library(tmp_path: Path) -> None:
    loaded = _imported_after("import aperiodic_pipelines.defs.definitions", APERIODIC_STORE=str(tmp_path))
    assert loaded == set()


def test_definitions_with_an_s3_store_build_dagster_aws_s3_resource() -> None:
    code = (
        "from aperiodic_pipelines.defs.definitions import defs\n"
        "resource = defs.resources['store'].s3\n"
        "assert type(resource).__module__.startswith('dagster_aws'), type(resource)\n"
        "assert type(resource).__name__ == 'S3Resource', type(resource)"
    )
    loaded = _imported_after(code, APERIODIC_STORE="s3://bucket/prefix", AWS_ACCESS_KEY_ID="k",
                             AWS_SECRET_ACCESS_KEY="s")
    assert "dagster_aws" in loaded and "pandera" not in loaded


def test_validating_trades_imports_pandera_on_first_use() -> None:
    code = (
        "import aperiodic_pipelines.trades as trades\n"
        "import sys\n"
        "assert 'pandera' not in sys.modules\n"
        "from aperiodic_pipelines.synthetic import generate_tape\n"
        "tape = generate_tape('2024-01', 100)\n"
        "trades.validate_trades(tape)\n"
        "assert trades.CanonicalTrades.validate(tape, lazy=True).height == 100\n"
        "try:\n"
        "    trades.validate_trades(tape.reverse())\n"
        "except trades.InvalidTradesError as exc:\n"
        "    assert 'sorted' in str(exc), exc\n"
        "else:\n"
        "    raise AssertionError('unsorted trades passed')"
    )
    assert "pandera" in _imported_after(code)


def test_unknown_attribute_of_trades_module_is_an_attribute_error() -> None:
    import aperiodic_pipelines.trades as trades

    assert not hasattr(trades, "NoSuchModel")
    assert json.dumps(trades.CANONICAL_COLUMNS)  # the module's plain constants are there without pandera
