"""Compact emulated-network shapes: a ``topology:`` section expands into resources.

::

    topology:
      - shape: dumbbell        # line | star | dumbbell
        hosts: 2               # line/star: hosts; dumbbell: hosts on each side
        subnet: 10.0.0.0/24    # IPv4 addresses (line: cut into one /30 per link)
        subnet6: fd00::/64     # optional IPv6 addresses (line: one /120 per link)
        prefix: ""             # put before every generated name
        node: {}               # attributes of every host (e.g. sshd: true)
        link: {}               # attributes of every link (e.g. delay: 1)
        bottleneck: {rate: 10} # dumbbell: attributes of the link between the switches

Generated names: line ``h1..hN`` (links ``l1..``, routes ``rt1..``); star
``h1..hN`` on switch ``sw`` (links ``l1..``); dumbbell ``a1..aN`` on switch
``swa`` and ``b1..bN`` on ``swb``, joined by link ``bottleneck``. Hosts on
one switch share the subnet; a line routes end to end through its hosts.
The expansion happens before validation, so the rest of the description
refers to these names like to any resource.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

SHAPES = ("line", "star", "dumbbell")


class TopologySpec(BaseModel):
    """One compact shape of NetnsNodes, NetnsSwitches and NetnsLinks."""

    model_config = ConfigDict(extra="forbid")
    shape: str = Field(description="line, star or dumbbell")
    hosts: int = Field(ge=1, le=4000, description="hosts (dumbbell: on each side)")
    subnet: str = Field(default="10.0.0.0/16", description="IPv4 block of the addresses")
    subnet6: str | None = Field(default=None, description="IPv6 block (none: IPv4 only)")
    prefix: str = Field(default="", description="put before every generated name")
    node: dict[str, Any] = Field(default_factory=dict, description="attributes of every host")
    link: dict[str, Any] = Field(default_factory=dict, description="attributes of every link")
    bottleneck: dict[str, Any] = Field(default_factory=dict,
                                       description="dumbbell: attributes of the middle link")


class _Out:
    def __init__(self, spec: TopologySpec):
        self.spec = spec
        self.resources: list[dict] = []
        self.connections: list[list[str]] = []

    def add(self, name: str, rtype: str, attrs: dict | None = None) -> str:
        name = self.spec.prefix + name
        self.resources.append({"name": name, "rtype": rtype, "attributes": dict(attrs or {})})
        return name

    def link(self, name: str, a: str, b: str, attrs: dict) -> str:
        link = self.add(name, "NetnsLink", attrs)
        self.connections += [[a, link], [link, b]]
        return link


def _block(text: str, version: int, where: str):
    try:
        net = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ValueError(f"{where}: {text!r} is not an IP network (e.g. 10.0.0.0/16, fd00::/64)") from None
    if net.version != version:
        raise ValueError(f"{where}: {text!r} is not an IPv{version} network")
    return net


def _hosts_of(net, count: int, where: str) -> list:
    """The first ``count`` usable addresses of ``net``, as interfaces with its prefix."""
    if net.num_addresses - 2 < count:
        raise ValueError(f"{where}: {net} holds {max(net.num_addresses - 2, 0)} hosts, "
                         f"{count} needed; give a larger block")
    it = net.hosts()
    return [f"{next(it)}/{net.prefixlen}" for _ in range(count)]


def _flat(spec: TopologySpec, count: int, where: str) -> list[str]:
    """Addresses (v4 and v6, space-separated) of ``count`` hosts sharing one segment."""
    v4 = _hosts_of(_block(spec.subnet, 4, f"{where}.subnet"), count, f"{where}.subnet")
    v6 = (_hosts_of(_block(spec.subnet6, 6, f"{where}.subnet6"), count, f"{where}.subnet6")
          if spec.subnet6 else [""] * count)
    return [f"{a} {b}".strip() for a, b in zip(v4, v6)]


def _star(out: _Out, where: str) -> None:
    spec = out.spec
    ips = _flat(spec, spec.hosts, where)
    # hosts before the switch: a link's end 1 (ip1) is the end declared first
    hosts = [out.add(f"h{i}", "NetnsNode", spec.node) for i in range(1, spec.hosts + 1)]
    sw = out.add("sw", "NetnsSwitch")
    for i, (h, ip) in enumerate(zip(hosts, ips), 1):
        out.link(f"l{i}", h, sw, {**spec.link, "ip1": ip})


def _dumbbell(out: _Out, where: str) -> None:
    spec = out.spec
    ips = iter(_flat(spec, 2 * spec.hosts, where))
    # hosts before the switches: a link's end 1 (ip1) is the end declared first
    sides = {side: [out.add(f"{side}{i}", "NetnsNode", spec.node)
                    for i in range(1, spec.hosts + 1)] for side in "ab"}
    swa, swb = out.add("swa", "NetnsSwitch"), out.add("swb", "NetnsSwitch")
    out.link("bottleneck", swa, swb, spec.bottleneck)
    for side, sw in (("a", swa), ("b", swb)):
        for i, h in enumerate(sides[side], 1):
            out.link(f"l{side}{i}", h, sw, {**spec.link, "ip1": next(ips)})


def _line(out: _Out, where: str) -> None:
    """h1 - h2 - ... - hN, one small subnet per link, static routes along the line."""
    spec, n = out.spec, out.spec.hosts
    nets4 = _split(_block(spec.subnet, 4, f"{where}.subnet"), 30, n - 1, f"{where}.subnet")
    nets6 = (_split(_block(spec.subnet6, 6, f"{where}.subnet6"), 120, n - 1, f"{where}.subnet6")
             if spec.subnet6 else [])
    hosts = [out.add(f"h{i}", "NetnsNode", {**spec.node, "forwarding": True})
             for i in range(1, n + 1)]
    ends: list[tuple[list[str], list[str]]] = []  # per link: (end-1 addrs, end-2 addrs)
    for k in range(n - 1):
        nets = [nets4[k]] + ([nets6[k]] if nets6 else [])
        pairs = [list(net.hosts())[:2] for net in nets]
        ip1 = [f"{p[0]}/{net.prefixlen}" for p, net in zip(pairs, nets)]
        ip2 = [f"{p[1]}/{net.prefixlen}" for p, net in zip(pairs, nets)]
        ends.append((ip1, ip2))
        out.link(f"l{k + 1}", hosts[k], hosts[k + 1],
                 {**spec.link, "ip1": " ".join(ip1), "ip2": " ".join(ip2)})
    for i in range(n):
        routes = []
        for k in range(n - 1):
            if k < i - 1:  # behind the left neighbour
                routes += [f"{net} via {gw.split('/')[0]}" for net, gw in
                           zip(_nets(nets4, nets6, k), ends[i - 1][0])]
            elif k > i:  # behind the right neighbour
                routes += [f"{net} via {gw.split('/')[0]}" for net, gw in
                           zip(_nets(nets4, nets6, k), ends[i][1])]
        if routes:
            rt = out.add(f"rt{i + 1}", "NetnsRoute", {"routes": "; ".join(routes)})
            out.connections.append([rt, hosts[i]])


def _nets(nets4: list, nets6: list, k: int) -> list:
    return [nets4[k]] + ([nets6[k]] if nets6 else [])


def _split(net, prefixlen: int, count: int, where: str) -> list:
    if net.prefixlen > prefixlen:
        raise ValueError(f"{where}: {net} is smaller than one /{prefixlen} per link")
    if 2 ** (prefixlen - net.prefixlen) < count:
        raise ValueError(f"{where}: {net} holds {2 ** (prefixlen - net.prefixlen)} /{prefixlen} "
                         f"link subnets, {count} needed; give a larger block")
    it = net.subnets(new_prefix=prefixlen)
    return [next(it) for _ in range(count)]


def expand_topologies(data: Any) -> Any:
    """A description's data with its ``topology`` section expanded into resources
    and connections (put before the declared ones); ValueError on a bad shape."""
    if not isinstance(data, dict) or "topology" not in data:
        return data
    items = data["topology"]
    items = [items] if isinstance(items, dict) else list(items or [])
    resources, connections = [], []
    for i, item in enumerate(items):
        where = f"topology[{i}]"
        spec = TopologySpec.model_validate(item)
        if spec.shape not in SHAPES:
            raise ValueError(f"{where}.shape: got {spec.shape!r}, expected one of {', '.join(SHAPES)}")
        if spec.bottleneck and spec.shape != "dumbbell":
            raise ValueError(f"{where}.bottleneck: only a dumbbell has a bottleneck link")
        out = _Out(spec)
        {"line": _line, "star": _star, "dumbbell": _dumbbell}[spec.shape](out, where)
        resources += out.resources
        connections += out.connections
    data = {k: v for k, v in data.items() if k != "topology"}
    data["resources"] = resources + list(data.get("resources") or [])
    data["connections"] = connections + list(data.get("connections") or [])
    return data


def check_link_addresses(desc: Any) -> Any:
    """Refuse an address given to two NetnsLink ends of a description (known before
    deploy; overlapping subnets on one host are checked at deploy, where ends are known)."""
    seen: dict[Any, str] = {}
    for i, res in enumerate(desc.resources):
        if res.rtype != "NetnsLink":
            continue
        for attr in ("ip1", "ip2"):
            for word in str(res.attributes.get(attr) or "").replace(",", " ").split():
                try:
                    ip = ipaddress.ip_interface(word).ip
                except ValueError:
                    continue  # the attribute's own check names it when the EC is built
                here = f"{res.name}.{attr}"
                if ip in seen:
                    raise ValueError(f"resources[{i}].attributes.{attr}: address {ip} is "
                                     f"given twice ({seen[ip]} and {here}); each address once")
                seen[ip] = here
    return desc
