"""LinuxTcpdump: a packet capture on a LinuxNode, written to the ``pcap`` trace."""

from __future__ import annotations

import functools
import shlex
import time
from typing import Any

from nepi_prefect.execution.attribute import Attribute, Flags, Types
from nepi_prefect.execution.resource import ResourceState, clsinit_copy
from nepi_prefect.execution.trace import Trace, TraceAttr
from nepi_prefect.resources.linux.measurement import LinuxMeasurement, opt
from nepi_prefect.resources.linux.parsers import parse_tcpdump_stats
from nepi_prefect.transport.base import TransportError

#: how long a start waits for tcpdump to say it captures before it counts as STARTED anyway
CAPTURE_WAIT = 10.0
#: how often it looks (one short command on the node's open shell)
CAPTURE_POLL = "50ms"


@clsinit_copy
class LinuxTcpdump(LinuxMeasurement):
    """Captures packets with ``tcpdump -w`` into the ``pcap`` trace; metrics:
    packets_captured, packets_received_by_filter, packets_dropped_by_kernel."""

    _rtype = "LinuxTcpdump"
    _finishes_by_itself = False  # a capture runs until it is stopped
    _help = ("Captures packets with tcpdump (under sudo unless root) into the 'pcap' trace; "
             "STARTED once it captures; stopping it flushes the file; metrics: packets_captured, "
             "packets_received_by_filter, packets_dropped_by_kernel")

    # -- start: STARTED once capturing ---------------------------------------------------
    def _launched(self, rc: int | None, out: str) -> None:
        """STARTED once tcpdump captures (it says "listening on"), not once launched:
        sudo and opening the capture take a while, and what starts on this STARTED (a
        condition) must not send packets before the capture sees them."""
        pid = self._launched_pid(rc, out)
        if pid is None:
            super()._launched(rc, out)  # launching failed: it says why
            return
        self._await_capture(rc, out, pid, time.monotonic() + CAPTURE_WAIT)

    def _await_capture(self, rc: int, out: str, pid: int, deadline: float) -> None:
        if self.state not in (ResourceState.READY, ResourceState.STOPPED):
            return  # released (killed) while it was opening the capture
        try:
            status = self._capture_status(pid)
        except TransportError as exc:  # the host is going: its monitor will say so
            self.debug(f"could not see whether tcpdump captures: {exc}")
            status = "ended"
        if status == "opening" and time.monotonic() < deadline:
            self.ec.schedule(CAPTURE_POLL, functools.partial(
                self._await_capture, rc, out, pid, deadline))
            return
        if status == "opening":
            self.warning(f"tcpdump did not say it captures within {CAPTURE_WAIT:g} s; "
                         f"counted as STARTED anyway")
        # "ended" too: STARTED, then the monitor sees it exited and fails it with its stderr
        super()._launched(rc, out)

    def _capture_status(self, pid: int) -> str:
        """capturing, opening (still running, not yet capturing) or ended."""
        stderr = shlex.quote(self.trace_path("stderr"))
        result = self.node.transport.run(
            f"grep -qs 'listening on' {stderr} && echo capturing || "
            f"{{ [ -d /proc/{pid} ] && echo opening || echo ended; }}", timeout=30)
        return result.stdout.strip() or "ended"

    @classmethod
    def _register_attributes(cls) -> None:
        D = Flags.Design
        cls._register_attribute(Attribute(
            "depends", "Packages to install", default="tcpdump", flags=D))
        cls._register_attribute(Attribute(
            "sudo", "Run tcpdump with sudo (ignored when the node's user is root)",
            type=Types.Bool, default=True, flags=D))
        cls._register_attribute(Attribute(
            "interface", "Interface to listen on (-i); 'any' for all", default="any", flags=D))
        cls._register_attribute(Attribute(
            "filter", "Capture filter expression (pcap-filter syntax)", flags=D))
        for name, help_, rng in (
            ("snaplen", "Bytes kept of each packet (-s); 0 keeps them whole", (0, 262144)),
            ("count", "Exit after this many packets (-c)", (1, None)),
            ("bufferSize", "Kernel capture buffer in KiB (-B)", (1, None)),
        ):
            cls._register_attribute(Attribute(name, help_, type=Types.Integer, range=rng, flags=D))
        cls._register_attribute(Attribute(
            "promiscuous", "Put the interface in promiscuous mode (unset: -p)",
            type=Types.Bool, default=True, flags=D))

    @classmethod
    def _register_traces(cls) -> None:
        cls._register_trace(Trace("pcap", "The capture file (PATH: its path, ALL: its bytes)"))

    def build_command(self) -> str:
        # --immediate-mode hands each packet over at once (otherwise packets still
        # in the kernel's ring when tcpdump is stopped are lost), and -U writes it
        # at once: the file is a whole pcap at any moment, even before a stop.
        args = ["tcpdump", "--immediate-mode", "-U", "-w", "pcap"]
        args += opt("-i", self.get("interface"))
        for name, flag in (("snaplen", "-s"), ("count", "-c"), ("bufferSize", "-B")):
            args += opt(flag, self.get(name))
        if not self.get("promiscuous"):
            args.append("-p")
        if self.get("filter"):
            args.append(shlex.quote(self.get("filter")))
        return " ".join(args)

    def parse_results(self, exitcode: int | None, stdout: str) -> dict[str, float]:
        # tcpdump prints its counters on stderr when it exits
        return parse_tcpdump_stats(self._read_text("stderr") or "")

    def trace(self, name: str, attr: str = TraceAttr.ALL, block: int = 512,
              offset: int = 0) -> Any:
        """The pcap trace is binary: ALL and STREAM give bytes."""
        if name != "pcap" or attr not in (TraceAttr.ALL, TraceAttr.STREAM):
            return super().trace(name, attr, block, offset)
        path = self.trace_path(name)
        if path is None:
            return None
        if attr == TraceAttr.STREAM:
            return self.node.transport.read(path, offset * block, block) or b""
        return self.node.transport.read(path)
