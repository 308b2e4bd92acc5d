"""Local process helpers shared by the layers (they import nothing of the project)."""

from __future__ import annotations

import os


def pid_alive(pid: int) -> bool:
    """Whether a local process ``pid`` exists (one of another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
