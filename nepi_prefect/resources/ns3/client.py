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
import subprocess
import threading
import time
from typing import Any, Callable

from nepi_prefect import settings

#: seconds the first ``from ns import ns`` may take (cppyy compiles the bindings:
#: 8 s on an idle 2-core machine, 4-5 minutes on the same machine shared by 8 jobs)
IMPORT_TIMEOUT = 900.0

EventHandler = Callable[[dict], None]


class SimulatorError(RuntimeError):
    """The simulator refused a request, crashed or did not answer in time."""


class SimulatorProcess:
    """One ns-3 worker process and its JSON-lines pipe."""

    def __init__(self) -> None:
        self._proc = subprocess.Popen(
            [settings.ns3_python(), "-m", "nepi_prefect.resources.ns3.worker"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, bufsize=1, start_new_session=True)
        self.pid = self._proc.pid
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
        for line in self._proc.stdout:
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
        for line in self._proc.stderr:
            if "Failed to materialize symbols" not in line:  # harmless cppyy noise
                self._stderr.append(line.rstrip())

    @property
    def alive(self) -> bool:
        return self._proc.poll() is None

    def last_output(self, lines: int = 8) -> str:
        """The simulator's last words: ns-3's abort message first, when there is one."""
        text = list(self._stderr)
        fatal = [m.group(1) for m in (re.search(r'msg="(.*?)"', t) for t in text) if m]
        tail = [t for t in text if t.strip() and not t.startswith(("#", " ***"))][-lines:]
        return "; ".join(fatal) if fatal else " | ".join(tail)

    def _dead(self, what: str) -> SimulatorError:
        code = self._proc.poll()
        return SimulatorError(f"the ns-3 simulator process (pid {self.pid}) exited with code "
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
                self._proc.stdin.write(json.dumps({"id": rid, "op": op, **fields}) + "\n")
                self._proc.stdin.flush()
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
        """Ask the worker to quit; kill it if it does not."""
        if self.alive:
            try:
                self._proc.stdin.close()  # EOF: the worker's loop ends
            except OSError:
                pass
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()

    def kill(self) -> None:
        if self.alive:
            try:
                os.killpg(self.pid, 9)
            except ProcessLookupError:
                pass
            self._proc.wait(10)


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
