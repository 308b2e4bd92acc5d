"""LinuxTraceroute: traceroute from a LinuxNode, with the hop list parsed."""

from __future__ import annotations

import shlex

from nepi_prefect.execution.attribute import Attribute, Flags, Types
from nepi_prefect.execution.resource import clsinit_copy
from nepi_prefect.resources.linux.measurement import LinuxMeasurement, opt
from nepi_prefect.resources.linux.parsers import Hop, parse_traceroute, traceroute_metrics


@clsinit_copy
class LinuxTraceroute(LinuxMeasurement):
    """Traces the route to ``target``; metrics: hops, responding_hops, reached,
    last_hop_rtt_ms; :meth:`hop_list` gives every hop."""

    _rtype = "LinuxTraceroute"
    _help = ("Runs traceroute on a LinuxNode; get_metrics() gives hops, responding_hops, "
             "reached (1/0) and last_hop_rtt_ms; hop_list() the parsed hops")

    @classmethod
    def _register_attributes(cls) -> None:
        D = Flags.Design
        cls._register_attribute(Attribute(
            "depends", "Packages to install", default="traceroute", flags=D))
        cls._register_attribute(Attribute("target", "Host name or address to trace",
                                          flags=D | Flags.Required))
        for name, help_, type_, rng in (
            ("maxHops", "Largest TTL probed (-m)", Types.Integer, (1, 255)),
            ("firstHop", "TTL of the first probe (-f)", Types.Integer, (1, 255)),
            ("queries", "Probes per hop (-q)", Types.Integer, (1, 10)),
            ("waitTime", "Seconds to wait for each probe's answer (-w)", Types.Double, (0, 3600)),
            ("port", "Destination port (-p)", Types.Integer, (1, 65535)),
            ("packetLength", "Probe packet length in bytes", Types.Integer, (28, 65000)),
        ):
            cls._register_attribute(Attribute(name, help_, type=type_, range=rng, flags=D))
        cls._register_attribute(Attribute(
            "numeric", "Print addresses only, no reverse DNS (-n)", type=Types.Bool,
            default=True, flags=D))
        cls._register_attribute(Attribute(
            "method", "Probe method: udp (default), icmp (-I, needs root) or tcp (-T, needs root)",
            type=Types.Enumerate, allowed=["udp", "icmp", "tcp"], default="udp", flags=D))

    def build_command(self) -> str:
        target = self.get("target")
        if not target:
            raise ValueError(f"{self._rtype} {self.guid}: set 'target'")
        args = ["traceroute"]
        if self.get("numeric"):
            args.append("-n")
        args += {"udp": [], "icmp": ["-I"], "tcp": ["-T"]}[self.get("method")]
        for name, flag in (("maxHops", "-m"), ("firstHop", "-f"), ("queries", "-q"),
                           ("waitTime", "-w"), ("port", "-p")):
            args += opt(flag, self.get(name))
        args.append(shlex.quote(target))
        if self.get("packetLength") is not None:
            args.append(str(self.get("packetLength")))
        return " ".join(args)

    def parse_results(self, exitcode: int | None, stdout: str) -> dict[str, float]:
        return traceroute_metrics(stdout)

    def hop_list(self) -> list[Hop]:
        """The hops traced so far (each with its probes: address, name, rtt_ms)."""
        return parse_traceroute(self.trace("stdout") or "")
