"""One persistent ``bash -s`` on an SSH session channel (the SSH transport's pool holds these)."""

from __future__ import annotations

import os
import socket
import time

import paramiko

from nepi_prefect.transport.base import CommandResult, TransportError, TransportTimeout
from nepi_prefect.transport.pool import framed, parse_frame

_SHELL = "exec bash --noprofile --norc -s"


class ChannelShell:
    """A persistent ``bash -s`` on one session channel; runs one command at a time."""

    def __init__(self, transport: paramiko.Transport, timeout: float):
        self.chan = transport.open_session(timeout=timeout)
        self.chan.exec_command(_SHELL)
        self.tag = os.urandom(6).hex()
        self.count = 0
        # sshd starts the shell through the user's login shell, which sources
        # login files (~/.bashrc) first: they may print, or hang (a stale pyenv
        # rehash lock: 60 s). The first script opens with a banner on both
        # streams; what comes before it is theirs, and it must come in time.
        self.start_limit = timeout
        self.started = False
        self.ready_by = 0.0  # set when the first script goes (a warmed shell may wait idle)
        self.banner = f"__NEPI_READY_{self.tag}__".encode()

    def alive(self) -> bool:
        chan = self.chan
        return (not chan.closed and not chan.exit_status_ready()
                and chan.get_transport() is not None and chan.get_transport().is_active())

    def run(self, command: str, timeout: float | None) -> CommandResult:
        self.count += 1
        mark = f"__NEPI_END_{self.tag}_{self.count}__"
        script = framed(command, mark, big_ok=True)
        if not self.started:
            self.ready_by = time.monotonic() + self.start_limit
            banner = self.banner.decode()
            script = f"printf '{banner}\\n'; printf '{banner}\\n' >&2\n".encode() + script
        self.chan.sendall(script)
        deadline = None if timeout is None else time.monotonic() + timeout
        out, err, rc = self._collect(mark.encode(), deadline)
        return CommandResult(out.decode(errors="replace"), err.decode(errors="replace"), rc)

    def _check_started(self, out: bytearray) -> None:
        """Raise if the first script's banner is not in yet and its time is up."""
        if self.banner not in out and time.monotonic() > self.ready_by:
            raise TransportError(
                f"the login shell did not start within {self.start_limit}s (a login file "
                f"such as ~/.bashrc is slow or waits, e.g. on a stale lock)", "timeout")

    def _after_banner(self, data: bytes) -> bytes:
        """``data`` without what login files printed before the banner line."""
        line = self.banner + b"\n"
        idx = data.find(line)
        return data if idx < 0 else data[idx + len(line):]

    def _collect(self, mark: bytes, deadline: float | None) -> tuple[bytes, bytes, int]:
        chan = self.chan
        emark = b"\n" + mark + b"\n"
        out, err = bytearray(), bytearray()
        out_end = err_end = None
        rc = -1
        while out_end is None or err_end is None:
            if deadline is not None and time.monotonic() > deadline:
                raise TransportTimeout("command timed out")
            if not self.started:
                self._check_started(out)
            while chan.recv_stderr_ready():
                err += chan.recv_stderr(65536)
            if err_end is None:
                idx = err.find(emark)
                err_end = idx if idx >= 0 else None
            chan.settimeout(0.05)
            try:
                data = chan.recv(65536) if out_end is None else (
                    chan.recv_stderr(65536) if err_end is None else b"x")
            except socket.timeout:
                continue
            if not data:
                raise TransportError("the remote shell closed")
            if out_end is None:
                out += data
                if (found := parse_frame(out, mark)) is not None:
                    out_end, rc = found
            elif err_end is None:
                err += data
                idx = err.find(emark)
                err_end = idx if idx >= 0 else None
        out, err = bytes(out[:out_end]), bytes(err[:err_end])
        if not self.started:
            out, err = self._after_banner(out), self._after_banner(err)
            self.started = True
        return out, err, rc

    def close(self) -> None:
        try:
            self.chan.close()
        except Exception:
            pass
