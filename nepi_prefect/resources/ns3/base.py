"""The ns-3 resource managers: one class per role, one generated subclass per ns-3 type.

An ns-3 RM stands for one object in the simulator. It does nothing itself at
deploy: the :class:`~nepi_prefect.resources.ns3.simulation.Ns3Simulation` it
belongs to builds every object in one request and moves them to READY (the
object exists) or FAILED (with ns-3's reason). Its ``spec()`` says what the
simulator must build; its attributes are ns-3's own, from the TypeId registry.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from nepi_prefect.execution.attribute import Attribute, Flags, Types
from nepi_prefect.execution.errors import InvalidInputError
from nepi_prefect.execution.resource import (
    ResourceAction, ResourceManager, ResourceState, clsinit_copy)
from nepi_prefect.execution.trace import Trace, TraceAttr

if TYPE_CHECKING:
    from nepi_prefect.resources.ns3.simulation import Ns3Simulation

SIMULATION_RTYPE = "ns3::Simulation"


@clsinit_copy
class Ns3Resource(ResourceManager):
    """Base of every ns-3 RM: an object the simulation creates."""

    _rtype = "ns3::Object"
    _help = "An ns-3 object, created in the simulator process by its ns3::Simulation."
    _platform = "ns3"
    #: the ns-3 TypeId name this RM creates
    _ns3_tid = "ns3::Object"
    #: what the simulator does with it: node, device, channel, application, ...
    _ns3_role = "object"
    #: names of the attributes that are ns-3's own (passed to its ObjectFactory)
    _ns3_attrs: frozenset[str] = frozenset()

    def __init__(self, ec, guid):
        super().__init__(ec, guid)
        self.sim_times: dict[str, float] = {}

    # -- what the simulator builds ----------------------------------------------------
    def ns3_values(self) -> dict[str, str]:
        """The ns-3 attributes set on this RM, as the text ns-3 parses."""
        values = {}
        for name, value in self.attribute_values().items():
            if name in self._ns3_attrs and value is not None:
                values[name] = ("true" if value else "false") if isinstance(value, bool) else str(value)
        return values

    def spec(self) -> dict[str, Any]:
        """The build request entry of this object."""
        spec = {"ref": str(self.guid), "role": self._ns3_role, "tid": self._ns3_tid,
                "attrs": self.ns3_values()}
        if self._ns3_role == "object":  # e.g. a mobility model: aggregated to its node
            node = self.one_connected("ns3::Node", required=False)
            spec["node"] = str(node.guid) if node else None
        return spec

    def check(self) -> None:
        """Refuse at deploy what the simulator cannot build (overridden by roles)."""

    def one_connected(self, rtype: str, required: bool = True) -> "Ns3Resource | None":
        found = self.get_connected(rtype)
        if len(found) > 1:
            raise InvalidInputError(f"{self._rtype} {self.guid} is connected to {len(found)} "
                                    f"{rtype} resources; connect it to one")
        if not found and required:
            raise InvalidInputError(f"{self._rtype} {self.guid} is connected to no {rtype}; "
                                    f"connect it to one")
        return found[0] if found else None

    # -- the simulation -------------------------------------------------------------------
    @property
    def simulation(self) -> "Ns3Simulation":
        """The ns3::Simulation this RM belongs to: a connected one (through its
        node, device, ...), else the only one of the experiment."""
        seen, todo = {self.guid}, [self]
        while todo:
            rm = todo.pop()
            for other in rm.get_connected():
                if other.get_rtype() == SIMULATION_RTYPE:
                    return other
                if isinstance(other, Ns3Resource) and other.guid not in seen:
                    seen.add(other.guid)
                    todo.append(other)
        sims = [self.ec.get_resource(g) for g in self.ec.resources
                if self.ec.get_resource(g).get_rtype() == SIMULATION_RTYPE]
        if len(sims) == 1:
            return sims[0]
        raise InvalidInputError(
            f"{self._rtype} {self.guid} belongs to no {SIMULATION_RTYPE}: add one to the "
            f"experiment" + (" and connect each ns3::Node to its own" if sims else ""))

    def do_deploy(self) -> None:
        # The simulation builds every object in one request and sets READY; here
        # only check that there is one (an error names what is missing).
        self.simulation  # noqa: B018

    def on_simulation_end(self) -> None:
        if self.state in (ResourceState.READY, ResourceState.STARTED, ResourceState.STOPPED):
            self.set_finished()

    # -- traces ------------------------------------------------------------------------------
    def trace_path(self, name: str) -> str | None:
        """The local file of trace ``name`` (written by the simulator)."""
        return None

    def trace(self, name: str, attr: str = TraceAttr.ALL, block: int = 512, offset: int = 0) -> Any:
        self.get_trace(name)
        path = self.trace_path(name)
        if path is None or not os.path.exists(path):
            return None
        if attr == TraceAttr.PATH:
            return path
        if attr == TraceAttr.SIZE:
            return os.path.getsize(path)
        with open(path, "rb") as f:
            if attr == TraceAttr.STREAM:
                f.seek(block * offset)
                return f.read(block)
            data = f.read()
        try:
            return data.decode()
        except UnicodeDecodeError:
            return data  # a pcap

    # Traces are local files: trace_path() is for Collector's node copy, which needs a node.
    node = None

    def _trace_file(self, name: str) -> str:
        return os.path.join(self.ec.run_dir, "ns3", f"{self._rtype.split('::')[-1]}-{self.guid}.{name}")


@clsinit_copy
class Ns3Node(Ns3Resource):
    _rtype = "ns3::Node"
    _ns3_tid = "ns3::Node"
    _ns3_role = "node"
    _help = ("A simulated node. Connect devices and applications to it; an IPv4 stack "
             "(ns3::Ipv4L3Protocol) is installed when a device has an ip or an "
             "application runs on it.")

    def spec(self) -> dict[str, Any]:
        spec = super().spec()
        stack = self.get_connected("ns3::Ipv4L3Protocol")
        spec["stack"] = bool(stack or self.get_connected(Ns3Application)
                             or any(d.get("ip") for d in self.get_connected(Ns3NetDevice)))
        spec["stack_attrs"] = stack[0].ns3_values() if stack else {}
        return spec


@clsinit_copy
class Ns3Stack(Ns3Resource):
    _rtype = "ns3::Ipv4L3Protocol"
    _ns3_role = "stack"
    _help = "The IPv4 stack of the connected ns3::Node (installed with ns-3's InternetStackHelper)."

    def check(self) -> None:
        self.one_connected("ns3::Node")


@clsinit_copy
class Ns3Channel(Ns3Resource):
    _rtype = "ns3::Channel"
    _ns3_role = "channel"
    _help = "A simulated channel: connect the devices that share it."


@clsinit_copy
class Ns3Queue(Ns3Resource):
    _rtype = "ns3::QueueBase"
    _ns3_role = "queue"
    _help = "A device's transmit queue: connect it to the device."

    def check(self) -> None:
        self.one_connected(Ns3NetDevice.get_rtype())


@clsinit_copy
class Ns3ErrorModel(Ns3Resource):
    _rtype = "ns3::ErrorModel"
    _ns3_role = "errormodel"
    _help = "A receive error model: connect it to the device that drops the packets."

    def check(self) -> None:
        self.one_connected(Ns3NetDevice.get_rtype())


@clsinit_copy
class Ns3NetDevice(Ns3Resource):
    _rtype = "ns3::NetDevice"
    _ns3_role = "device"
    _help = ("A simulated network device: connect it to its ns3::Node and its channel; "
             "set ip/prefix for an IPv4 address; traces pcap and ascii.")

    @classmethod
    def _register_attributes(cls) -> None:
        cls._register_attribute(Attribute(
            "ip", "IPv4 address of this device, e.g. 10.0.0.1 (unset: no address)",
            flags=Flags.Design))
        cls._register_attribute(Attribute(
            "prefix", "Prefix length of the address", type=Types.Integer, default=24,
            range=(0, 32), flags=Flags.Design))

    @classmethod
    def _register_traces(cls) -> None:
        cls._register_trace(Trace("pcap", "pcap capture of this device (ns-3 PcapHelper)"))
        cls._register_trace(Trace("ascii", "ns-3 ASCII trace of this device (AsciiTraceHelper)"))

    def check(self) -> None:
        self.one_connected("ns3::Node")
        if self.one_connected(Ns3Channel.get_rtype(), required=False) is None:
            raise InvalidInputError(
                f"{self._rtype} {self.guid} is connected to no channel; connect it to a "
                f"channel of its kind (e.g. ns3::PointToPointChannel, ns3::CsmaChannel)")

    def spec(self) -> dict[str, Any]:
        spec = super().spec()
        channel = self.one_connected(Ns3Channel.get_rtype(), required=False)
        queue = self.one_connected(Ns3Queue.get_rtype(), required=False)
        errors = self.one_connected(Ns3ErrorModel.get_rtype(), required=False)
        spec.update(
            node=str(self.one_connected("ns3::Node").guid),
            channel=str(channel.guid) if channel else None,
            channel_tid=channel._ns3_tid if channel else None,
            queue=str(queue.guid) if queue else None,
            error_model=str(errors.guid) if errors else None,
            has_txqueue="TxQueue" in self._ns3_attrs or self._ns3_tid in (
                "ns3::PointToPointNetDevice", "ns3::CsmaNetDevice"),
            ip=self.get("ip"), prefix=self.get("prefix"),
            pcap=self._trace_file("pcap") if self.trace_enabled("pcap") else None,
            ascii=self._trace_file("ascii") if self.trace_enabled("ascii") else None)
        return spec

    def trace_path(self, name: str) -> str | None:
        return self._trace_file(name) if self.trace_enabled(name) else None

    def on_simulation_end(self) -> None:
        for name in ("pcap", "ascii"):
            path = self.trace_path(name)
            if path and os.path.exists(path):
                self.collected[name] = path
        super().on_simulation_end()


@clsinit_copy
class Ns3Application(Ns3Resource):
    """An application on a simulated node: STARTED and STOPPED at its StartTime and
    StopTime in simulated time, FINISHED when the simulation ends."""

    _rtype = "ns3::Application"
    _ns3_role = "application"
    _help = ("An application on the connected ns3::Node: STARTED/STOPPED at its StartTime/"
             "StopTime in simulated time, FINISHED when the simulation ends.")
    _finishes_by_itself = True

    def check(self) -> None:
        self.one_connected("ns3::Node")

    def spec(self) -> dict[str, Any]:
        spec = super().spec()
        spec["node"] = str(self.one_connected("ns3::Node").guid)
        for name in ("StartTime", "StopTime"):
            spec["attrs"].pop(name, None)  # set as times, after condition translation
        return spec

    def do_start(self) -> None:
        # The simulation moves the state at the application's StartTime.
        self.debug("armed; STARTED comes at its start time in simulated time")

    def do_stop(self) -> None:
        # STOP conditions on other ns-3 applications became this app's simulated stop
        # time (Ns3Simulation.do_start); the engine's wall-clock stop changes nothing.
        if self.conditions_in_simulation(ResourceAction.STOP):
            self.debug("stops at the simulated time its STOP conditions give")
        else:
            self.warning("an ns-3 application stops at its StopTime or at STOP conditions "
                         "on other ns-3 applications (simulated time); stop ignored")

    def conditions_in_simulation(self, action: ResourceAction) -> bool:
        """Whether this app's ``action`` conditions are all on ns-3 applications
        (simulated times; see simulation.start_times)."""
        conditions = self.conditions.get(action, [])
        return bool(conditions) and all(
            isinstance(self.ec.get_resource(g), Ns3Application)
            for group, _state, _delay in conditions for g in group)

    def on_event(self, state: str, sim_time: float) -> None:
        self.sim_times[state] = sim_time
        self._metrics[f"sim_{'start' if state == 'started' else 'stop'}_s"] = sim_time
        if state == "started" and self.state == ResourceState.READY:
            self.set_started()
        elif state == "stopped" and self.state == ResourceState.STARTED:
            self.set_stopped()
