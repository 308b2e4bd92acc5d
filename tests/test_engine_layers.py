"""The engine's import rule: ``execution`` imports only ``execution``, ``util`` and
``settings`` of the project, never lazily, by a string or under TYPE_CHECKING."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

EXECUTION = Path(__file__).resolve().parents[1] / "nepi_prefect" / "execution"
ALLOWED = ("nepi_prefect.execution", "nepi_prefect.util", "nepi_prefect.settings")
#: never in the engine, project or not
FOREIGN = ("prefect", "paramiko", "yaml", "importlib.import_module")


def _project_imports(path: Path) -> list[tuple[int, str]]:
    """Every module of the project (or a foreign one) ``path`` imports, at any depth."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            base = node.module if node.level == 0 else "nepi_prefect.execution"
            found += [(node.lineno, f"{base}.{a.name}") for a in node.names]
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", ""))\
                in ("import_module", "__import__"):
            found.append((node.lineno, "importlib.import_module"))
        elif isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            found.append((node.lineno, "TYPE_CHECKING"))
    return found


def test_execution_imports_only_execution_util_and_settings():
    bad = [f"{path.name}:{line}: {name}"
           for path in sorted(EXECUTION.glob("*.py"))
           for line, name in _project_imports(path)
           if name == "TYPE_CHECKING" or name.startswith(FOREIGN)
           or (name.startswith("nepi_prefect") and not name.startswith(ALLOWED))]
    assert not bad, "the engine imports above itself:\n" + "\n".join(bad)


def test_the_engine_loads_alone():
    code = ("import sys\n"
            "import nepi_prefect.execution.ec, nepi_prefect.execution.runner\n"
            "bad = sorted(m for m in sys.modules if m.startswith(('nepi_prefect.', 'prefect', "
            "'paramiko')) and not m.startswith(('nepi_prefect.execution', 'nepi_prefect.util', "
            "'nepi_prefect.settings')))\n"
            "print(bad)\n"
            "sys.exit(1 if bad else 0)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
