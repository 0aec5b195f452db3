"""The layers hold (README "Architecture"): `lint-imports` (import-linter, contracts in pyproject.toml)
passes, and no two lensflow modules import each other, directly or through others inside one package."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT

PACKAGES = ["lensflow.cli", "lensflow.api", "lensflow.agents", "lensflow.streams", "lensflow.builders"]


def test_import_linter_contracts_are_kept():
    tool = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    assert tool, "lint-imports (import-linter) is part of the test extra"
    proc = subprocess.run([tool, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout


def test_no_two_modules_import_each_other():
    import grimp

    graph = grimp.build_graph(*PACKAGES, include_external_packages=False)
    pairs = sorted({tuple(sorted((a, b))) for a in graph.modules for b in graph.find_modules_directly_imported_by(a)
                    if a != b and a in graph.find_modules_directly_imported_by(b)})
    assert not pairs, f"modules importing each other: {pairs}"
    cycles = []
    for module in sorted(graph.modules):
        for other in graph.find_modules_directly_imported_by(module):
            if module in graph.find_downstream_modules(other) and graph.find_shortest_chain(other, module):
                cycles.append((module, other))
    # a chain back is a cycle whatever its length; report a few
    assert not cycles, f"import cycles (module -> imported, which leads back): {cycles[:10]}"
