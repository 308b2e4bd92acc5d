"""NetnsLink (a veth pair, optionally shaped) and NetnsRoute.

A link joins two ends, each a NetnsNode or a NetnsSwitch; end 1 is the end
with the smaller guid (in a description: the one declared first). On a host
the link's interface is ``eth<k>``, k counting the host's links in guid
order; on a switch it is ``p<link guid>``, a port of ``br0``. The veth is
created directly inside the two namespaces, so nothing appears in the root
namespace.

Shaping (delay, jitter, loss, duplicate, reorder, rate) is one root qdisc on
each end's egress, so it applies in both directions: 20 ms of delay gives
40 ms of round-trip time. A rate alone is a tbf; anything else is a netem.
These attributes can change while the experiment runs (``set`` or
``set_with_conditions``): the qdisc is changed in place (``tc qdisc
change``), replaced when its kind changes, removed when every figure is 0.
"""

from __future__ import annotations

import ipaddress
import threading
from typing import Any

from nepi_prefect.execution.attribute import Attribute, Flags, Types
from nepi_prefect.execution.errors import AttributeValueError
from nepi_prefect.execution.resource import ResourceManager, ResourceState, clsinit_copy
from nepi_prefect.resources.netns.node import NetnsNode, NetnsSwitch, endpoint_ready
from nepi_prefect.resources.netns.run import NetnsError, ip_batch, run_of, sh

#: how often a link (or route) checks whether its ends are READY: often enough not to
#: add to a build, rarely enough that 100 waiting links do not load the dispatcher
END_WAIT = "0.1s"
#: the shaping attributes: name -> (help, upper bound)
SHAPING = {
    "delay": ("One-way delay in ms (each direction)", None),
    "jitter": ("Delay variation in ms (needs delay)", None),
    "loss": ("Packet loss in percent", 100.0),
    "duplicate": ("Packet duplication in percent", 100.0),
    "reorder": ("Packets sent at once (out of order) in percent (needs delay)", 100.0),
    "rate": ("Rate limit in Mbit/s (0: none)", None),
}


def parse_addresses(text: str | None) -> list[ipaddress.IPv4Interface | ipaddress.IPv6Interface]:
    """``"10.0.0.1/24 fd00::1/64"`` -> interfaces; ValueError naming the bad one."""
    found = []
    for word in (text or "").replace(",", " ").split():
        if "/" not in word:
            raise ValueError(f"{word!r} has no prefix length (e.g. 10.0.0.1/24, fd00::1/64)")
        try:
            found.append(ipaddress.ip_interface(word))
        except ValueError:
            raise ValueError(f"{word!r} is not an IPv4 or IPv6 address with a prefix length "
                             f"(e.g. 10.0.0.1/24, fd00::1/64)") from None
    return found


def _check_addresses(_old: Any, new: Any) -> Any:
    try:
        parse_addresses(new)
    except ValueError as exc:
        raise AttributeValueError(str(exc)) from None
    return new


def qdisc_for(values: dict[str, float | None]) -> tuple[str, list[str]] | None:
    """The root qdisc (kind, arguments) for these shaping values; None when unshaped.

    A rate alone is a token bucket (tbf: exact and in every kernel); anything else
    needs netem, which then also applies the rate.
    """
    v = {k: float(values.get(k) or 0) for k in SHAPING}
    if v["jitter"] and not v["delay"]:
        raise NetnsError("jitter needs a delay: set delay too")
    if v["reorder"] and not v["delay"]:
        raise NetnsError("reorder needs a delay (packets not delayed are the reordered ones)")
    if not any(v[k] for k in SHAPING if k != "rate"):
        if not v["rate"]:
            return None
        rate = v["rate"] * 1e6
        # a burst of 10 ms at the rate (at least two full frames) keeps TCP at the
        # rate; 100 ms of queue absorbs its bursts without drops that would slow it
        burst = max(3028, int(rate / 8 / 100))
        return "tbf", [f"rate {rate:.0f}bit", f"burst {burst}", "latency 100ms"]
    args: list[str] = []
    if v["delay"]:
        args += ["delay", f"{v['delay']:g}ms"] + ([f"{v['jitter']:g}ms"] if v["jitter"] else [])
    for name in ("loss", "duplicate", "reorder"):
        if v[name]:
            args += [name, f"{v[name]:g}%"]
    if v["rate"]:
        args += ["rate", f"{v['rate'] * 1e6:.0f}bit"]
    return "netem", args


def describe_shaping(values: dict[str, float | None]) -> str:
    q = qdisc_for(values)
    return f"{q[0]} {' '.join(q[1])}" if q else "none"


def _tc_refusal(guid: int, want: tuple[str, list[str]] | None, exc: NetnsError) -> str:
    what = f"{want[0]} {' '.join(want[1])}" if want else "removing the qdisc"
    text = f"NetnsLink {guid}: tc refused {what!r}: {exc}"
    if want and want[0] == "netem" and "kind is unknown" in str(exc):
        text += (". This kernel has no netem (CONFIG_NET_SCH_NETEM / module sch_netem): "
                 "delay, jitter, loss, duplicate and reorder need it; a rate alone works (tbf)")
    return text


@clsinit_copy
class NetnsLink(ResourceManager):
    """A point-to-point link (veth pair) between two NetnsNodes/NetnsSwitches."""

    _rtype = "NetnsLink"
    _help = ("A link (veth pair) between two NetnsNode/NetnsSwitch ends, with addresses and tc "
             "shaping (delay, loss, rate, ...) that can change at run time")
    _platform = "netns"

    @classmethod
    def _register_attributes(cls) -> None:
        for end in ("1", "2"):
            cls._register_attribute(Attribute(
                f"ip{end}", f"Addresses of end {end} (the end declared "
                            f"{'first' if end == '1' else 'second'}): IPv4 and/or IPv6 with "
                            f"prefix length, space-separated, e.g. '10.0.0.1/24 fd00::1/64'",
                type=Types.String, flags=Flags.Design, set_hook=_check_addresses))
        cls._register_attribute(Attribute(
            "mtu", "MTU of both ends", type=Types.Integer, range=(68, 65535), flags=Flags.Design))
        for name, (help_, high) in SHAPING.items():
            cls._register_attribute(Attribute(
                name, f"{help_}; can change at run time", type=Types.Double, default=0.0,
                range=(0.0, high)))

    def __init__(self, ec, guid):
        super().__init__(ec, guid)
        self._ends: list[tuple[str, str]] = []  # (namespace, interface) of end 1, end 2
        self._shaped: str | None = None  # the kind of root qdisc installed
        self._tc_lock = threading.Lock()
        self._life_lock = threading.Lock()  # a release waits for a deploy under way

    # -- ends --------------------------------------------------------------------------
    def valid_connection(self, guid: int) -> bool:
        other = self.ec.get_resource(guid)
        chain = type(other)._rtype_chain()
        if "NetnsNode" in chain or "NetnsSwitch" in chain:
            return len(self.endpoints()) < 2
        return "Collector" in chain

    def endpoints(self) -> list[ResourceManager]:
        return [rm for rm in self.get_connected()
                if {"NetnsNode", "NetnsSwitch"} & type(rm)._rtype_chain()]

    @property
    def interfaces(self) -> list[tuple[str, str]]:
        """(namespace, interface) of each end, once deployed."""
        return list(self._ends)

    def _ifname(self, end: ResourceManager) -> str:
        if isinstance(end, NetnsSwitch):
            return f"p{self.guid}"
        links = sorted(rm.guid for rm in end.get_connected(NetnsLink))
        return f"eth{links.index(self.guid)}"

    # -- deploy ----------------------------------------------------------------------------
    def do_deploy(self) -> None:
        ends = self.endpoints()
        if len(ends) != 2:
            raise NetnsError(f"NetnsLink {self.guid} needs two ends (NetnsNode or NetnsSwitch); "
                             f"it is connected to {len(ends)}")
        ready = [endpoint_ready(e) for e in ends]
        if None in ready:
            bad = ends[ready.index(None)]
            raise NetnsError(f"NetnsLink {self.guid}: its end {bad.get_rtype()} {bad.guid} "
                             f"FAILED: {bad.failure or 'see its log'}")
        if not all(ready):
            self.ec.schedule(END_WAIT, self.deploy)
            return
        with self._life_lock:
            if self._releasing:
                return
            try:
                addrs = [self._reserve(i, end) for i, end in enumerate(ends)]
                self._build(ends, addrs)
            except Exception:
                self._unreserve()
                self._destroy()
                raise
        super().do_deploy()

    def _reserve(self, i: int, end: ResourceManager) -> list:
        """Book end i's addresses in the experiment; refuse one already in use or a
        subnet that overlaps another of the same host's interfaces."""
        addrs = parse_addresses(self.get(f"ip{i + 1}"))
        if addrs and isinstance(end, NetnsSwitch):
            raise NetnsError(f"NetnsLink {self.guid}: end {i + 1} is a switch, which has no "
                             f"addresses; unset ip{i + 1}")
        run = run_of(self.ec)
        with run.lock:
            book = run.addresses
            for a in addrs:
                for (owner, host), theirs in book.items():
                    for b in theirs:
                        clash = a.ip == b.ip or (host == end.guid and owner != self.guid
                                                 and a.network.overlaps(b.network))
                        if clash:
                            what = "address" if a.ip == b.ip else "subnet"
                            raise NetnsError(
                                f"NetnsLink {self.guid}: ip{i + 1} {a} overlaps the {what} "
                                f"{b} of NetnsLink {owner} (each address once; one host's "
                                f"interfaces on distinct subnets)")
            book.setdefault((self.guid, end.guid), []).extend(addrs)
        return addrs

    def _unreserve(self) -> None:
        run = run_of(self.ec)
        with run.lock:
            for key in [k for k in run.addresses if k[0] == self.guid]:
                del run.addresses[key]

    def _build(self, ends: list[ResourceManager], addrs: list[list]) -> None:
        self._ends = [(e.netns, self._ifname(e)) for e in ends]
        (ns1, if1), (ns2, if2) = self._ends
        sh(["ip", "link", "add", if1, "netns", ns1, "type", "veth", "peer", "name", if2,
            "netns", ns2], f"NetnsLink {self.guid}: creating the veth pair {ns1}/{if1} - {ns2}/{if2}")
        mtu = f" mtu {self.get('mtu')}" if self.get("mtu") else ""
        for end, (ns, ifname), mine in zip(ends, self._ends, addrs):
            lines = [f"addr add {a} dev {ifname}" + (" nodad" if a.version == 6 else "")
                     for a in mine]
            if isinstance(end, NetnsSwitch):
                lines.append(f"link set {ifname} master br0")
            lines.append(f"link set {ifname}{mtu} up")
            ip_batch(lines, f"NetnsLink {self.guid}: configuring {ns}/{ifname}", netns=ns)
        self._apply_shaping()

    # -- shaping ------------------------------------------------------------------------------
    def _apply_shaping(self) -> None:
        """Install, change or remove the root qdisc of both ends to match the attributes."""
        with self._tc_lock:
            want = qdisc_for({k: self.get(k) for k in SHAPING})
            if want is None and self._shaped is None:
                return
            if want is None:
                for ns, ifname in self._ends:  # an end may have none left: not an error
                    sh(["tc", "-n", ns, "qdisc", "del", "dev", ifname, "root"], "tc", check=False)
                self._shaped = None
                return
            verb = "change" if self._shaped == want[0] else "replace"
            line = f"qdisc {verb} dev {{dev}} root {want[0]} {' '.join(want[1])}"
            for ns, ifname in self._ends:
                try:
                    ip_batch([line.format(dev=ifname)], f"tc on {ns}/{ifname}", netns=ns, tool="tc")
                except NetnsError as exc:
                    self._shaped = "unknown"  # the ends may differ now: next time, replace
                    raise NetnsError(_tc_refusal(self.guid, want, exc)) from None
            self._shaped = want[0]

    def _set_value(self, attr, value):
        name = attr if isinstance(attr, str) else attr.name
        old = self.get(name) if name in SHAPING else None
        value = super()._set_value(attr, value)
        live = ResourceState.READY <= self.state < ResourceState.FAILED and self._ends
        if name in SHAPING and live and value != old:
            try:
                self._apply_shaping()
            except NetnsError:
                super()._set_value(attr, old)  # keep the attribute and the link as they were
                try:
                    self._apply_shaping()
                except NetnsError as exc:
                    self.error(f"restoring the previous shaping failed: {exc}")
                raise
            self.info(f"shaping now: {describe_shaping({k: self.get(k) for k in SHAPING})}")
        return value

    # -- release ---------------------------------------------------------------------------------
    def do_release(self) -> None:
        try:
            with self._life_lock:
                self._destroy()
                self._unreserve()
        finally:
            super().do_release()

    def _destroy(self) -> None:
        if not self._ends:
            return
        # Deleting one end deletes the pair and its qdiscs. When both ends are being
        # released, deleting their namespaces will do it: no command needed.
        if not all(end._releasing for end in self.endpoints()):
            ns, ifname = self._ends[0]
            sh(["ip", "-n", ns, "link", "del", ifname], "deleting a veth", check=False)
        self._ends = []


@clsinit_copy
class NetnsRoute(ResourceManager):
    """Static routes of one NetnsNode, added once all its links are up."""

    _rtype = "NetnsRoute"
    _help = ("Static routes of the NetnsNode it is connected to, e.g. "
             "'10.0.2.0/24 via 10.0.1.2; default via 10.0.1.1'")
    _platform = "netns"

    @classmethod
    def _register_attributes(cls) -> None:
        cls._register_attribute(Attribute(
            "routes", "Routes separated by ';' or new lines, in `ip route` syntax: "
                      "'DEST via GATEWAY' or 'DEST dev IFACE' (DEST may be 'default')",
            type=Types.String, flags=Flags.Design))

    def valid_connection(self, guid: int) -> bool:
        return "NetnsNode" in type(self.ec.get_resource(guid))._rtype_chain()

    def do_deploy(self) -> None:
        nodes = self.get_connected(NetnsNode)
        if len(nodes) != 1:
            raise NetnsError(f"NetnsRoute {self.guid} must be connected to one NetnsNode "
                             f"(it is connected to {len(nodes)})")
        node = nodes[0]
        waits = [node] + node.get_connected(NetnsLink)
        ready = [endpoint_ready(rm) for rm in waits]
        if None in ready:
            bad = waits[ready.index(None)]
            raise NetnsError(f"NetnsRoute {self.guid}: {bad.get_rtype()} {bad.guid} FAILED")
        if not all(ready):
            self.ec.schedule(END_WAIT, self.deploy)
            return
        routes = [r.strip() for r in (self.get("routes") or "").replace("\n", ";").split(";")]
        ip_batch([f"route replace {r}" for r in routes if r],
                 f"NetnsRoute {self.guid}: adding routes on {node.netns}", netns=node.netns)
        super().do_deploy()
