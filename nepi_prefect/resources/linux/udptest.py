"""LinuxUdpTest: a UDP throughput, jitter and loss test with iperf3.

Two RMs make a test: one with ``mode`` server (``iperf3 -s -1``: it serves
one test, then exits) and one with ``mode`` client. Both parse iperf3's
``--json`` report into metrics.
"""

from __future__ import annotations

import re
import shlex

from nepi_prefect.execution.attribute import Attribute, Flags, Types
from nepi_prefect.execution.errors import AttributeValueError
from nepi_prefect.execution.resource import clsinit_copy
from nepi_prefect.resources.linux.measurement import LinuxMeasurement, opt
from nepi_prefect.resources.linux.parsers import parse_iperf3

_BANDWIDTH = r"^\d+(\.\d+)?[KMGkmg]?$"


def _check_bandwidth(_old, new):
    if new is not None and not re.match(_BANDWIDTH, new):
        raise AttributeValueError(f"attribute 'bandwidth': got {new!r}, expected bits per "
                                  f"second such as 500K, 10M or 1G")
    return new


@clsinit_copy
class LinuxUdpTest(LinuxMeasurement):
    """iperf3 UDP test; metrics: throughput_bps, throughput_mbps, jitter_ms,
    lost_packets, packets, loss_pct, bytes, duration_s."""

    _rtype = "LinuxUdpTest"
    _help = ("iperf3 UDP test between a 'server' and a 'client' LinuxUdpTest; get_metrics() "
             "gives throughput_mbps, jitter_ms, loss_pct, lost_packets, packets")

    @classmethod
    def _register_attributes(cls) -> None:
        D = Flags.Design
        cls._register_attribute(Attribute(
            "depends", "Packages to install", default="iperf3", flags=D))
        cls._register_attribute(Attribute(
            "mode", "server (waits for one test) or client (sends to target)",
            type=Types.Enumerate, allowed=["server", "client"], default="client", flags=D))
        cls._register_attribute(Attribute(
            "target", "Address of the server (client mode)", flags=D))
        cls._register_attribute(Attribute(
            "bindAddress", "Local address to bind to (-B)", flags=D))
        cls._register_attribute(Attribute(
            "port", "Server port (-p)", type=Types.Integer, default=5201, range=(1, 65535),
            flags=D))
        cls._register_attribute(Attribute(
            "bandwidth", "Target bit rate (-b), e.g. 500K, 10M, 1G", default="1M", flags=D,
            set_hook=_check_bandwidth))
        cls._register_attribute(Attribute(
            "duration", "Seconds to send for (-t)", type=Types.Double, default=5.0,
            range=(0.1, 86400), flags=D))
        cls._register_attribute(Attribute(
            "packetSize", "UDP payload bytes (-l)", type=Types.Integer, range=(16, 65507),
            flags=D))
        cls._register_attribute(Attribute(
            "reverse", "The server sends and the client receives (-R)", type=Types.Bool,
            default=False, flags=D))
        cls._register_attribute(Attribute(
            "connectRetry", "Client: seconds to keep retrying while the server is not "
            "listening yet", type=Types.Double, default=10.0, range=(0, 3600), flags=D))

    def build_command(self) -> str:
        if self.get("mode") == "server":
            args = ["iperf3", "-s", "-1", "--json"] + opt("-p", self.get("port"))
            args += opt("-B", self.get("bindAddress"))
            # iperf3 --json exits 0 even on errors: the JSON's "error" field decides
            return f"{' '.join(args)} > iperf3.json; cat iperf3.json; ! grep -q '\"error\"' iperf3.json"
        return self._client_command()

    def _client_command(self) -> str:
        target = self.get("target")
        if not target:
            raise ValueError(f"{self._rtype} {self.guid}: a client needs 'target'")
        args = ["iperf3", "-c", shlex.quote(target), "-u", "--json"]
        for name, flag in (("port", "-p"), ("bandwidth", "-b"), ("duration", "-t"),
                           ("packetSize", "-l"), ("bindAddress", "-B")):
            args += opt(flag, self.get(name))
        if self.get("reverse"):
            args.append("-R")
        tries = max(1, int(self.get("connectRetry") / 0.2))
        # retry only while the server refuses: it may still be starting
        return (f"n=0; while :; do {' '.join(args)} > iperf3.json; "
                f"grep -q 'Connection refused' iperf3.json || break; n=$((n+1)); "
                f"[ $n -ge {tries} ] && break; sleep 0.2; done; "
                f"cat iperf3.json; ! grep -q '\"error\"' iperf3.json")

    def parse_results(self, exitcode: int | None, stdout: str) -> dict[str, float]:
        if not stdout.strip():
            return {}
        return parse_iperf3(stdout)
