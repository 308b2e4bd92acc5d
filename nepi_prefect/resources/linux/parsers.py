"""Pure parsers for the output of measurement tools (ping, traceroute, iperf3,
tcpdump, pcap files).

Nothing here runs a command or touches an RM: each function takes the text
(or bytes) a tool produced and returns plain data, so it can be tested on
captured output alone.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Hop", "Probe", "PcapInfo", "Iperf3Error",
    "parse_ping", "parse_ping_replies", "parse_traceroute", "traceroute_metrics",
    "parse_iperf3", "parse_tcpdump_stats", "pcap_info",
]

# -- ping ---------------------------------------------------------------------

_PING_COUNTS = re.compile(
    r"(?P<sent>\d+) packets transmitted, (?P<received>\d+) (?:packets )?received"
    r"(?:, \+(?P<duplicates>\d+) duplicates)?"
    r"(?:, \+(?P<errors>\d+) errors)?"
    r", (?P<loss>[\d.]+)% packet loss")
# iputils says "rtt", busybox and BSD say "round-trip"; mdev is "stddev" on BSD.
_PING_RTT = re.compile(
    r"(?:rtt|round-trip) min/avg/max(?:/(?:mdev|stddev))? = "
    r"(?P<min>[\d.]+)/(?P<avg>[\d.]+)/(?P<max>[\d.]+)(?:/(?P<mdev>[\d.]+))? ms")
_PING_REPLY = re.compile(
    r"bytes from (?P<addr>\S+?):? .*?icmp_seq=(?P<seq>\d+)"
    r"(?: ttl=(?P<ttl>\d+))?(?: time=(?P<time>[\d.]+) ms)?")


def parse_ping(text: str) -> dict[str, float]:
    """The summary figures of a ping run.

    Returns ``packets_sent``, ``packets_received``, ``packet_loss_pct`` and
    ``ping_errors``; plus ``rtt_min_ms``, ``rtt_avg_ms``, ``rtt_max_ms`` and
    ``rtt_mdev_ms`` when at least one reply came back. Empty if the text has
    no statistics (ping was killed before it printed them).
    """
    metrics: dict[str, float] = {}
    counts = _PING_COUNTS.search(text)
    if counts:
        metrics["packets_sent"] = int(counts["sent"])
        metrics["packets_received"] = int(counts["received"])
        metrics["packet_loss_pct"] = float(counts["loss"])
        metrics["ping_errors"] = int(counts["errors"] or 0)
        if counts["duplicates"]:
            metrics["ping_duplicates"] = int(counts["duplicates"])
    rtt = _PING_RTT.search(text)
    if rtt:
        for key in ("min", "avg", "max", "mdev"):
            if rtt[key] is not None:
                metrics[f"rtt_{key}_ms"] = float(rtt[key])
    return metrics


def parse_ping_replies(text: str) -> list[dict[str, Any]]:
    """One dict per echo reply line: ``seq``, ``address``, ``ttl``, ``time_ms``."""
    replies = []
    for match in _PING_REPLY.finditer(text):
        replies.append({
            "seq": int(match["seq"]),
            "address": match["addr"],
            "ttl": int(match["ttl"]) if match["ttl"] else None,
            "time_ms": float(match["time"]) if match["time"] else None,
        })
    return replies


# -- traceroute -------------------------------------------------------------------

@dataclass
class Probe:
    """One probe of a hop: who answered and how fast (``None`` for ``*``)."""

    address: str | None
    name: str | None = None
    rtt_ms: float | None = None
    #: traceroute's ``!H``, ``!N``, ``!X``... annotations
    flags: list[str] = field(default_factory=list)


@dataclass
class Hop:
    """One line of traceroute: the TTL and the probes sent with it."""

    ttl: int
    probes: list[Probe]

    @property
    def addresses(self) -> list[str]:
        """Distinct addresses that answered, in order."""
        seen: list[str] = []
        for p in self.probes:
            if p.address and p.address not in seen:
                seen.append(p.address)
        return seen

    @property
    def rtts_ms(self) -> list[float]:
        return [p.rtt_ms for p in self.probes if p.rtt_ms is not None]

    @property
    def responded(self) -> bool:
        return bool(self.addresses)


_TR_HOP = re.compile(r"^\s*(\d+)\s+(.*)$")
_TR_HEADER = re.compile(r"^traceroute to \S+ \((?P<addr>[^)]+)\)")
_NUMBER = re.compile(r"^<?\d+(?:\.\d+)?$")


def _parse_hop_fields(tokens: list[str]) -> list[Probe]:
    probes: list[Probe] = []
    address = name = None
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if tok == "*":
            probes.append(Probe(None))
        elif tok.startswith("!"):
            if probes:
                probes[-1].flags.append(tok)
        elif _NUMBER.match(tok) and i + 1 < len(tokens) and tokens[i + 1] == "ms":
            probes.append(Probe(address, name, float(tok.lstrip("<"))))
            i += 1  # skip "ms"
        elif tok.startswith("(") and tok.endswith(")"):
            address = tok[1:-1]  # "name (address)": the name came just before
        else:
            # a new responder: an address, or a name whose address follows in ()
            name, address = None, tok
            if i + 1 < len(tokens) and tokens[i + 1].startswith("("):
                name = tok
        i += 1
    return probes


def parse_traceroute(text: str) -> list[Hop]:
    """The hops of a traceroute (Linux ``traceroute``, with or without ``-n``)."""
    hops = []
    for line in text.splitlines():
        match = _TR_HOP.match(line)
        if match and not line.startswith("traceroute"):
            hops.append(Hop(int(match[1]), _parse_hop_fields(match[2].split())))
    return hops


def traceroute_metrics(text: str) -> dict[str, float]:
    """``hops`` (lines), ``responding_hops``, ``reached`` (1/0 when the target
    answered the last hop) and ``last_hop_rtt_ms`` (mean RTT of the last hop)."""
    hops = parse_traceroute(text)
    metrics: dict[str, float] = {
        "hops": len(hops),
        "responding_hops": sum(1 for h in hops if h.responded),
    }
    header = _TR_HEADER.search(text)
    if header and hops:
        metrics["reached"] = 1 if header["addr"] in hops[-1].addresses else 0
    if hops and hops[-1].rtts_ms:
        rtts = hops[-1].rtts_ms
        metrics["last_hop_rtt_ms"] = sum(rtts) / len(rtts)
    return metrics


# -- iperf3 ---------------------------------------------------------------------------

class Iperf3Error(ValueError):
    """iperf3 reported an error (its JSON has an ``error`` field) or printed no JSON."""


def parse_iperf3(text: str) -> dict[str, float]:
    """Figures of an ``iperf3 --json`` run, client or server side, UDP or TCP.

    ``throughput_bps`` / ``throughput_mbps`` (as received), ``bytes``,
    ``duration_s``; for UDP also ``jitter_ms``, ``lost_packets``, ``packets``
    and ``loss_pct``.
    """
    try:
        data = json.loads(text[text.index("{"):]) if "{" in text else None
    except (json.JSONDecodeError, ValueError) as exc:
        raise Iperf3Error(f"iperf3 output is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise Iperf3Error("iperf3 printed no JSON")
    if data.get("error"):
        raise Iperf3Error(f"iperf3: {data['error']}")
    end = data.get("end") or {}
    # sum_received is what actually arrived; older iperf3 only has "sum".
    received = end.get("sum_received") or end.get("sum")
    if not received:
        raise Iperf3Error("iperf3 JSON has no end summary")
    udp = end.get("sum") or received
    metrics: dict[str, float] = {
        "throughput_bps": float(received["bits_per_second"]),
        "throughput_mbps": float(received["bits_per_second"]) / 1e6,
        "bytes": int(received.get("bytes", 0)),
        "duration_s": float(received.get("seconds", 0.0)),
    }
    if "jitter_ms" in udp:
        metrics.update({
            "jitter_ms": float(udp["jitter_ms"]),
            "lost_packets": int(udp.get("lost_packets", 0)),
            "packets": int(udp.get("packets", 0)),
            "loss_pct": float(udp.get("lost_percent", 0.0)),
        })
    return metrics


# -- tcpdump and pcap ----------------------------------------------------------------

_TCPDUMP_STATS = {
    "packets_captured": re.compile(r"(\d+) packets? captured"),
    "packets_received_by_filter": re.compile(r"(\d+) packets? received by filter"),
    "packets_dropped_by_kernel": re.compile(r"(\d+) packets? dropped by kernel"),
}


def parse_tcpdump_stats(stderr: str) -> dict[str, float]:
    """The counters tcpdump prints on stderr when it exits."""
    metrics: dict[str, float] = {}
    for key, pattern in _TCPDUMP_STATS.items():
        match = pattern.search(stderr)
        if match:
            metrics[key] = int(match[1])
    return metrics


@dataclass
class PcapInfo:
    """What the header and records of a classic pcap file say."""

    linktype: int
    snaplen: int
    nanosecond: bool
    packets: int
    #: the file ends inside a record (tcpdump was killed mid-write)
    truncated: bool


_PCAP_MAGIC = {
    b"\xa1\xb2\xc3\xd4": (">", False), b"\xd4\xc3\xb2\xa1": ("<", False),
    b"\xa1\xb2\x3c\x4d": (">", True), b"\x4d\x3c\xb2\xa1": ("<", True),
}


def pcap_info(data: bytes) -> PcapInfo:
    """Check a classic pcap file and count its records; ValueError if it is not one."""
    if len(data) < 24 or data[:4] not in _PCAP_MAGIC:
        raise ValueError("not a pcap file: no pcap magic number in the first 4 bytes")
    order, nano = _PCAP_MAGIC[data[:4]]
    _major, _minor, _zone, _sigfigs, snaplen, linktype = struct.unpack(order + "HHiIII", data[4:24])
    offset, packets = 24, 0
    while offset + 16 <= len(data):
        incl_len = struct.unpack(order + "I", data[offset + 8:offset + 12])[0]
        if offset + 16 + incl_len > len(data):
            break
        offset += 16 + incl_len
        packets += 1
    return PcapInfo(linktype, snaplen, nano, packets, truncated=offset != len(data))
