"""A pool of persistent shells on one host, shared by the SSH and netns transports.

Both transports keep a few long-running ``bash -s`` processes per host and send
each command to an idle one, framed by end markers: a command then costs a fork
of that shell instead of a new session or two program starts. This module holds
what they share: the framing of a command and the pool that bounds how many
shells a host gets and hands them to concurrent callers.
"""

from __future__ import annotations

import shlex
import threading
from typing import Callable, Generic, Protocol, TypeVar

from nepi_prefect.transport.base import CommandResult, TransportError, TransportTimeout

#: commands at least this long (bytes) are read by head, not byte by byte by bash
BIG_COMMAND = 4096


class ShellRefused(Exception):
    """Raised by a pool's opener when the host refuses one more shell (e.g. sshd's
    MaxSessions): the pool then lives with the shells it has."""


class Shell(Protocol):
    def alive(self) -> bool: ...

    def run(self, command: str, timeout: float | None) -> CommandResult: ...

    def close(self) -> None: ...


S = TypeVar("S", bound=Shell)


def framed(command: str, mark: str, big_ok: bool = False) -> bytes:
    """The script that runs ``command`` in a subshell with stdin /dev/null, then
    prints ``\\n<mark> <exit code>\\n`` on stdout and ``\\n<mark>\\n`` on stderr.

    The command goes in as one quoted string for ``eval``: neither a syntax error
    nor an ``exit`` in it can touch the reading shell or the framing. With
    ``big_ok``, a long command is read by ``head -c`` instead: bash reads a pipe
    one byte per read(2), to leave what follows a command alone, head in blocks.
    """
    tail = f"printf '\\n{mark} %d\\n' $?; printf '\\n{mark}\\n' >&2\n"
    body = command.encode()
    if not big_ok or len(body) < BIG_COMMAND:
        return f"( eval {shlex.quote(command)} ) </dev/null; {tail}".encode()
    return (f'__nepi_c="$(head -c {len(body)})"\n'.encode() + body
            + f'( eval "$__nepi_c" ) </dev/null; {tail}'.encode())


def parse_frame(out: bytes | bytearray, mark: bytes) -> tuple[int, int] | None:
    """(end of the command's stdout, exit code) once ``out`` holds the end line."""
    omark = b"\n" + mark + b" "
    idx = out.find(omark)
    if idx < 0:
        return None
    nl = out.find(b"\n", idx + len(omark))
    if nl < 0:
        return None
    return idx, int(out[idx + len(omark):nl])


class ShellPool(Generic[S]):
    """At most ``size`` shells for one host, handed out one caller at a time.

    ``open_shell(context)`` starts a shell; ``prepare()``, if given, runs before each
    attempt to get one (outside the pool's lock) and returns that ``context``: the
    SSH transport (re)connects there, so a reconnection (which resets the pool)
    never happens while a slot is reserved.
    """

    def __init__(self, size: int, open_shell: Callable[[object], S],
                 prepare: Callable[[], object] | None = None):
        self.size = max(1, size)
        self.count = 0  # shells open or being opened, idle or busy
        self._open = open_shell
        self._prepare = prepare or (lambda: None)
        self._idle: list[S] = []
        self._cond = threading.Condition()

    def acquire(self) -> S:
        """An idle live shell, or a new one if fewer than ``size`` exist, else wait."""
        while True:
            context = self._prepare()
            with self._cond:
                while self._idle:
                    shell = self._idle.pop()
                    if shell.alive():
                        return shell
                    shell.close()
                    self.count -= 1
                if self.count < self.size:
                    self.count += 1
                    break
                self._cond.wait(1.0)
        try:
            return self._open(context)
        except ShellRefused:
            with self._cond:  # the host's limit: live with fewer shells
                self.count -= 1
                self.size = max(1, self.count)
            return self.acquire()
        except BaseException:
            with self._cond:
                self.count -= 1
                self._cond.notify()
            raise

    def give_back(self, shell: S) -> None:
        with self._cond:
            self._idle.append(shell)
            self._cond.notify()

    def discard(self, shell: S) -> None:
        """Close a shell that failed; its slot is free again."""
        shell.close()
        with self._cond:
            self.count = max(0, self.count - 1)
            self._cond.notify()

    def run(self, command: str, timeout: float | None, label: str,
            explain: Callable[[Exception], str]) -> CommandResult:
        """Run ``command`` on a pooled shell. A shell that failed is discarded and
        the failure raised as a TransportError ``<label>: <explain(exc)>`` (of the
        shell's error's kind when it gave one)."""
        shell = self.acquire()
        try:
            result = shell.run(command, timeout)
        except TransportTimeout:
            self.discard(shell)
            raise TransportTimeout(f"{label}: command timed out after {timeout}s") from None
        except Exception as exc:
            self.discard(shell)
            kind = exc.kind if isinstance(exc, TransportError) else "lost"
            raise TransportError(f"{label}: {explain(exc)}", kind) from None
        self.give_back(shell)
        return result

    def close_idle(self, forget_busy: bool = False) -> None:
        """Close the idle shells; ``forget_busy`` when the connection under all of
        them is gone, so busy ones no longer count either."""
        with self._cond:
            idle, self._idle = self._idle, []
            self.count = 0 if forget_busy else self.count - len(idle)
            self._cond.notify_all()
        for shell in idle:
            shell.close()
