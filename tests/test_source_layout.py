"""The sources package's shape (issue 14): Hyperliquid's package face is short and its modules never import the
registry or the package back; no source module reads an `APERIODIC_*` variable itself (domain.settings does)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import aperiodic_pipelines.sources as sources_package

SOURCES = Path(sources_package.__file__).parent
HYPERLIQUID = SOURCES / "hyperliquid"


def _imported_modules(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def test_no_hyperliquid_module_imports_the_registry_or_its_package_back() -> None:
    for path in sorted(HYPERLIQUID.glob("*.py")):
        back = {m for m in _imported_modules(path)
                if m in ("aperiodic_pipelines.sources", "aperiodic_pipelines.sources.hyperliquid")}
        assert not back, f"{path.name} imports {back}"


def test_the_hyperliquid_package_is_a_short_face() -> None:
    face = (HYPERLIQUID / "__init__.py").read_text()
    tree = ast.parse(face)
    assert len(face.splitlines()) <= 80
    assert not any(isinstance(node, (ast.FunctionDef, ast.ClassDef)) for node in tree.body)
    from aperiodic_pipelines.sources import hyperliquid

    for name in hyperliquid.__all__:  # every public name is importable from the package, as defs and tests do
        assert getattr(hyperliquid, name) is not None, name
    assert hyperliquid.prepare_month.__module__ == "aperiodic_pipelines.sources.hyperliquid.source"


def test_no_source_module_reads_aperiodic_variables() -> None:
    reads = re.compile(r"(environ|getenv)[^\n]*APERIODIC_")
    for path in sorted(SOURCES.rglob("*.py")):
        assert not reads.search(path.read_text()), f"{path.relative_to(SOURCES)} reads an APERIODIC_* variable"


def test_the_registry_imports_a_source_only_when_asked(tmp_path: Path) -> None:
    import subprocess
    import sys

    code = ("import sys, aperiodic_pipelines.sources as s; "
            "print(any(m.startswith('aperiodic_pipelines.sources.') for m in sys.modules)); "
            "s.source_fetch_month('okx-perps'); print('aperiodic_pipelines.sources.okx' in sys.modules, "
            "'aperiodic_pipelines.sources.hyperliquid' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path,
                          env={"PYTHONPATH": str(SOURCES.parents[1]), "PATH": "/usr/bin:/bin"})
    assert done.stdout.split() == ["False", "True", "False"]
