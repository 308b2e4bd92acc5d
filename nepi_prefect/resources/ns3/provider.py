"""Every ns-3 type as a resource type, made from the cached TypeId registry.

The resource factory asks this module (entry point group
``nepi_prefect.resource_providers``) for types it does not know: ``load(rtype)``
makes the RM class of an ns-3 type on first use, with ns-3's attributes, help
and defaults. ``names()`` lists the types with a role (nodes, devices,
channels, applications, queues, error models); any other ns-3 type that can
be created (a mobility model, a propagation model) still loads by name and is
aggregated to the node it is connected to.
"""

from __future__ import annotations

import functools
import threading

from nepi_prefect.execution.resource import ResourceManager, clsinit_copy
from nepi_prefect.resources.ns3 import registry
from nepi_prefect.resources.ns3.base import (
    Ns3Application, Ns3Channel, Ns3ErrorModel, Ns3NetDevice, Ns3Node, Ns3Queue, Ns3Resource,
    Ns3Stack)
from nepi_prefect.resources.ns3.simulation import Ns3Simulation

#: ns-3 base type -> the RM class of its role (the first match in the parent chain wins)
_ROLES = {
    "ns3::Node": Ns3Node,
    "ns3::Ipv4L3Protocol": Ns3Stack,
    "ns3::NetDevice": Ns3NetDevice,
    "ns3::Channel": Ns3Channel,
    "ns3::Application": Ns3Application,
    "ns3::ErrorModel": Ns3ErrorModel,
    "ns3::QueueBase": Ns3Queue,
}
_HAND_WRITTEN = {Ns3Simulation.get_rtype(): Ns3Simulation}
_lock = threading.Lock()
_made: dict[str, type[ResourceManager]] = {}


def rtype_of(tid: str) -> str:
    """NEPI's name of an ns-3 type: ``ns3::DropTailQueue<Packet>`` is ``ns3::DropTailQueue``."""
    return tid[: -len("<Packet>")] if tid.endswith("<Packet>") else tid


@functools.cache
def _by_rtype() -> dict[str, str]:
    """rtype -> ns-3 TypeId name, for the types ns-3 can create."""
    types = registry.load()["types"]
    found: dict[str, str] = {}
    for tid, info in types.items():
        if info["constructor"]:
            found.setdefault(rtype_of(tid), tid)
            found[tid] = tid
    return found


def _role(tid: str) -> type[Ns3Resource]:
    info = registry.load()["types"][tid]
    for name in [tid] + info["parents"]:
        if name in _ROLES:
            return _ROLES[name]
    return Ns3Resource


def names() -> list[str]:
    """The ns-3 types listed by ``nepi-prefect types``: those with a role, and the simulation."""
    listed = [r for r, tid in _by_rtype().items() if r == rtype_of(tid)
              and _role(tid) is not Ns3Resource]
    return sorted(listed) + list(_HAND_WRITTEN)


def load(rtype: str) -> type[ResourceManager] | None:
    """The RM class of ``rtype`` (made once), or None if it is no ns-3 type."""
    if rtype in _HAND_WRITTEN:
        return _HAND_WRITTEN[rtype]
    if not rtype.startswith("ns3::"):
        return None
    tid = _by_rtype().get(rtype)
    if tid is None:
        return None
    with _lock:
        if rtype not in _made:
            _made[rtype] = _make(rtype, tid)
        return _made[rtype]


def _make(rtype: str, tid: str) -> type[ResourceManager]:
    info = registry.load()["types"][tid]
    role = _role(tid)
    types = registry.load()["types"]
    specs: dict[str, dict] = {}
    for name in reversed([tid] + info["parents"]):  # a subtype's attribute wins
        specs.update((a["name"], a) for a in types.get(name, {}).get("attributes", []))
    attrs = [a for a in (registry.attribute(spec) for spec in specs.values()) if a]
    chain = " < ".join([tid] + info["parents"])
    help_ = f"ns-3 {tid} ({info['group'] or 'core'} module; {chain}). {role._help}"

    @classmethod
    def _register_attributes(cls) -> None:
        for attr in attrs:
            cls._register_attribute(attr)

    rclass = type(rtype.split("::")[-1].replace("<", "_").replace(">", ""), (role,), {
        "_rtype": rtype, "_ns3_tid": tid, "_help": help_,
        "_ns3_attrs": frozenset(a.name for a in attrs),
        "_register_attributes": _register_attributes, "__module__": __name__})
    return clsinit_copy(rclass)
