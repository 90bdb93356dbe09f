"""The README and the docs link only files inside the repository, and every such link resolves."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve_inside_the_repository(document: Path) -> None:
    targets = [t for t in LINK.findall(document.read_text()) if not re.match(r"^[a-z]+://|^#|^mailto:", t)]
    for target in targets:
        resolved = (document.parent / target.split("#", 1)[0]).resolve()
        assert resolved.is_relative_to(ROOT), f"{document.name} links {target}, outside the repository"
        assert resolved.exists(), f"{document.name} links {target}, which does not exist"


def test_spec_copy_is_the_contract() -> None:
    spec = (ROOT / "docs" / "spec.md").read_text()
    assert "## 5. Delivery API" in spec and "without a time zone" in spec
    shared = ROOT.parent / "shared" / "spec" / "flow-bars.md"
    if shared.exists():  # beside a checkout that has the shared contract, the copy must be in step with it
        assert spec == shared.read_text(), "docs/spec.md is out of step with ../shared/spec/flow-bars.md"
