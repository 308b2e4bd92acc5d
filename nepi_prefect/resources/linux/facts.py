"""A Linux host's environment facts, gathered in ONE shell command.

:func:`facts_script` builds a bash script that prints every fact as a
tab-separated line (``section<TAB>key<TAB>value``); :func:`parse_facts`
turns that output into a dict. The script uses shell builtins where it
can (``read`` from ``/proc`` and ``/sys``) and a handful of short
processes (``uname``, ``ip``, one ``--version`` per tool), so it costs a
few tens of milliseconds on the host plus one round trip.

What the dict holds (keys missing when the host does not tell):

* ``kernel``, ``machine``, ``distribution``, ``hostname``
* ``cpu``: ``model``, ``count``; ``memory_kb``
* ``interfaces``: by name, ``mtu``, ``qdisc``, ``state``, ``kind``, ``mac``,
  ``speed_mbps``, ``driver``, ``addresses``
* ``sysctl``: the ``net.*`` values that shape measurements
* ``tools``: ``{name: first line of its version output}`` (None: not installed)
* ``clock``: ``synchronized`` (``yes``/``no``/``unknown``), ``source``, ``epoch``
* ``extra``: ``{name: output}`` of the commands RMs asked for (see
  ``LinuxNode.facts`` and ``fact_commands``)
"""

from __future__ import annotations

import re
import threading
import time
import shlex
from typing import Any, Iterable, Mapping

#: tools whose versions every Linux manifest records
DEFAULT_TOOLS = ("ping", "iperf3", "tcpdump", "traceroute", "gcc", "ip", "tc")

#: ``net.*`` sysctls that change what a network measurement shows
SYSCTLS = (
    "net.ipv4.tcp_congestion_control", "net.ipv4.tcp_available_congestion_control",
    "net.ipv4.tcp_rmem", "net.ipv4.tcp_wmem", "net.ipv4.tcp_mem", "net.ipv4.tcp_ecn",
    "net.ipv4.tcp_sack", "net.ipv4.tcp_timestamps", "net.ipv4.tcp_window_scaling",
    "net.ipv4.tcp_mtu_probing", "net.ipv4.tcp_no_metrics_save", "net.ipv4.tcp_slow_start_after_idle",
    "net.ipv4.ip_forward", "net.ipv4.ip_local_port_range",
    "net.core.rmem_default", "net.core.rmem_max", "net.core.wmem_default", "net.core.wmem_max",
    "net.core.default_qdisc", "net.core.netdev_max_backlog", "net.core.somaxconn",
    "net.ipv6.conf.all.disable_ipv6",
)

_TOOL_NAME = re.compile(r"^[A-Za-z0-9_.+-]+$")

# Every line the script prints is "section<TAB>key<TAB>value"; values never hold a newline.
_BASE = r"""
export LC_ALL=C
t() { printf '%s\t%s\t%s\n' "$1" "$2" "$3"; }
set -- $(uname -nrm)   # always in this order: node name, release, machine
t sys hostname "$1"; t sys kernel "$2"; t sys machine "$3"
if [ -r /etc/os-release ]; then . /etc/os-release 2>/dev/null; t sys distribution "${PRETTY_NAME:-$NAME $VERSION_ID}"; fi
n=0; model=
while IFS= read -r l; do case "$l" in processor*) n=$((n+1));; "model name"*) [ -z "$model" ] && model="${l#*: }";; esac; done < /proc/cpuinfo
t cpu count "$n"; t cpu model "$model"
while read -r k v _; do [ "$k" = MemTotal: ] && t sys memory_kb "$v" && break; done < /proc/meminfo
ip -d -o link show 2>/dev/null | while IFS= read -r l; do t link - "$l"; done
ip -o addr show 2>/dev/null | while read -r _ dev fam addr _; do t addr "$dev" "$addr"; done
# Only devices (NICs) have a speed and a driver. Reading "speed" spins on the kernel's
# RTNL lock, which another user's namespace churn can hold for seconds: skip virtual links.
for d in /sys/class/net/*; do
  i="${d##*/}"
  [ -e "$d/device" ] || continue
  if read -r s 2>/dev/null < "$d/speed"; then t speed "$i" "$s"; fi
  if [ -e "$d/device/driver" ]; then drv=$(readlink "$d/device/driver"); t driver "$i" "${drv##*/}"; fi
done
for k in $SYSCTLS; do f="/proc/sys/${k//.//}"; if read -r v 2>/dev/null < "$f"; then t sysctl "$k" "$v"; fi; done
for p in $TOOLS; do
  if command -v "$p" >/dev/null 2>&1; then
    case "$p" in ping|ip|tc|ss|bridge) f=-V;; *) f=--version;; esac
    v=$("$p" $f 2>&1 </dev/null) || [ -n "$v" ] || v=$("$p" -V 2>&1 </dev/null)
    t tool "$p" "${v%%$'\n'*}"
  else t tool "$p" ""; fi
done
# timedatectl needs systemd as init (else it waits on D-Bus): check for it first.
if [ -d /run/systemd/system ] && command -v timedatectl >/dev/null 2>&1 && s=$(timedatectl show -p NTPSynchronized --value 2>/dev/null) && [ -n "$s" ]; then
  t clock synchronized "$s"; t clock source timedatectl
elif command -v chronyc >/dev/null 2>&1 && s=$(chronyc -n tracking 2>/dev/null); then
  case "$s" in *"Not synchronised"*) t clock synchronized no;; *) t clock synchronized yes;; esac; t clock source chronyc
else t clock synchronized unknown; t clock source none; fi
t clock epoch "${EPOCHREALTIME:-$(date +%s.%N)}"
"""


def facts_script(tools: Iterable[str] = DEFAULT_TOOLS,
                 extra: Mapping[str, str] | None = None) -> str:
    """The bash script that prints a host's facts; ``extra`` maps a name to a
    command whose output is recorded too (an RM type's own facts)."""
    names = [t for t in dict.fromkeys(tools) if _TOOL_NAME.match(t)]
    head = (f"SYSCTLS={shlex.quote(' '.join(SYSCTLS))}\n"
            f"TOOLS={shlex.quote(' '.join(names))}\n")
    tail = "".join(f"t extra {shlex.quote(name)} \"$( ( {cmd} ) 2>&1 </dev/null | tr '\\n\\t' '  ')\"\n"
                   for name, cmd in (extra or {}).items())
    return "{\n" + head + _BASE + tail + "} 2>/dev/null\n"


def parse_facts(text: str) -> dict[str, Any]:
    """The facts dict from the script's output (unknown lines are ignored)."""
    facts: dict[str, Any] = {"cpu": {}, "interfaces": {}, "sysctl": {}, "tools": {},
                             "clock": {}, "extra": {}}
    ifaces: dict[str, dict[str, Any]] = facts["interfaces"]
    for line in text.splitlines():
        section, _, rest = line.partition("\t")
        key, _, value = rest.partition("\t")
        value = value.strip()
        if section == "sys":
            facts[key] = _number(value) if key == "memory_kb" else value
        elif section == "cpu":
            facts["cpu"][key] = _number(value) if key == "count" else value
        elif section == "link":
            _parse_link(value, ifaces)
        elif section == "addr":
            ifaces.setdefault(key, {}).setdefault("addresses", []).append(value)
        elif section == "speed":
            speed = _number(value)
            if isinstance(speed, int) and speed > 0:  # virtual links report -1
                ifaces.setdefault(key, {})["speed_mbps"] = speed
        elif section == "driver":
            ifaces.setdefault(key, {})["driver"] = value
        elif section == "sysctl":
            facts["sysctl"][key] = " ".join(value.split())
        elif section == "tool":
            facts["tools"][key] = value or None
        elif section == "clock":
            facts["clock"][key] = float(value) if key == "epoch" and _is_float(value) else value
        elif section == "extra":
            facts["extra"][key] = value
    return facts


_LINK = re.compile(r"^\d+:\s+(?P<name>[^:@\s]+)(?:@\S+)?:\s+<[^>]*>(?P<rest>.*)$")


def _parse_link(line: str, ifaces: dict[str, dict[str, Any]]) -> None:
    """One ``ip -d -o link`` line: MTU, qdisc, state, MAC and link kind."""
    match = _LINK.match(line.replace("\\", " "))
    if not match:
        return
    info = ifaces.setdefault(match["name"], {})
    words = match["rest"].split()
    pairs = dict(zip(words, words[1:]))
    for word, key in (("mtu", "mtu"), ("qdisc", "qdisc"), ("state", "state")):
        if word in pairs:
            info[key] = _number(pairs[word]) if key == "mtu" else pairs[word]
    for word in ("link/ether", "link/loopback", "link/none"):
        if word in pairs:
            info["mac"] = pairs[word] if word != "link/none" else None
    # With -d, the line after the link layer names the kind: "veth", "bridge", "vlan protocol ..."
    for kind in ("veth", "bridge", "vlan", "vxlan", "macvlan", "ipvlan", "dummy", "ifb",
                 "gre", "ipip", "tun", "wireguard", "bond", "geneve"):
        if kind in words[words.index("promiscuity") + 2:] if "promiscuity" in words else False:
            info["kind"] = kind
            break


def _number(text: str) -> int | str:
    try:
        return int(text)
    except ValueError:
        return text


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def fact_requests(rms: Iterable[Any]) -> tuple[list[str], dict[str, str]]:
    """The tools and extra commands a node records for the RMs on it: the
    default tools, each app's command name and ``depends`` packages, and what
    an RM type asks for with a ``fact_commands()`` method (name -> command)."""
    tools = list(DEFAULT_TOOLS)
    extra: dict[str, str] = {}
    for rm in rms:
        for attr in ("command", "depends"):
            if rm.has_attribute(attr) and rm.get(attr):
                words = str(rm.get(attr)).split()
                names = words[:1] if attr == "command" else words
                tools += [w.rsplit("/", 1)[-1] for w in names if "$" not in w and "=" not in w]
        asked = getattr(rm, "fact_commands", None)
        if callable(asked):
            extra.update({f"{rm.get_rtype()}.{k}": v for k, v in asked().items()})
    return tools, extra


def gather_facts(transport: Any, tools: Iterable[str] = DEFAULT_TOOLS,
                 extra: Mapping[str, str] | None = None, timeout: float = 15.0) -> dict[str, Any]:
    """Run the facts script on a host in one command; the parsed facts, with the
    time it took and the host clock's offset from this machine's in seconds
    (the host reads its clock last, so the true offset lies between
    ``offset_s`` and ``offset_s + offset_bound_s``)."""
    sent = time.time()
    result = transport.run(facts_script(tools, extra), timeout=timeout)
    received = time.time()
    facts = parse_facts(result.stdout)
    epoch = facts["clock"].get("epoch")
    if isinstance(epoch, float):
        facts["clock"]["offset_s"] = round(epoch - received, 4)
        facts["clock"]["offset_bound_s"] = round(received - sent, 4)
    facts["collect_s"] = round(received - sent, 4)
    return facts


class BackgroundFacts:
    """Gathers a host's facts on a thread, so that the node's deploy does not wait
    for them; :meth:`result` waits (bounded) for them. Errors become ``{"error": ...}``.

    With ``start=False`` the thread starts at :meth:`start` (or at :meth:`result`):
    a node starts it once its launches drained, so the dozen processes of the facts
    command do not compete with the launches for the host's CPU."""

    def __init__(self, transport: Any, rms: Iterable[Any], warn: Any = None,
                 timeout: float = 15.0, start: bool = True):
        self._transport, self._warn, self._timeout = transport, warn, timeout
        self._requests = fact_requests(rms)
        self._facts: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._gather, name="nepi-facts", daemon=True)
        if start:
            self.start()

    @property
    def started(self) -> bool:
        return self._thread.ident is not None

    def start(self) -> None:
        """Start gathering (once; later calls do nothing)."""
        with self._lock:
            if not self.started:
                self._thread.start()

    def _gather(self) -> None:
        try:
            self._facts = gather_facts(self._transport, *self._requests, timeout=self._timeout)
        except Exception as exc:  # the facts are a record; the experiment goes on without them
            self._facts = {"error": f"{type(exc).__name__}: {exc}"}
            if self._warn is not None:
                self._warn(f"could not gather the host's facts: {exc}")

    def give_up(self, reason: str) -> None:
        """Never gather them (e.g. the host was lost first): the facts say why."""
        with self._lock:
            if not self.started:
                self._facts = {"error": reason}

    def result(self) -> dict[str, Any]:
        """The facts, once gathered (or the error; ``{}`` if still running after the
        timeout); starts gathering if nothing did yet (and nobody gave up)."""
        if not self._facts:
            self.start()
        if self.started:
            self._thread.join(self._timeout + 5)
        return dict(self._facts)
