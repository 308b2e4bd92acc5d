"""What ``nepi-prefect run`` does with log records and with an undelivered record."""

from __future__ import annotations

import logging
import logging.handlers
import os
from typing import Any

from rich.console import Console
from rich.text import Text


def log_to_memory() -> logging.handlers.MemoryHandler:
    """Keep log records (tracebacks included) for the run's log file, off the terminal:
    the CLI prints each failure's one-line reason itself."""
    handler = logging.handlers.MemoryHandler(100000, flushLevel=logging.CRITICAL + 1)
    root = logging.getLogger()
    root.addHandler(handler)
    _added.append(handler)
    root.setLevel(min(root.level, logging.INFO) or logging.INFO)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    return handler


def log_to_file(memory: logging.handlers.MemoryHandler, path: str) -> None:
    """From now on (and what ``memory`` kept), log records go to ``path``."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    target = logging.FileHandler(path, delay=True)
    target.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    memory.setTarget(target)
    memory.flush()
    root = logging.getLogger()
    root.addHandler(target)
    root.removeHandler(memory)
    _added.append(target)


def detach() -> None:
    """Remove the handlers added here (the CLI may run in-process, e.g. in tests)."""
    root = logging.getLogger()
    while _added:
        handler = _added.pop()
        root.removeHandler(handler)
        handler.close()


_added: list[logging.Handler] = []


def record_delivered(recorder: Any, err: Console) -> bool:
    """True if the run's Prefect record is on the server (or there is none); else say
    where it waits."""
    outcome = getattr(recorder, "outcome", None)
    if outcome is None or getattr(recorder, "delivered", True):
        if getattr(outcome, "feed_left", 0):
            err.print(Text(f"{outcome.feed_left} resource events follow from {outcome.journal} "
                           f"once the server has caught up", style="dim"))
        return True
    why = outcome.errors[-1] if outcome.errors else "the server did not take it in time"
    err.print(Text(f"the Prefect record is not on the server yet ({why}); it is kept in "
                   f"{outcome.journal} and goes out in the background (the local server's "
                   f"service, the next nepi-prefect run, or `nepi-prefect server flush`)",
                   style="yellow"))
    return False
