"""Suite-wide hygiene that no single fixture owns."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

#: pyenv's rehash lock: root's ~/.bashrc on these machines runs ``pyenv init``, so every
#: root SSH login takes it for a moment. A login killed while holding it (the tests kill
#: runs mid-flight on purpose) leaves it behind, and every later root login then waits
#: 60 s for it: the machine's shell set-up, not the code under test.
PYENV_LOCK = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "shims" / ".pyenv-shim"


def _pyenv_running() -> bool:
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and b"libexec/pyenv" in (proc / "cmdline").read_bytes():
                return True
        except OSError:
            pass
    return False


@pytest.fixture(autouse=True)
def no_stale_pyenv_lock():
    """Before each test: a pyenv lock nobody holds is removed."""
    if PYENV_LOCK.exists() and not _pyenv_running():
        PYENV_LOCK.unlink(missing_ok=True)
    yield
