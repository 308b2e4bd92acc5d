"""The exit guard: an experiment left without ``shutdown()`` is still released,
and its record closed, when the process exits (normally or by SIGTERM)."""

from __future__ import annotations

import atexit
import logging
import signal
import threading
import weakref
from typing import Any, Protocol

log = logging.getLogger("nepi_prefect.ec")


class Abandonable(Protocol):
    exp_id: str

    def abandon(self, reason: str) -> None:
        """Release what can be released and close the record."""


_live: "weakref.WeakSet[Any]" = weakref.WeakSet()
_lock = threading.Lock()
_installed = False


def guard(ec: Abandonable) -> None:
    """Close ``ec`` at exit unless it is :func:`released <forget>` first."""
    global _installed
    with _lock:
        _live.add(ec)
        if _installed:
            return
        _installed = True
    atexit.register(close_abandoned)
    if threading.current_thread() is threading.main_thread() and \
            signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
        signal.signal(signal.SIGTERM, _exit_on_sigterm)


def forget(ec: Abandonable) -> None:
    """``ec`` was shut down: nothing to do for it at exit."""
    _live.discard(ec)


def close_abandoned() -> None:
    """Release and close every experiment of this process left without ``shutdown()``.

    Runs at exit; a layer that must act before its own exit hooks (the Prefect
    bridge, while its API is still up) calls it first.
    """
    for ec in list(_live):
        try:
            ec.abandon("the process exited without calling shutdown()")
        except Exception:
            log.exception("could not close experiment %s at exit", ec.exp_id)


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    # SIGTERM would end the process without running atexit; make it an exit.
    raise SystemExit(128 + signum)
