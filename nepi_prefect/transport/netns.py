"""The netns transport: commands run inside a network namespace of this machine.

A namespace host shares this machine's file system and process table; only
its network stack is its own. So files are read and written directly (as
:class:`LocalTransport` does) and only commands change. They go to a small
pool of persistent ``bash`` processes started in the namespace with
``nsenter --net=/run/netns/NAME`` and framed by end markers, as the SSH
transport does: a command then costs a fork of the shell, not two program
starts, which matters when fifty hosts each poll their applications five
times a second on a loaded machine.
"""

from __future__ import annotations

import os
import selectors
import shutil
import signal
import subprocess
import time

from nepi_prefect.transport.base import CommandResult, TransportError, TransportTimeout
from nepi_prefect.transport.local import LocalTransport
from nepi_prefect.transport.pool import ShellPool, framed, parse_frame

NETNS_DIR = "/run/netns"
#: persistent shells per host: concurrent commands beyond this wait for one
MAX_SHELLS = 4


def netns_argv(netns: str) -> list[str]:
    """The argv prefix that runs a program inside network namespace ``netns``
    (``nsenter`` when present: unlike ``ip netns exec`` it does not remount /sys)."""
    if shutil.which("nsenter"):
        return ["nsenter", f"--net={NETNS_DIR}/{netns}", "--"]
    return ["ip", "netns", "exec", netns]


class _Shell:
    """A persistent ``bash -s`` in the namespace; runs one command at a time."""

    def __init__(self, argv: list[str]):
        self.proc = subprocess.Popen([*argv, "bash", "-s"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     start_new_session=True)
        self.tag = os.urandom(6).hex()
        self.count = 0

    def alive(self) -> bool:
        return self.proc.poll() is None

    def run(self, command: str, timeout: float | None) -> CommandResult:
        self.count += 1
        mark = f"__NEPI_END_{self.tag}_{self.count}__"
        try:
            self.proc.stdin.write(framed(command, mark))
            self.proc.stdin.flush()
        except OSError:
            raise TransportError("the namespace shell exited") from None
        deadline = None if timeout is None else time.monotonic() + timeout
        return self._collect(mark.encode(), deadline)

    def _collect(self, mark: bytes, deadline: float | None) -> CommandResult:
        emark = b"\n" + mark + b"\n"
        bufs = {self.proc.stdout.fileno(): bytearray(), self.proc.stderr.fileno(): bytearray()}
        out_fd, err_fd = self.proc.stdout.fileno(), self.proc.stderr.fileno()
        out_end = err_end = None
        rc = -1
        with selectors.DefaultSelector() as sel:
            sel.register(out_fd, selectors.EVENT_READ)
            sel.register(err_fd, selectors.EVENT_READ)
            while out_end is None or err_end is None:
                wait = None if deadline is None else deadline - time.monotonic()
                if wait is not None and wait <= 0:
                    raise TransportTimeout("command timed out")
                for key, _ in sel.select(wait):
                    data = os.read(key.fd, 65536)
                    if not data:
                        raise TransportError("the namespace shell exited")
                    bufs[key.fd] += data
                out, err = bufs[out_fd], bufs[err_fd]
                if out_end is None and (found := parse_frame(out, mark)) is not None:
                    out_end, rc = found
                if err_end is None and (idx := err.find(emark)) >= 0:
                    err_end = idx
        return CommandResult(bytes(bufs[out_fd][:out_end]).decode(errors="replace"),
                             bytes(bufs[err_fd][:err_end]).decode(errors="replace"), rc)

    def close(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            try:
                pipe.close()
            except OSError:
                pass
        self.proc.wait()


class NetnsTransport(LocalTransport):
    """Runs commands with bash inside one named network namespace."""

    def __init__(self, netns: str, max_shells: int = MAX_SHELLS, setup: str | None = None):
        """``setup``: shell commands run once at connect, in the first shell (which
        the host's first command then reuses), e.g. sysctls written to /proc/sys."""
        self.netns = netns
        self._setup = setup
        self.label = f"netns:{netns}"
        self._argv = netns_argv(netns)
        self._pool: ShellPool[_Shell] = ShellPool(max_shells, self._open_shell)

    def connect(self) -> None:
        if not os.path.exists(f"{NETNS_DIR}/{self.netns}"):
            raise TransportError(f"{self.label}: no such network namespace")
        if self._setup:
            self.run(self._setup, timeout=60).check(f"{self.label}: setting up")

    def run(self, command: str, timeout: float | None = None) -> CommandResult:
        return self._pool.run(command, timeout, self.label, str)

    def _open_shell(self, _context: object) -> _Shell:
        try:
            return _Shell(self._argv)
        except OSError as exc:
            raise TransportError(f"{self.label}: cannot start a shell: {exc}") from None

    def close(self) -> None:
        """Stop the shells (commands started detached, like applications, run on)."""
        self._pool.close_idle()
