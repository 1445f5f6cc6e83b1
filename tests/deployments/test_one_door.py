"""Batch reaches Bentos through deployments' services only (version_bento_local), never the
BentoML integration or the runtime backends: the "one door to BentoML" rule, checked on the
source (a rule a test does not hold is broken by the next convenient import). Twenty lines of
ast instead of import-linter: one rule does not need a new dev dependency."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BEHIND_THE_DOOR = ("deployments.integrations", "deployments.runtime", "deployments.backends")


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_batch_imports_nothing_behind_the_deployments_services():
    sources = sorted((ROOT / "batch").rglob("*.py"))
    assert sources  # the walk found batch's modules
    offending = {
        f"{path.relative_to(ROOT)}: {name}"
        for path in sources
        for name in _imports(path)
        if name.startswith(BEHIND_THE_DOOR)
    }
    assert offending == set()
