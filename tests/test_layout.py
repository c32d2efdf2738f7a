"""The layout promises: mrf_core is a library without Gadgetron (or application) imports, and the README's
layout section names every package and module of the tree."""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import mrf_core

ROOT = Path(__file__).resolve().parents[1]


def _modules(package: str) -> list[str]:
    """Every module of `package` where it is imported from (the checkout, or an installed wheel)."""
    path = Path(importlib.import_module(package).__file__).parent
    return sorted(m.name for m in pkgutil.walk_packages([str(path)], prefix=f"{package}.")
                  if not m.name.split(".")[-1].startswith("_"))


def test_mrf_core_imports_no_gadgetron_and_no_application_code():
    modules = _modules("mrf_core")
    assert "mrf_core.pipeline" in modules and "mrf_core.recon.reconstruct" in modules
    probe = ("import importlib, sys\n"
             f"for name in {modules!r}:\n"
             "    importlib.import_module(name)\n"
             "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('gadgetron', 'gadgets', 'mrf_gadgetron'))\n"
             "print(','.join(bad))\n")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300, check=True)
    assert out.stdout.strip() == ""


@pytest.mark.repository
def test_the_readme_layout_names_every_package_and_module():
    readme = (ROOT / "README.md").read_text()
    block = readme[readme.index("## Layout"):]
    block = block[block.index("```") + 3:]
    block = block[:block.index("```")]
    words = set(block.replace(",", " ").replace("(", " ").replace(")", " ").split())
    for package in ("mrf_core", "mrf_gadgetron", "gadgets"):
        for name in _modules(package):
            leaf = name.split(".")[-1]
            is_package = hasattr(importlib.import_module(name), "__path__")
            assert (f"{leaf}/" if is_package else leaf) in words, f"README layout does not name {name}"
    assert mrf_core.__version__


def test_tests_do_not_import_each_other():
    """Shared test code lives in conftest.py (fixtures) and chain_helpers.py, so the suite runs from any
    folder against an installed package, without the checkout on sys.path."""
    import ast

    for path in sorted(Path(__file__).parent.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else \
                [a.name for a in node.names] if isinstance(node, ast.Import) else []
            for name in names:
                assert not (name == "tests" or name.startswith(("tests.", "test_", "conftest"))), (path.name, name)
