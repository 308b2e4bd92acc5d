"""The common base of the measurement RMs (ping, traceroute, tcpdump, udp test).

A measurement tool prints its summary (ping's statistics, tcpdump's counters,
a flushed pcap) only when it ends on its own or on SIGINT. So stopping one
sends SIGINT to its process group first, waits a little for the exit
code to be recorded, and parses what the tool printed, before the base
class kills whatever is left.
"""

from __future__ import annotations

import shlex
import threading

from nepi_prefect.execution.attribute import Attribute, Flags, Types
from nepi_prefect.execution.resource import ResourceState, clsinit_copy
from nepi_prefect.resources.linux.application import LinuxApplication
from nepi_prefect.resources.linux.node import LinuxNode


def opt(flag: str, value: object) -> list[str]:
    """``[flag, value]`` shell-quoted, or nothing when the value is unset."""
    if value is None or value == "":
        return []
    return [flag, shlex.quote(str(value))]


@clsinit_copy
class LinuxMeasurement(LinuxApplication):
    """A LinuxApplication whose results are parsed into metrics when it ends or is stopped."""

    _rtype = "LinuxMeasurement"
    _help = "Base of the measurement applications: stops with SIGINT so the tool prints its summary."

    _parses_stdout = True  # the metrics come from what the tool printed
    #: the signal that makes the tool print its summary and exit
    stop_signal = "INT"

    @classmethod
    def _register_attributes(cls) -> None:
        cls._register_attribute(Attribute(
            "stopTimeout", "Seconds to wait for the tool to exit after SIGINT when stopped",
            type=Types.Double, default=5.0, range=(0, 600), flags=Flags.Design))

    def __init__(self, ec, guid):
        super().__init__(ec, guid)
        # Guards the end of the process: the monitor's exit report and a stop
        # may both arrive; only the first one parses and moves the state.
        self._end_lock = threading.Lock()
        self._stopping = False

    def on_finished(self, exitcode: int | None, stdout: str) -> None:
        try:
            self._metrics.update(self.parse_results(exitcode, stdout))
        except Exception as exc:  # bad output: the exit code decides the state, not the parser
            self.warning(f"could not parse the results: {exc}")
        super().on_finished(exitcode, stdout)

    def parse_results(self, exitcode: int | None, stdout: str) -> dict[str, float]:
        """Metrics from the tool's output; subclasses override this."""
        return {}

    def do_start(self) -> None:
        self._stopping = False
        self._metrics.clear()
        super().do_start()

    def on_process_exited(self, exitcode: int | None, outputs: dict[str, bytes] | None = None,
                          lost: str | None = None) -> None:
        with self._end_lock:
            if self._stopping:
                return
            super().on_process_exited(exitcode, outputs, lost)

    def do_stop(self) -> None:
        with self._end_lock:
            if self.state != ResourceState.STARTED:
                return
            self._stopping = True
        node = self.node
        node.monitor.unwatch(self)
        exitcode = self._signal_and_wait(node) if self._pid is not None else None
        self._final_stdout = self._read_text("stdout") or ""
        self.on_finished(exitcode, self._final_stdout)
        super().do_stop()

    def _signal_and_wait(self, node: LinuxNode) -> int | None:
        """Send ``stop_signal`` to the process group; the exit code, or None if it hung."""
        sudo = "sudo -n " if self.get("sudo") and not node.is_root else ""
        home = shlex.quote(self._run_home)
        ticks = int(self.get("stopTimeout") * 10)
        script = (f"{sudo}kill -{self.stop_signal} -- -{self._pid} 2>/dev/null; i=0; "
                  f"while [ ! -f {home}/exitcode ] && [ $i -lt {ticks} ]; do sleep 0.1; "
                  f"i=$((i+1)); done; cat {home}/exitcode 2>/dev/null; true")
        result = node.transport.run(script, timeout=self.get("stopTimeout") + 30)
        try:
            return int(result.stdout.strip())
        except ValueError:
            self.warning(f"no exit code {self.get('stopTimeout')} s after SIG{self.stop_signal}")
            return None
