"""The import graph: which layer may import which (read from the source), and what loading the definitions
imports at run time (every process that loads them, webserver, daemon and each run, pays for it).

Layers are the package's top-level modules and packages. The rules (`ALLOWED`, `test_layers_import_only_what_
their_rules_allow`):
- `domain` imports nothing else of the package;
- `trades` (the canonical trades schema) and `hashing` (file digests) are shared leaves: they import only the
  domain, and sources, flow and storage may use them;
- `sources`, `flow`, `storage` import only the domain (and the shared leaves);
- `api` imports only the domain and storage;
- `defs` imports the layers it wires (domain, sources, flow, storage, the leaves), never the API or the operator's
  code;
- nothing but `defs`, `operator`, `cli` and `demo` imports Dagster, and only `operator.submission` and
  `operator.coordinator` and the launchers and worker (`operator.launchers`, `operator.celery_launcher`,
  `operator.worker`) import Dagster's private `dagster._core` / `dagster._daemon`;
- no production layer imports the demo's parts (`demo`, `mirror`, `synthetic`).
`KNOWN_VIOLATIONS` lists the imports that break a rule today, each with who removes it; an entry that no longer
occurs fails the test too, so the list only shrinks.

At run time: dagster-aws/boto3 only with an S3 store, pandera (and the pandas it imports) only where something is
validated, matplotlib only where a month picture is drawn. Each case runs in a fresh interpreter.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("dagster_aws", "boto3", "pandera", "pandas", "matplotlib")
PACKAGE = "aperiodic_pipelines"

SHARED_LEAVES = {"trades", "hashing", "atomic", "root"}  # root: the package's __init__; atomic: temp file + os.replace
# Package layers each constrained layer may import (besides itself); layers not listed are the top (cli, demo,
# runs, operator) or the demo's support (mirror, synthetic), constrained only by the Dagster and demo rules.
ALLOWED: dict[str, set[str]] = {
    "domain": set(),
    "root": set(),
    "trades": {"domain"},
    "hashing": {"domain"},
    "sources": {"domain", *SHARED_LEAVES},
    "flow": {"domain", *SHARED_LEAVES},
    "storage": {"domain", *SHARED_LEAVES},
    "api": {"domain", "storage", *SHARED_LEAVES},
    "defs": {"domain", "sources", "flow", "storage", *SHARED_LEAVES},
}
DAGSTER_LAYERS = {"defs", "operator", "cli", "demo"}
DAGSTER_PRIVATE = ("dagster._core", "dagster._daemon")
# Run submission, and the plug-ins Dagster loads by class (coordinator, launchers) or runs (the Celery worker):
# subclassing a run launcher or coordinator has no public import path in Dagster 1.13.
DAGSTER_PRIVATE_MODULES = {
    f"{PACKAGE}.operator.{name}" for name in ("submission", "coordinator", "launchers", "celery_launcher", "worker")
}
DEMO_PARTS = {"demo", "mirror", "synthetic"}
PRODUCTION = {"domain", "trades", "hashing", "sources", "flow", "storage", "api", "defs", "operator"}

# (importing module, imported module) → why it is still there and who removes it.
KNOWN_VIOLATIONS: dict[tuple[str, str], str] = {
}


@dataclass(frozen=True)
class Import:
    module: str  # the importing module, e.g. aperiodic_pipelines.defs.raw
    imported: str  # e.g. aperiodic_pipelines.sources or dagster._core.workspace.context
    line: int

    @property
    def layer(self) -> str:
        return layer_of(self.module)


def layer_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "root"


def package_imports() -> list[Import]:
    """Every import statement of the package's source (function-level and TYPE_CHECKING ones too)."""
    found = []
    for path in sorted((REPO / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        module = ".".join(parts[:-1] if is_package else parts)
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                found += [Import(module, alias.name, node.lineno) for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: resolve against the importing module's package
                    base = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
                    found.append(Import(module, ".".join([*base, *([node.module] if node.module else [])]), node.lineno))
                else:
                    found.append(Import(module, node.module or "", node.lineno))
    return found


def _is_dagster(name: str) -> bool:
    return name.split(".")[0] == "dagster" or name.startswith("dagster_")


def rule_broken(imp: Import) -> str | None:
    """The rule `imp` breaks, or None."""
    if imp.imported.split(".")[0] == PACKAGE:
        target = layer_of(imp.imported)
        if target == imp.layer:
            return None
        if imp.layer in ALLOWED and target not in ALLOWED[imp.layer]:
            return f"{imp.layer} may import only {', '.join(sorted(ALLOWED[imp.layer])) or 'nothing of the package'}"
        if imp.layer in PRODUCTION and target in DEMO_PARTS:
            return "production code does not import the demo's parts"
        return None
    if _is_dagster(imp.imported):
        if imp.imported.startswith(DAGSTER_PRIVATE) and imp.module not in DAGSTER_PRIVATE_MODULES:
            return f"only {', '.join(sorted(DAGSTER_PRIVATE_MODULES))} import {' / '.join(DAGSTER_PRIVATE)}"
        if imp.layer not in DAGSTER_LAYERS:
            return f"only {', '.join(sorted(DAGSTER_LAYERS))} import Dagster"
    return None


def _known(imp: Import) -> str | None:
    for (module, imported), reason in KNOWN_VIOLATIONS.items():
        if imp.module == module and (imp.imported == imported or imp.imported.startswith(imported + ".")):
            return reason
    return None


def layer_table(imports: list[Import]) -> str:
    """Which layer imports which: one row per layer, the package layers it imports and whether it uses Dagster."""
    edges: dict[str, set[str]] = defaultdict(set)
    dagster: dict[str, set[str]] = defaultdict(set)
    for imp in imports:
        if imp.imported.split(".")[0] == PACKAGE and layer_of(imp.imported) != imp.layer:
            edges[imp.layer].add(layer_of(imp.imported))
        elif _is_dagster(imp.imported):
            dagster[imp.layer].add("private" if imp.imported.startswith(DAGSTER_PRIVATE) else "public")
        edges[imp.layer]  # noqa: B018 - every layer gets a row
    rows = [f"{'layer':<10} {'imports':<52} dagster"]
    for layer in sorted(edges):
        rows.append(f"{layer:<10} {', '.join(sorted(edges[layer])) or '-':<52} {'+'.join(sorted(dagster[layer])) or '-'}")
    return "\n".join(rows)


def test_layers_import_only_what_their_rules_allow() -> None:
    imports = package_imports()
    assert {layer_of(i.module) for i in imports} >= {"domain", "sources", "flow", "storage", "api", "defs"}
    broken = [(imp, rule) for imp in imports if (rule := rule_broken(imp))]
    unexpected = [f"{imp.module}:{imp.line} imports {imp.imported}: {rule}" for imp, rule in broken if not _known(imp)]
    still_there = {(imp.module, known) for imp, _ in broken for known in [imp.imported] if _known(imp)}
    stale = [
        f"{module} → {imported} ({reason}): no longer imported, remove it from KNOWN_VIOLATIONS"
        for (module, imported), reason in KNOWN_VIOLATIONS.items()
        if not any(m == module and (i == imported or i.startswith(imported + ".")) for m, i in still_there)
    ]
    assert not unexpected and not stale, "\n".join(["", *unexpected, *stale, "", layer_table(imports)])


def test_the_rules_catch_what_they_are_about() -> None:
    """The checker itself: each rule fires on an import that breaks it and stays quiet on one that does not."""
    def check(module: str, imported: str) -> str | None:
        return rule_broken(Import(f"{PACKAGE}.{module}", imported, 1))

    assert "domain may import only nothing" in check("domain.months", f"{PACKAGE}.storage")
    assert check("sources.okx", f"{PACKAGE}.trades") is None and check("flow.grid", f"{PACKAGE}.domain") is None
    assert "storage may import only" in check("storage.parquet", f"{PACKAGE}.flow.grid")
    assert "api may import only" in check("api.app", f"{PACKAGE}.sources")
    assert check("api.app", f"{PACKAGE}.storage.index") is None
    assert "import Dagster" in check("flow.engine", "dagster")
    assert "import Dagster" in check("api.app", "dagster_graphql")
    assert check("defs.raw", "dagster") is None and check("operator.registry", "dagster") is None
    assert "dagster._core" in check("operator.registry", "dagster._core.workspace.context")
    assert check("operator.submission", "dagster._daemon.controller") is None
    assert check("operator.coordinator", "dagster._core.run_coordinator") is None
    assert "defs may import only" in check("defs.raw", f"{PACKAGE}.mirror.http")
    assert "defs may import only" in check("defs.raw", f"{PACKAGE}.operator.registry")
    assert "demo's parts" in check("operator.registry", f"{PACKAGE}.synthetic")
    table = layer_table([Import(f"{PACKAGE}.defs.raw", f"{PACKAGE}.sources", 1), Import(f"{PACKAGE}.defs.raw", "dagster", 2)])
    assert table.splitlines()[1].split() == ["defs", "sources", "public"]


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
