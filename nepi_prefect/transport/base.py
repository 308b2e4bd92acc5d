"""What every transport offers: run shell commands and move files on one host."""

from __future__ import annotations

import abc
from dataclasses import dataclass


class TransportError(RuntimeError):
    """The host could not be reached, or the connection broke."""


class TransportTimeout(TransportError):
    """A command did not finish within its time limit."""


@dataclass
class CommandResult:
    """The outcome of one shell command."""

    stdout: str
    stderr: str
    exitcode: int

    @property
    def ok(self) -> bool:
        return self.exitcode == 0

    def check(self, what: str) -> "CommandResult":
        """Return self, or raise naming ``what`` with the exit code and stderr tail."""
        if self.exitcode != 0:
            tail = self.stderr.strip()[-500:]
            raise TransportError(f"{what} failed with exit code {self.exitcode}: {tail}")
        return self


class Transport(abc.ABC):
    """A connection to one host. Thread-safe: RMs of a node share it."""

    #: a label for messages, e.g. ``root@10.0.0.1:22``
    label: str = ""

    @abc.abstractmethod
    def connect(self) -> None:
        """Open the connection now (raise TransportError with the reason if not)."""

    @abc.abstractmethod
    def run(self, command: str, timeout: float | None = None) -> CommandResult:
        """Run ``command`` with bash on the host; its stdin is /dev/null."""

    @abc.abstractmethod
    def read(self, path: str, offset: int = 0, size: int = -1) -> bytes | None:
        """Bytes of a host file from ``offset`` (all when size < 0); None if it is missing."""

    @abc.abstractmethod
    def size(self, path: str) -> int | None:
        """A host file's size in bytes, or None if it is missing."""

    @abc.abstractmethod
    def write(self, path: str, data: bytes, mode: int | None = None) -> None:
        """Create or replace a host file with ``data``."""

    @abc.abstractmethod
    def put(self, local: str, remote: str) -> None:
        """Copy a local file or directory (recursively) to ``remote``."""

    @abc.abstractmethod
    def close(self) -> None:
        """Close the connection; a later call reconnects."""
