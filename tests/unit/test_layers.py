"""The folder layout is the architecture: imports go one way (hypervisor <- adapter <- partitions
<- tools). A module may import from its own layer and the ones below it, never from above."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# bottom first; a package may import those at its own rank or lower
LAYERS = {"hypervisor": 0, "adapter": 1, "partitions": 2, "cluster": 3, "scripts": 4,
          "examples": 5}


def imported_packages(path: Path) -> set[tuple[str, int]]:
    """(top-level package, line) of every absolute import in `path` that names a layer,
    including imports inside functions (a lazy import is still a dependency)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found |= {(name.split(".")[0], node.lineno) for name in names
                  if name.split(".")[0] in LAYERS}
    return found


def upward_imports(root: Path = ROOT) -> list[str]:
    bad = []
    for package, rank in LAYERS.items():
        for path in sorted((root / package).rglob("*.py")):
            for imported, line in sorted(imported_packages(path)):
                if LAYERS[imported] > rank:
                    bad.append(f"{path.relative_to(root)}:{line} ({package}) imports "
                               f"{imported}, a higher layer")
    return bad


def test_no_import_goes_up_a_layer():
    assert upward_imports() == []


def test_the_check_sees_an_upward_import(tmp_path):
    """The rule can fail: a platform module importing a tool is caught, with file and line."""
    for package in LAYERS:
        (tmp_path / package).mkdir()
    (tmp_path / "hypervisor" / "bad.py").write_text(
        "import os\n\ndef f():\n    from scripts.cli import main\n")
    assert upward_imports(tmp_path) == [
        "hypervisor/bad.py:4 (hypervisor) imports scripts, a higher layer"]


@pytest.mark.parametrize("package", sorted(LAYERS))
def test_every_layer_exists(package):
    if package == "examples" and not (ROOT / package).exists():
        pytest.skip("no examples/ yet")
    assert (ROOT / package / "__init__.py").exists()
