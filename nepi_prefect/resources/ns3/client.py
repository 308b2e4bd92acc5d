"""The controller's side of the simulator process (see :mod:`.worker`).

:class:`SimulatorProcess` starts the worker, sends requests and waits for their
answers with a deadline, hands events to a callback, and keeps the last lines
the process wrote to stderr, so that a crash (an ns-3 abort, a segfault) is
reported with ns-3's own message. :func:`acquire` hands out an already
imported worker when one is ready (a spare started ahead, or the process of a
run that ended cleanly), so a sweep or a test suite pays the slow import once.
"""

from __future__ import annotations

import atexit
import collections
import itertools
import json
import os
import re
import shlex
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from nepi_prefect import settings
from nepi_prefect.resources.ns3 import worker
from nepi_prefect.transport.stream import CommandStream, LocalStream

#: seconds the first ``from ns import ns`` may take (cppyy compiles the bindings:
#: 8 s on an idle 2-core machine, 4-5 minutes on the same machine shared by 8 jobs)
IMPORT_TIMEOUT = 900.0

EventHandler = Callable[[dict], None]
#: the simulator process's program (run as a file: a remote host needs only it and ns3)
WORKER_SCRIPT = os.path.abspath(worker.__file__)


class SimulatorError(RuntimeError):
    """The simulator refused a request, crashed or did not answer in time."""


class SimulatorProcess:
    """One ns-3 worker process and its JSON-lines pipe: here (default) or on a host,
    through a transport's stream (see :func:`worker_command`)."""

    def __init__(self, stream: CommandStream | None = None, where: str = "local") -> None:
        self._stream = stream or _spawn_local()
        self.pid = self._stream.pid
        self.where = where
        self._ids = itertools.count(1)
        self._answers: dict[int, dict] = {}
        self._cond = threading.Condition()
        self._hello: dict | None = None
        self._stderr: collections.deque[str] = collections.deque(maxlen=60)
        self.on_event: EventHandler | None = None
        self._send_lock = threading.Lock()
        threading.Thread(target=self._read_stdout, daemon=True, name=f"ns3-{self.pid}-out").start()
        threading.Thread(target=self._read_stderr, daemon=True, name=f"ns3-{self.pid}-err").start()

    # -- reading ------------------------------------------------------------------------
    def _read_stdout(self) -> None:
        for line in self._stream.stdout:
            try:
                msg = json.loads(line)
            except ValueError:
                self._stderr.append(line.rstrip())
                continue
            if "id" in msg:
                with self._cond:
                    self._answers[msg["id"]] = msg
                    self._cond.notify_all()
            elif msg.get("event") == "hello":
                with self._cond:
                    self._hello = msg
                    self._cond.notify_all()
            elif self.on_event is not None:
                self.on_event(msg)
        with self._cond:
            self._cond.notify_all()  # the process ended: wake every waiter

    def _read_stderr(self) -> None:
        for line in self._stream.stderr:
            if "Failed to materialize symbols" not in line:  # harmless cppyy noise
                self._stderr.append(line.rstrip())

    @property
    def alive(self) -> bool:
        return self._stream.poll() is None

    def last_output(self, lines: int = 8) -> str:
        """The simulator's last words: ns-3's abort message first, when there is one."""
        text = list(self._stderr)
        fatal = [m.group(1) for m in (re.search(r'msg="(.*?)"', t) for t in text) if m]
        tail = [t for t in text if t.strip() and not t.startswith(("#", " ***"))][-lines:]
        return "; ".join(fatal) if fatal else " | ".join(tail)

    def _dead(self, what: str) -> SimulatorError:
        code = self._stream.poll()
        where = "" if self.where == "local" else f" on {self.where}"
        return SimulatorError(f"the ns-3 simulator process (pid {self.pid}{where}) exited with code "
                              f"{code} during {what}: {self.last_output() or 'no output'}")

    # -- requests -----------------------------------------------------------------------------
    def wait_ready(self, timeout: float = IMPORT_TIMEOUT) -> dict:
        """Wait until ns-3 is imported; its hello (version, import_s)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._hello is None:
                if not self.alive:
                    raise self._dead("the import of ns-3")
                left = deadline - time.monotonic()
                if left <= 0:
                    self.kill()
                    raise SimulatorError(f"importing ns-3 took more than {timeout:g}s")
                self._cond.wait(min(left, 1.0))
        return self._hello

    def request(self, op: str, timeout: float | None = None, **fields: Any) -> Any:
        """Send ``op`` and wait for its result; SimulatorError with the reason if it fails."""
        self.wait_ready()
        rid = next(self._ids)
        try:
            with self._send_lock:
                self._stream.stdin.write(json.dumps({"id": rid, "op": op, **fields}) + "\n")
                self._stream.stdin.flush()
        except (BrokenPipeError, OSError):
            raise self._dead(op) from None
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while rid not in self._answers:
                if not self.alive and rid not in self._answers:
                    self._cond.wait(0.2)  # let the reader drain what was written last
                    if rid not in self._answers:
                        raise self._dead(op)
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    self.kill()
                    raise SimulatorError(f"the ns-3 simulator did not finish {op!r} within "
                                         f"{timeout:g}s of wall time; it was stopped")
                self._cond.wait(1.0 if left is None else min(left, 1.0))
            answer = self._answers.pop(rid)
        if not answer.get("ok"):
            raise SimulatorError(answer.get("error") or f"{op} failed")
        return answer.get("result")

    def close(self, timeout: float = 5.0) -> None:
        """Ask the worker to quit (end-of-file on its stdin); kill it if it does not."""
        if self.alive:
            self._stream.close_stdin()
            if self._stream.wait(timeout) is None:
                self.kill()

    def kill(self) -> None:
        """Kill the worker's process group (here or on its host)."""
        self._stream.kill()


def worker_command(python: str, script: str | None = None, die_with_parent: bool = False) -> str:
    """The shell command that runs the worker: ``script`` (default: this package's
    worker.py; it imports nothing of the project) with ``python``, which has ns3."""
    command = f"exec {shlex.quote(python)} -u {shlex.quote(script or WORKER_SCRIPT)}"
    return command + (" --die-with-parent" if die_with_parent else "")


#: the one thread that starts local simulator processes. The worker dies with its parent
#: (--die-with-parent: PR_SET_PDEATHSIG), and Linux means the parent *thread*: it must be
#: one that lives as long as the controller process, not a dispatcher or release thread.
_LAUNCHER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ns3-launcher")


def _spawn_local() -> LocalStream:
    command = worker_command(settings.ns3_python(), die_with_parent=True)
    return _LAUNCHER.submit(LocalStream, command).result()


# -- the spare ------------------------------------------------------------------------------
_spare: SimulatorProcess | None = None
_spare_lock = threading.Lock()


def acquire() -> SimulatorProcess:
    """A simulator process for one run: the waiting spare if there is one, else a new one."""
    global _spare
    with _spare_lock:
        proc, _spare = _spare, None
    if proc is not None and proc.alive:
        return proc
    return SimulatorProcess()


def give_back(proc: SimulatorProcess) -> None:
    """Keep a process whose run ended cleanly as the spare (ns-3 was reset by
    Simulator::Destroy); kill it if a spare is already waiting."""
    global _spare
    if proc.alive and settings.ns3_spare():
        with _spare_lock:
            if _spare is None or not _spare.alive:
                _spare, proc = proc, None
    if proc is not None:
        proc.kill()


def prewarm() -> None:
    """Start importing ns-3 in a spare process for the next run (if enabled and none waits)."""
    global _spare
    if not settings.ns3_spare():
        return
    with _spare_lock:
        if _spare is None or not _spare.alive:
            _spare = SimulatorProcess()


@atexit.register
def _close_spare() -> None:
    global _spare
    with _spare_lock:
        proc, _spare = _spare, None
    if proc is not None:
        proc.kill()
