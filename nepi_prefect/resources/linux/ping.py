"""LinuxPing: iputils ping from a LinuxNode, with its statistics as metrics."""

from __future__ import annotations

import shlex

from nepi_prefect.execution.attribute import Attribute, Flags, Types
from nepi_prefect.execution.resource import clsinit_copy
from nepi_prefect.resources.linux.measurement import LinuxMeasurement, opt
from nepi_prefect.resources.linux.parsers import parse_ping, parse_ping_replies


@clsinit_copy
class LinuxPing(LinuxMeasurement):
    """Pings ``target``; metrics: rtt_min/avg/max/mdev_ms, packet_loss_pct,
    packets_sent, packets_received (and ping_errors)."""

    _rtype = "LinuxPing"
    _help = ("Runs ping (iputils) on a LinuxNode; get_metrics() gives rtt_min_ms, rtt_avg_ms, "
             "rtt_max_ms, rtt_mdev_ms, packet_loss_pct, packets_sent, packets_received")

    @classmethod
    def _register_attributes(cls) -> None:
        D = Flags.Design
        cls._register_attribute(Attribute(
            "depends", "Packages to install", default="iputils-ping", flags=D))
        cls._register_attribute(Attribute("target", "Host name or address to ping",
                                          flags=D | Flags.Required))
        for name, help_, type_, rng in (
            ("count", "Stop after sending this many requests (-c); unset: until stopped",
             Types.Integer, (1, None)),
            ("interval", "Seconds between requests (-i); below 0.2 needs root",
             Types.Double, (0.002, 3600)),
            ("packetSize", "Data bytes per request (-s)", Types.Integer, (0, 65507)),
            ("ttl", "IP time to live (-t)", Types.Integer, (1, 255)),
            ("deadline", "Seconds before ping exits, whatever was sent (-w)",
             Types.Integer, (1, None)),
            ("timeout", "Seconds to wait for each reply (-W)", Types.Double, (0.001, 3600)),
            ("preload", "Requests sent before waiting for replies (-l)", Types.Integer, (1, 65536)),
            ("tos", "Type of service / DSCP byte (-Q)", Types.Integer, (0, 255)),
            ("mark", "Socket mark, for policy routing (-m)", Types.Integer, (0, None)),
        ):
            cls._register_attribute(Attribute(name, help_, type=type_, range=rng, flags=D))
        for name, help_ in (
            ("quiet", "Print only the summary (-q)"),
            ("numeric", "Do not resolve addresses to names (-n)"),
            ("printTimestamp", "Print a timestamp before each line (-D)"),
            ("audibleBell", "Beep on each reply (-a)"),
            ("noRoute", "Bypass the routing tables (-r)"),
        ):
            cls._register_attribute(Attribute(name, help_, type=Types.Bool, default=False, flags=D))

    def build_command(self) -> str:
        target = self.get("target")
        if not target:
            raise ValueError(f"{self._rtype} {self.guid}: set 'target'")
        args = ["ping"]
        for name, flag in (("count", "-c"), ("interval", "-i"), ("packetSize", "-s"),
                           ("ttl", "-t"), ("deadline", "-w"), ("timeout", "-W"),
                           ("preload", "-l"), ("tos", "-Q"), ("mark", "-m")):
            args += opt(flag, self.get(name))
        for name, flag in (("quiet", "-q"), ("numeric", "-n"), ("printTimestamp", "-D"),
                           ("audibleBell", "-a"), ("noRoute", "-r")):
            if self.get(name):
                args.append(flag)
        return " ".join(args + [shlex.quote(target)])

    def parse_results(self, exitcode: int | None, stdout: str) -> dict[str, float]:
        return parse_ping(stdout)

    def replies(self) -> list[dict]:
        """Each echo reply seen so far: seq, address, ttl, time_ms."""
        return parse_ping_replies(self.trace("stdout") or "")
