"""The data flow is the import order: each package imports only the packages below it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "wav2brain"

FORBIDDEN: dict[str, tuple[str, ...]] = {
    "data": ("features", "simulation", "modeling", "encoding", "reports", "commands"),
    "features": ("simulation", "encoding", "reports", "commands"),
    "modeling": ("data", "features", "simulation", "encoding", "reports", "commands"),
    "encoding": ("simulation", "commands"),
}


def imported_packages(path: Path) -> set[str]:
    """First-level wav2brain subpackages that ``path`` imports (anywhere in the file)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "wav2brain" and len(parts) > 1:
                found.add(parts[1])
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_packages_import_only_what_lies_below_them(package):
    bad = {
        str(path.relative_to(PACKAGE)): sorted(imported_packages(path) & set(FORBIDDEN[package]))
        for path in (PACKAGE / package).rglob("*.py")
    }
    assert {name: pkgs for name, pkgs in bad.items() if pkgs} == {}


def test_the_check_sees_an_upward_import(tmp_path):
    """Negative control: a data module importing the simulator is caught."""
    module = tmp_path / "bad.py"
    module.write_text("def f():\n    from wav2brain.simulation.dataset import simulate_dataset\n")
    assert imported_packages(module) & set(FORBIDDEN["data"]) == {"simulation"}
