"""What every transport offers: run shell commands and move files on one host."""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nepi_prefect.transport.stream import CommandStream


class TransportError(RuntimeError):
    """The host could not be reached, or the connection broke.

    ``kind`` says why, for per-host accounting: ``unreachable`` (no TCP or no
    SSH answer), ``auth``, ``host-key``, ``lost`` (a connection broke) or
    ``timeout`` (a command ran too long).
    """

    def __init__(self, message: str, kind: str = "lost"):
        super().__init__(message)
        self.kind = kind


class TransportTimeout(TransportError):
    """A command did not finish within its time limit."""

    def __init__(self, message: str, kind: str = "timeout"):
        super().__init__(message, kind)


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

    def warm(self, sessions: int) -> None:
        """Start opening up to ``sessions`` command sessions in the background, so the
        first commands sent at once do not each wait for one (no-op by default)."""

    @abc.abstractmethod
    def run(self, command: str, timeout: float | None = None) -> CommandResult:
        """Run ``command`` with bash on the host; its stdin is /dev/null."""

    @abc.abstractmethod
    def read(self, path: str, offset: int = 0, size: int = -1) -> bytes | None:
        """Bytes of a host file from ``offset`` (all when size < 0); None if it is missing."""

    def read_many(self, paths: list[str], limit: int = 1 << 20) -> dict[str, bytes]:
        """The bytes of every file of ``paths`` that exists and holds at most ``limit``
        bytes, in as few round trips as the transport can; the others are left out."""
        found = {}
        for path in paths:
            data = self.read(path, 0, limit + 1)
            if data is not None and len(data) <= limit:
                found[path] = data
        return found

    @abc.abstractmethod
    def size(self, path: str) -> int | None:
        """A host file's size in bytes, or None if it is missing."""

    @abc.abstractmethod
    def write(self, path: str, data: bytes, mode: int | None = None) -> None:
        """Create or replace a host file with ``data``."""

    @abc.abstractmethod
    def put(self, local: str, remote: str) -> None:
        """Copy a local file or directory (recursively) to ``remote``."""

    def stream(self, command: str) -> "CommandStream":
        """Start ``command`` (bash) with its stdin/stdout/stderr kept open as pipes, in its
        own process group (see transport.stream); for a helper speaking a line protocol."""
        raise TransportError(f"{self.label or type(self).__name__}: this transport cannot "
                             f"keep a command's pipes open", "unsupported")

    @abc.abstractmethod
    def close(self) -> None:
        """Close the connection; a later call reconnects."""
