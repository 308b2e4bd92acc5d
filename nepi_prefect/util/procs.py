"""Local process helpers shared by the layers (they import nothing of the project)."""

from __future__ import annotations

import os
from pathlib import Path


def pid_alive(pid: int) -> bool:
    """Whether a local process ``pid`` exists (one of another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def pid_zombie(pid: int) -> bool:
    """Whether ``pid`` has ended but is not reaped yet (state ``Z``)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[:1] == ["Z"]


def pid_gone(pid: int) -> bool:
    """Whether ``pid`` no longer runs: it does not exist, or it is a zombie."""
    return not pid_alive(pid) or pid_zombie(pid)
