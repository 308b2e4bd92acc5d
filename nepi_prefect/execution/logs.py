"""Where RM and EC log lines go, with every secret of the experiment masked.

A line goes to the RM's (or the EC's) Python logger and, at or above the
recorder's level, to the recorder, attached to the action run the RM is
working on.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from nepi_prefect.execution.ledger import RunLedger
from nepi_prefect.execution.resource import ResourceManager

MASK = "********"


class LogRouter:
    """Masks secrets and routes log lines to loggers and the recorder."""

    def __init__(self, ledger: RunLedger, logger: logging.Logger):
        self._ledger = ledger
        self._logger = logger
        self._secrets: set[str] = set()
        self._lock = threading.Lock()

    def register_secret(self, value: Any) -> None:
        """Mask ``value`` (as text) wherever it would reach a log."""
        if value is None:
            return
        text = str(value)
        if text:
            with self._lock:
                self._secrets = self._secrets | {text}  # readers iterate without the lock

    def redact(self, text: str) -> str:
        """``text`` with every registered secret masked."""
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        return text

    def log_for(self, rm: ResourceManager | None, level: int, text: str) -> None:
        """Log ``text`` for ``rm`` (None: the EC itself)."""
        text = self.redact(text)
        logger = rm.logger if rm is not None else self._logger
        logger.log(level, text)
        recorder = self._ledger.recorder
        if level >= recorder.log_level:
            recorder.log(self._ledger.current(rm.guid) if rm is not None else None, level, text)
