"""The Dagster instance the CLI and the demo use: DAGSTER_HOME, its `dagster.yaml`, and the project files.

A fresh `./.dagster_home` (DAGSTER_HOME unset) gets the project's `dagster.yaml`: from the current directory, else
the source tree, else the copy installed with the package (`aperiodic_pipelines/operator/dagster.yaml`), so an
installed package run from any directory gets the same instance settings as the source tree.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from aperiodic_pipelines.domain.errors import AperiodicError

if TYPE_CHECKING:
    from dagster import DagsterInstance

DEFAULT_DAGSTER_HOME = ".dagster_home"
DEFAULT_CODE_LOCATION = "aperiodic_pipelines"  # location_name in workspace.yaml
DEFINITIONS_MODULE = "aperiodic_pipelines.defs.definitions"  # the code location, installed or in the source tree
LAUNCHED_BY_TAG = "aperiodic/launched_by"
SOURCE_TREE = Path(__file__).resolve().parents[2]  # the checkout, when running from one
PACKAGED_FILES = ("dagster.yaml",)  # project files installed with the package (pyproject package-data)

Say = Callable[[str], None]


class RunSetupError(AperiodicError):
    """A problem the operator can fix before any run exists: a month outside what can be published, an unknown
    instrument, no loadable code location, an unreachable webserver or listing."""


def quiet(_message: str) -> None:
    pass


def project_file(name: str) -> Path | None:
    """A project file (`dagster.yaml`, `workspace.yaml`) from the current directory, else the source tree."""
    for base in (Path.cwd(), SOURCE_TREE):
        if (base / name).is_file():
            return base / name
    return None


def packaged_text(name: str) -> str:
    """A project file as installed with the package."""
    if name not in PACKAGED_FILES:
        raise ValueError(f"{name!r} is not installed with the package (installed: {', '.join(PACKAGED_FILES)})")
    return resources.files("aperiodic_pipelines.operator").joinpath(name).read_text()


def ensure_dagster_home(warn: Say = quiet) -> Path:
    """DAGSTER_HOME, or `./.dagster_home` when it is unset; either gets the project's dagster.yaml if it has none.

    A home without dagster.yaml would run on Dagster's bare defaults (no run queue limits, no run monitoring),
    and Dagster says so on every command; seeding it gives it the settings the project is tested with.
    """
    configured = os.environ.get("DAGSTER_HOME")
    home = Path(configured or DEFAULT_DAGSTER_HOME).expanduser().resolve()
    home.mkdir(parents=True, exist_ok=True)
    os.environ["DAGSTER_HOME"] = str(home)  # Dagster insists on an absolute path
    seeded = _seed_dagster_yaml(home)
    note = f", with {seeded}" if seeded else ""
    if configured:
        if seeded:
            warn(f"DAGSTER_HOME {home} had no dagster.yaml; wrote {seeded}")
        return home
    warn(f"DAGSTER_HOME is not set; using {home}{note}. See these runs in the UI with: {ui_command(home)}")
    return home


def _seed_dagster_yaml(home: Path) -> str:
    """Write the project's dagster.yaml into `home` unless it has one; returns where it came from ('' if kept)."""
    target = home / "dagster.yaml"
    if target.exists():
        return ""
    source = project_file("dagster.yaml")
    text = source.read_text() if source is not None else packaged_text("dagster.yaml")
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    partial.write_text(text)
    os.replace(partial, target)  # a concurrent reader sees no file or the whole file
    return str(source) if source is not None else "the dagster.yaml installed with the package"


def ui_command(home: Path) -> str:
    """The command that starts the UI and the daemons on `home`, as it runs from the current directory: `dg dev`
    needs a workspace file (it refuses a directory that is not a dg project); without the source tree the
    installed module is the code location."""
    workspace = project_file("workspace.yaml")
    if workspace is not None:
        shown = "workspace.yaml" if workspace.parent == Path.cwd() else str(workspace)
        return f"DAGSTER_HOME={home} dg dev -w {shown}"
    return f"DAGSTER_HOME={home} dagster dev -m {DEFINITIONS_MODULE}"


def get_instance(warn: Say = quiet) -> DagsterInstance:
    from dagster import DagsterInstance

    ensure_dagster_home(warn)
    return DagsterInstance.get()
