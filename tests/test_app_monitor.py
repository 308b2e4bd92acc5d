"""A node's AppMonitor drives anything that follows its small public protocol
(``WatchedProcess``: ``run_home`` and ``on_process_exited``), not only LinuxApplication."""

from __future__ import annotations

import threading
import time

from nepi_prefect.execution.resource import ResourceState
from nepi_prefect.resources.linux.monitor import MAX_HOLD
from nepi_prefect.resources.linux.node import AppMonitor
from tests.helpers import add_rm, engine_ec


class Watched:
    """A process that is not an RM: a directory with a pid and, later, an exit code."""

    def __init__(self, run_home: str):
        self.run_home = run_home
        self.codes: list[int | None] = []
        self.done = threading.Event()

    def on_process_exited(self, exitcode: int | None, outputs: dict[str, bytes] | None = None,
                          lost: str | None = None) -> None:
        self.codes.append(exitcode)
        self.done.set()


def test_the_monitor_reports_exit_codes_through_the_protocol(tmp_path):
    for ec in engine_ec(tmp_path, "monitor"):
        node = add_rm(ec, "LinuxNode", hostname="localhost", home=str(tmp_path / "home"))
        ec.deploy()
        ec.wait_deployed([node], timeout=60)
        assert ec.state(node) in (ResourceState.READY, ResourceState.STARTED)
        monitor: AppMonitor = ec.get_resource(node).monitor
        finished, vanished = tmp_path / "finished", tmp_path / "vanished"
        finished.mkdir()
        vanished.mkdir()
        (finished / "exitcode").write_text("7\n")
        (vanished / "pid").write_text("999999999\n")  # no such process, no exit code
        watched = [Watched(str(finished)), Watched(str(vanished))]
        for w in watched:
            monitor.watch(w)
        for w in watched:
            assert w.done.wait(30), f"{w.run_home} was never reported"
        assert [w.codes for w in watched] == [[7], [None]]


def test_polls_wait_for_the_launches_then_come_soon_and_never_wait_forever(tmp_path):
    """While the node's launches are on their way (``busy``) the monitor holds its
    polls, at most MAX_HOLD; once they drained (``nudge``) it polls at once."""
    for ec in engine_ec(tmp_path, "monitor-hold"):
        node = add_rm(ec, "LinuxNode", hostname="localhost", home=str(tmp_path / "home"))
        ec.deploy()
        ec.wait_deployed([node], timeout=60)
        launching = threading.Event()
        launching.set()
        monitor = AppMonitor(ec.get_resource(node), busy=launching.is_set)
        try:
            held, drained = tmp_path / "held", tmp_path / "drained"
            for d in (held, drained):
                d.mkdir()
                (d / "exitcode").write_text("0\n")
            # launches never drain: the end is still seen, after the hold
            start = time.monotonic()
            first = Watched(str(held))
            monitor.watch(first)
            assert first.done.wait(30), "a hold that never ends starved the poll"
            assert time.monotonic() - start >= MAX_HOLD * 0.9
            # a new hold, which the end of the launches cuts short
            second = Watched(str(drained))
            monitor.watch(second)
            launching.clear()
            monitor.nudge()
            assert second.done.wait(30)
            assert [first.codes, second.codes] == [[0], [0]]
        finally:
            monitor.stop()
