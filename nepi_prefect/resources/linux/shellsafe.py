"""Values that reach the host's shell as text, and the checks that keep them safe.

``${RUN_HOME}``, ``${APP_HOME}``, ``${NODE_HOME}`` and ``${EXP_HOME}`` are
substituted into commands as text (as NEPI does), so each must be one shell
word that needs no quoting anywhere, inside double quotes too. They are made of
a node's ``home`` (checked here when set, and when found on the host) and of
identifiers checked by the engine (exp and run ids). Every other value is
``shlex.quote``-d where it is substituted.
"""

from __future__ import annotations

import re
import shlex

from nepi_prefect.execution.errors import AttributeValueError

#: a home: only characters that need no quoting (shlex's safe set), absolute, no ".."
_SAFE_HOME = re.compile(r"^/[A-Za-z0-9@%+=:,./_-]*$")
#: a package name as apt, dnf and yum spell them (name, version, arch)
_PACKAGE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.+_:~=-]*$")


def home_problem(value: str) -> str | None:
    """Why ``value`` cannot be a node's home, or None."""
    if not _SAFE_HOME.match(value) or ".." in value.split("/"):
        return (f"got {value!r}, expected an absolute path of letters, digits and "
                f"'@%+=:,./_-' (no '..', no spaces or shell characters)")
    return None


def check_home(_old: str | None, new: str | None) -> str | None:
    """The set_hook of a node's ``home``."""
    problem = home_problem(new) if new is not None else None
    if problem:
        raise AttributeValueError(f"attribute 'home': {problem}")
    return new


def check_packages(value: str) -> None:
    """Refuse a ``depends`` value that is not space-separated package names."""
    bad = [p for p in value.split() if not _PACKAGE.match(p)]
    if bad:
        raise AttributeValueError(
            f"attribute 'depends': {bad[0]!r} is not a package name; expected "
            f"space-separated names of letters, digits and '.+_:~=-'")


def substitute_paths(text: str, paths: dict[str, str | None], owner: str) -> str:
    """``text`` with each ``${NAME}`` of ``paths`` replaced by its value; a value that
    is not one safe shell word is refused (ValueError naming ``owner``), not substituted."""
    for key, value in paths.items():
        marker = "${%s}" % key
        if value is None or marker not in text:
            continue
        if shlex.quote(value) != value:
            raise ValueError(f"{owner}: {marker} is {value!r}, which cannot be "
                             f"substituted into a command safely")
        text = text.replace(marker, value)
    return text
