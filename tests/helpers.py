"""Small helpers shared by the test modules: polling with a deadline, and
experiments built by hand."""

from __future__ import annotations

import os
import shlex
import time
from typing import Callable, Iterator, TypeVar

from nepi_prefect.execution.ec import ExperimentController
from nepi_prefect.execution.recording import Recorder

T = TypeVar("T")


def wait_until(predicate: Callable[[], T], timeout: float = 30.0,
               message: str | Callable[[], str] | None = None, interval: float = 0.05) -> T:
    """Poll ``predicate`` until it returns something true, and return that.

    Fails the test after ``timeout`` seconds, saying what was awaited: ``message``
    (a callable is called then, e.g. to read a log), else the predicate's name.
    The one poll-until of the suite: tests never sleep to synchronise.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            what = message() if callable(message) else message
            what = what or getattr(predicate, "__name__", "condition")
            raise AssertionError(f"not reached within {timeout:g} s: {what}")
        time.sleep(interval)


def until_file_command(path: str | os.PathLike, seconds: float = 120) -> str:
    """A shell command that runs until ``path`` exists (at most ``seconds``), then
    ends with status 0: an app that is still running when the test needs it to be,
    however slow the machine, and ends when the test says so."""
    polls = int(seconds * 10)
    return (f"for i in $(seq {polls}); do [ -e {shlex.quote(str(path))} ] && break; "
            f"sleep 0.1; done")


def engine_ec(tmp_path, prefix: str) -> Iterator[ExperimentController]:
    """An engine-only EC (no Prefect record) with results under ``tmp_path``; shut down after."""
    ec = ExperimentController(exp_id=f"{prefix}-{os.urandom(3).hex()}", local_dir=str(tmp_path),
                              recorder=Recorder())
    try:
        yield ec
    finally:
        ec.shutdown()


def add_rm(ec: ExperimentController, rtype: str, node: int | None = None, **attrs) -> int:
    """Register an RM of ``rtype`` with ``attrs`` set, connected to ``node`` if given."""
    guid = ec.register_resource(rtype)
    for name, value in attrs.items():
        ec.set(guid, name, value)
    if node is not None:
        ec.register_connection(guid, node)
    return guid


class RunsRecorder(Recorder):
    """Keeps the action runs the engine reports, by id; ``named(name)`` finds them."""

    def __init__(self):
        self.runs = {}

    def action_changed(self, run):
        self.runs[run.id] = run

    def named(self, name: str) -> list:
        return [r for r in self.runs.values() if r.name == name]
