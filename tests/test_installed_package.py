"""The package as a user installs it: a wheel in a fresh venv, run from a directory that is not the source tree.

No `workspace.yaml` and no `dagster.yaml` are at hand there: the CLI loads the code location from the installed
module `aperiodic_pipelines.defs.definitions`, and the fresh `./.dagster_home` gets the `dagster.yaml` installed
with the package. The instrument is registered against the Binance listing served on 127.0.0.1, and a month is
materialised from the local archive mirror into a local store.

The venv reuses the dependencies of the interpreter running the tests (a `.pth` line naming its site-packages,
which adds the directory without running its `.pth` files, so the editable install of the source tree stays out);
the package itself comes only from the wheel.
"""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

from aperiodic_pipelines.domain.intervals import INTERVALS
from aperiodic_pipelines.mirror.http import ArchiveMirror
from aperiodic_pipelines.mirror.listings import ListingServer
from aperiodic_pipelines.storage import LocalStore, flow_key
from tests.binance_stage import write_binance_months

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
MONTH = "2024-01"


def _run(argv: list[str], *, cwd: Path, env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess:
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{argv}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv with the project installed from its wheel; returns the venv's bin directory."""
    build = tmp_path_factory.mktemp("wheel")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    # Built from a copy: setuptools writes build/ and *.egg-info into the tree it builds.
    source = build / "source"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "data", ".dagster_home", "__pycache__", "*.egg-info", ".pytest_cache"))
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(build), str(source)], cwd=build, env=env)
    (wheel,) = build.glob("aperiodic_pipelines-*.whl")
    venv = build / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], cwd=build, env=env)
    (venv_site,) = venv.glob("lib/python*/site-packages")
    (venv_site / "_dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    _run([str(venv / "bin/python"), "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)],
         cwd=build, env=env)
    return venv / "bin"


def test_the_installed_package_registers_and_materialises_from_any_directory(
    installed: Path, tmp_path: Path
) -> None:
    archive = tmp_path / "archive"
    trade_counts = write_binance_months(archive, (MONTH,))
    workdir = tmp_path / "anywhere"
    workdir.mkdir()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("APERIODIC_", "AWS_", "DAGSTER_")) and k != "PYTHONPATH"}
    with ArchiveMirror(archive) as mirror, ListingServer(archive) as listing:
        env.update(
            APERIODIC_STORE=str(tmp_path / "store"),
            APERIODIC_CACHE_DIR=str(tmp_path / "cache"),
            APERIODIC_BINANCE_URL=mirror.url,
            APERIODIC_BINANCE_LISTING_URL=listing.url,
        )
        where = _run([str(installed / "python"), "-c", "import aperiodic_pipelines; print(aperiodic_pipelines.__file__)"],
                     cwd=workdir, env=env).stdout.strip()
        assert where.startswith(str(installed.parent)), where  # the wheel's copy, not the source tree

        added = _run([str(installed / "aperiodic-pipelines"), "instruments", "add", "--exchange", "binance-futures",
                      "--symbol", "BTCUSDT"], cwd=workdir, env=env)
        assert f"added: binance-futures BTCUSDT (perpetual-BTC-USDT:USDT) in binance_futures_instruments, from {MONTH}" \
            in added.stdout
        assert "with the dagster.yaml installed with the package" in added.stderr
        home = workdir / ".dagster_home"
        assert f"DAGSTER_HOME={home} dagster dev -m aperiodic_pipelines.defs.definitions" in added.stderr

        done = _run([str(installed / "aperiodic-pipelines"), "materialize", "--exchange", "binance-futures",
                     "--symbol", "BTCUSDT", "--month", MONTH, "--log-level", "WARNING"], cwd=workdir, env=env)
        assert f"for binance-futures BTCUSDT {MONTH} succeeded" in done.stdout, done.stderr[-3000:]

    assert "module: aperiodic_pipelines.operator.coordinator" in (home / "dagster.yaml").read_text()
    store = LocalStore(tmp_path / "store")
    published = set(store.list("flow/"))
    for interval in INTERVALS:
        assert flow_key("exchange", "binance-futures", interval, "BTCUSDT", MONTH) in published
    assert trade_counts[MONTH] > 0
