"""Imports flow one way: transport, resources and spec know nothing of Prefect
or of the Prefect bridge (anything they need from it is lent to them)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "nepi_prefect"
#: layer -> module prefixes it must never import, not even lazily inside a function
FORBIDDEN = {
    "transport": ("prefect", "nepi_prefect.orchestration", "nepi_prefect.spec",
                  "nepi_prefect.resources", "nepi_prefect.flows", "nepi_prefect.cli"),
    "resources": ("prefect", "nepi_prefect.orchestration", "nepi_prefect.spec",
                  "nepi_prefect.flows", "nepi_prefect.cli"),
    "spec": ("prefect", "nepi_prefect.orchestration", "nepi_prefect.flows", "nepi_prefect.cli"),
}


def _imports(path: Path) -> list[tuple[int, str]]:
    """Every module ``path`` imports, at any depth (``import x``, ``from x import y``);
    an import by string (``importlib.import_module``, ``__import__``) counts as ``"<by string>"``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) \
                in ("import_module", "__import__"):
            found.append((node.lineno, "<by string>"))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return found


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layer_imports_nothing_above_it(layer):
    bad = [f"{path.relative_to(PACKAGE.parent)}:{line}: {name}"
           for path in sorted((PACKAGE / layer).rglob("*.py"))
           for line, name in _imports(path)
           if name in ("prefect", "<by string>") or name.startswith(FORBIDDEN[layer])]
    assert not bad, "imports against the layering:\n" + "\n".join(bad)


def test_lower_layers_load_without_prefect():
    code = ("import sys, importlib, pkgutil\n"
            "import nepi_prefect.transport.ssh, nepi_prefect.transport.local, "
            "nepi_prefect.transport.credentials\n"
            "import nepi_prefect.resources.linux.node, nepi_prefect.resources.linux.application\n"
            "import nepi_prefect.spec.io, nepi_prefect.spec.run\n"
            "bad = sorted(m for m in sys.modules if m == 'prefect' or m.startswith("
            "('prefect.', 'nepi_prefect.orchestration')))\n"
            "print(bad)\n"
            "sys.exit(1 if bad else 0)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
