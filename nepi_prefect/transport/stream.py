"""A long-lived command on a host with its stdin, stdout and stderr kept open as pipes.

For a helper process that speaks a line protocol with the controller (the ns-3
simulator process): ``Transport.stream(command)`` starts ``command`` with bash on
the host and returns a :class:`CommandStream`. Over SSH it is one exec channel
of the node's existing connection (not a shell of the command pool: the pipes
belong to the command for as long as it runs). The command runs in its own
process group, which :meth:`CommandStream.kill` ends, so a stream never leaves
a process behind on the host.
"""

from __future__ import annotations

import abc
import os
import signal
import subprocess
from typing import Callable, Iterable, TextIO


class CommandStream(abc.ABC):
    """A running command: ``stdin`` (text, write and flush lines), ``stdout`` and
    ``stderr`` (iterables of text lines, ending when the command closes them)."""

    stdin: TextIO
    stdout: Iterable[str]
    stderr: Iterable[str]
    #: the host's process id of the command (the leader of its process group)
    pid: int

    @abc.abstractmethod
    def poll(self) -> int | None:
        """The exit code if the command ended (negative: killed by a signal), else None."""

    @abc.abstractmethod
    def wait(self, timeout: float) -> int | None:
        """Wait up to ``timeout`` s for the command to end; its exit code or None."""

    def close_stdin(self) -> None:
        """Send end-of-file to the command's stdin."""
        try:
            self.stdin.close()
        except OSError:
            pass

    @abc.abstractmethod
    def kill(self) -> None:
        """Kill the command's whole process group now and drop the pipes."""


class LocalStream(CommandStream):
    """``bash -c command`` here, in a new session (its own process group)."""

    def __init__(self, command: str):
        self._proc = subprocess.Popen(
            ["bash", "-c", command], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, bufsize=1, start_new_session=True)
        self.pid = self._proc.pid
        self.stdin, self.stdout, self.stderr = self._proc.stdin, self._proc.stdout, self._proc.stderr

    def poll(self) -> int | None:
        return self._proc.poll()

    def wait(self, timeout: float) -> int | None:
        try:
            return self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def kill(self) -> None:
        if self._proc.poll() is None:
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self._proc.wait(10)


class ChannelStream(CommandStream):
    """A command on an SSH exec channel. sshd makes the command's shell a session
    leader, so its pid (which the command prints first, see ``SSHTransport.stream``)
    names the process group that :meth:`kill` ends with a command on the host."""

    def __init__(self, channel, run_kill: Callable[[str], object], timeout: float):
        self._chan = channel
        self._run_kill = run_kill
        self.stdin = channel.makefile_stdin("w")
        self.stdout = channel.makefile("r")
        self.stderr = channel.makefile_stderr("r")
        channel.settimeout(timeout)
        first = self.stdout.readline()
        channel.settimeout(None)
        if not first.strip().isdigit():
            channel.close()
            raise OSError(f"the command did not start: {first.strip() or 'no output'}")
        self.pid = int(first)

    def poll(self) -> int | None:
        if self._chan.exit_status_ready():
            return self._chan.recv_exit_status()
        return -1 if self._chan.closed else None

    def wait(self, timeout: float) -> int | None:
        self._chan.status_event.wait(timeout)
        return self.poll()

    def close_stdin(self) -> None:
        try:
            self._chan.shutdown_write()
        except OSError:
            pass

    def kill(self) -> None:
        if self.poll() is None:
            try:
                self._run_kill(f"kill -KILL -- -{self.pid} 2>/dev/null; true")
            except Exception:
                pass  # the connection is gone: the command sees its pipes close
        self._chan.close()
