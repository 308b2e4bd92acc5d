"""Imports flow one way: the engine imports only itself, ``util`` and ``settings``;
transport, resources and spec know nothing of Prefect or of the Prefect bridge
(anything they need from it is lent to them); nothing imports by string."""

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


def _imports(path: Path, package: str = "") -> list[tuple[int, str]]:
    """Every module ``path`` imports, at any depth (``import x``, ``from x import y`` as
    ``x.y``; a relative import resolved against ``package``); an import by string
    (``importlib.import_module``, ``__import__``) counts as ``"<by string>"`` and an
    ``if TYPE_CHECKING:`` block as ``"TYPE_CHECKING"``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) \
                in ("import_module", "__import__"):
            found.append((node.lineno, "<by string>"))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and (node.module or node.level):
            base = node.module if node.level == 0 else package
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
        elif isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            found.append((node.lineno, "TYPE_CHECKING"))
    return found


#: the engine imports only these of the project, and never these foreign modules
ENGINE_ALLOWED = ("nepi_prefect.execution", "nepi_prefect.util", "nepi_prefect.settings")
ENGINE_FOREIGN = ("prefect", "paramiko", "yaml")


def test_execution_imports_only_execution_util_and_settings():
    bad = [f"{path.name}:{line}: {name}"
           for path in sorted((PACKAGE / "execution").glob("*.py"))
           for line, name in _imports(path, "nepi_prefect.execution")
           if name in ("TYPE_CHECKING", "<by string>") or name.startswith(ENGINE_FOREIGN)
           or (name.startswith("nepi_prefect") and not name.startswith(ENGINE_ALLOWED))]
    assert not bad, "the engine imports above itself:\n" + "\n".join(bad)


def _loads_without(imports: str, forbidden: tuple[str, ...]) -> None:
    """A fresh interpreter runs ``imports``; none of ``forbidden`` is loaded after."""
    code = (f"import sys\n{imports}\n"
            f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {forbidden!r} "
            f"or m.startswith({forbidden!r}))\n"
            "print(bad)\nsys.exit(1 if bad else 0)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_engine_loads_alone():
    _loads_without("import nepi_prefect.execution.ec, nepi_prefect.execution.runner",
                   ("prefect", "paramiko", "nepi_prefect.orchestration", "nepi_prefect.resources",
                    "nepi_prefect.transport", "nepi_prefect.spec", "nepi_prefect.flows"))


def test_the_cli_starts_without_prefect():
    """Prefect takes a second or more to import: only the commands that use it load it,
    and ``sweep`` only after pointing Prefect at the record's API (``server.use_api``)."""
    _loads_without("import nepi_prefect.cli\nnepi_prefect.cli.build_parser()\n"
                   "import nepi_prefect.commands.sweep", ("prefect",))


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layer_imports_nothing_above_it(layer):
    bad = [f"{path.relative_to(PACKAGE.parent)}:{line}: {name}"
           for path in sorted((PACKAGE / layer).rglob("*.py"))
           for line, name in _imports(path)
           if name in ("prefect", "<by string>") or name.startswith(FORBIDDEN[layer])]
    assert not bad, "imports against the layering:\n" + "\n".join(bad)


def test_lower_layers_load_without_prefect():
    _loads_without("import nepi_prefect.transport.ssh, nepi_prefect.transport.local, "
                   "nepi_prefect.transport.credentials\n"
                   "import nepi_prefect.resources.linux.node, nepi_prefect.resources.linux.application\n"
                   "import nepi_prefect.spec.io, nepi_prefect.spec.run",
                   ("prefect", "nepi_prefect.orchestration"))


def test_the_node_does_not_import_its_applications():
    """The node drives apps through the WatchedProcess protocol: no node <-> application circle."""
    node = PACKAGE / "resources" / "linux" / "node.py"
    assert not [name for _, name in _imports(node) if name.endswith("linux.application")]


#: files allowed to read a variable by name, and why
ENV_READERS = {
    "settings.py": "the home of every project setting",
    "spec/io.py": "a description's {\"env\": VAR} values are user data, read where they are used",
    "spec/validate.py": "validate says which of a description's {\"env\": VAR} variables are unset",
}


def _env_reads(path: Path) -> list[int]:
    """Lines where ``path`` reads one variable from the environment (``os.environ[...]``,
    ``.get``, ``in``, ``os.getenv``); copying the whole environment for a child is not a read."""
    tree = ast.parse(path.read_text(), str(path))
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr == "getenv":
            lines.append(node.lineno)
        elif isinstance(node, ast.Attribute) and node.attr == "environ":
            parent = parents.get(node)
            if isinstance(parent, ast.Subscript) or isinstance(parent, ast.Compare) or (
                    isinstance(parent, ast.Attribute) and parent.attr in ("get", "setdefault")):
                lines.append(node.lineno)
    return lines


def test_settings_are_read_from_the_environment_in_settings_only():
    # execution/ is the engine's own business (its RECORDER_ENV etc. come from settings too).
    bad = [f"{rel}:{line}"
           for path in sorted(PACKAGE.rglob("*.py"))
           if not (rel := path.relative_to(PACKAGE).as_posix()).startswith("execution/")
           and rel not in ENV_READERS
           for line in _env_reads(path)]
    assert not bad, "environment read outside nepi_prefect/settings.py:\n" + "\n".join(bad)
