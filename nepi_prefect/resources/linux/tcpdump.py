"""LinuxTcpdump: a packet capture on a LinuxNode, written to the ``pcap`` trace."""

from __future__ import annotations

import shlex
from typing import Any

from nepi_prefect.execution.attribute import Attribute, Flags, Types
from nepi_prefect.execution.resource import clsinit_copy
from nepi_prefect.execution.trace import Trace, TraceAttr
from nepi_prefect.resources.linux.measurement import LinuxMeasurement, opt
from nepi_prefect.resources.linux.parsers import parse_tcpdump_stats


@clsinit_copy
class LinuxTcpdump(LinuxMeasurement):
    """Captures packets with ``tcpdump -w`` into the ``pcap`` trace; metrics:
    packets_captured, packets_received_by_filter, packets_dropped_by_kernel."""

    _rtype = "LinuxTcpdump"
    _finishes_by_itself = False  # a capture runs until it is stopped
    # STARTED once it captures, not once launched: sudo and opening the capture take a
    # while, and what starts on this STARTED must not send packets before it sees them
    _ready_when = ("stderr", "listening on")
    _help = ("Captures packets with tcpdump (under sudo unless root) into the 'pcap' trace; "
             "STARTED once it captures; stopping it flushes the file; metrics: packets_captured, "
             "packets_received_by_filter, packets_dropped_by_kernel")

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
