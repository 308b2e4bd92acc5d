"""ns3::Simulation: owns one simulator process and one run of ns-3.

At deploy it takes a simulator process (an already imported spare, or a new
one), builds every ns-3 object of the experiment in one request and moves each
RM to READY. At start it turns START conditions between ns-3 applications into
simulated start times and runs the simulation to ``stopTime`` in a background
thread; the worker reports each application's start and stop as simulated time
reaches it, and the FlowMonitor statistics at the end become metrics.
"""

from __future__ import annotations

import os
import re
import threading
from typing import Any

from nepi_prefect.execution.attribute import Attribute, Flags, Types
from nepi_prefect.execution.errors import InvalidInputError
from nepi_prefect.execution.resource import (
    ResourceAction, ResourceManager, ResourceState, clsinit_copy)
from nepi_prefect.execution.trace import Trace, TraceAttr
from nepi_prefect.resources.ns3 import client
from nepi_prefect.resources.ns3.base import (
    SIMULATION_RTYPE, Ns3Application, Ns3Channel, Ns3ErrorModel, Ns3NetDevice, Ns3Node,
    Ns3Queue, Ns3Resource, Ns3Stack)
from nepi_prefect.resources.ns3.metrics import app_metrics, flow_metrics
from nepi_prefect.resources.ns3.registry import Ns3Attribute
from nepi_prefect.resources.ns3.remote import HOST_RTYPE, RemoteRun
from nepi_prefect.util.timefuncs import parse_delay

_UNITS = {"y": 365 * 86400.0, "d": 86400.0, "h": 3600.0, "min": 60.0, "s": 1.0, "ms": 1e-3,
          "us": 1e-6, "ns": 1e-9, "ps": 1e-12, "fs": 1e-15}
#: build order: what a role needs exists before it (devices need nodes, channels, queues)
#: wall seconds creating the objects may take (cppyy compiles what it calls first)
BUILD_TIMEOUT = 300.0
_ORDER = (Ns3Node, Ns3Channel, Ns3Queue, Ns3ErrorModel, Ns3NetDevice, Ns3Application)


def seconds(text: str | float | None) -> float | None:
    """An ns-3 time string ("2ms", "+1e+09ns", "3") in seconds."""
    if text is None or isinstance(text, (int, float)):
        return None if text is None else float(text)
    match = re.match(r"^\s*([+-]?[\d.]+(?:[eE][+-]?\d+)?)\s*([a-z]*)\s*$", text)
    if not match or match.group(2) not in _UNITS and match.group(2):
        raise InvalidInputError(f"malformed ns-3 time {text!r}; e.g. \"2ms\", \"10s\"")
    return float(match.group(1)) * _UNITS[match.group(2) or "s"]


@clsinit_copy
class Ns3Simulation(ResourceManager):
    """Runs the experiment's ns-3 objects in a separate simulator process."""

    _rtype = SIMULATION_RTYPE
    _platform = "ns3"
    _help = ("One ns-3 simulation run in its own process: builds the ns-3 resources at "
             "deploy, runs to stopTime (simulated) at start; metrics: FlowMonitor per-flow "
             "throughput, delay, jitter and loss")
    _finishes_by_itself = True

    @classmethod
    def _register_attributes(cls) -> None:
        D = Flags.Design
        cls._register_attribute(Ns3Attribute(
            "stopTime", "Simulated time at which the simulation ends (required), e.g. "
            "\"10s\" (earlier if its events run out)",
            flags=D, value_type="ns3::TimeValue"))
        cls._register_attribute(Attribute(
            "realtime", "Use ns-3's RealtimeSimulatorImpl: simulated time follows wall time",
            type=Types.Bool, default=False, flags=D))
        cls._register_attribute(Attribute(
            "flowMonitor", "Install FlowMonitor on every node and report per-flow metrics",
            type=Types.Bool, default=True, flags=D))
        cls._register_attribute(Attribute(
            "timeout", "Wall-clock seconds the run may take before the simulator is stopped",
            type=Types.Double, default=600.0, range=(0.1, None), flags=D))
        cls._register_attribute(Attribute(
            "python", f"The interpreter with the ns3 wheel on the connected {HOST_RTYPE}, "
            f"where the simulator process then runs (here: $NEPI_PREFECT_NS3_PYTHON)",
            default="python3", flags=D))
        cls._register_attribute(Attribute(
            "seed", "ns-3 RngSeedManager seed", type=Types.Integer, default=1,
            range=(1, None), flags=D))
        cls._register_attribute(Attribute(
            "run", "ns-3 RngSeedManager run number (vary it for independent repetitions)",
            type=Types.Integer, default=1, range=(1, None), flags=D))

    @classmethod
    def _register_traces(cls) -> None:
        cls._register_trace(Trace("stdout", "What ns-3 printed (e.g. ns3::Ping's lines)", True))

    def __init__(self, ec, guid):
        super().__init__(ec, guid)
        self._proc: client.SimulatorProcess | None = None
        self._remote: RemoteRun | None = None
        self._members: list[Ns3Resource] = []
        self.result: dict[str, Any] = {}

    # -- deploy: build everything --------------------------------------------------------------
    def members(self) -> list[Ns3Resource]:
        found = []
        for guid in self.ec.resources:
            rm = self.ec.get_resource(guid)
            if isinstance(rm, Ns3Resource) and rm.simulation is self:
                found.append(rm)
        return found

    def trace_path(self, name: str) -> str | None:
        return os.path.join(self.ec.run_dir, "ns3", "simulator.out") if name == "stdout" else None

    node = None

    def trace(self, name: str, attr: str = TraceAttr.ALL, block: int = 512, offset: int = 0) -> Any:
        self.get_trace(name)
        return Ns3Resource.trace(self, name, attr, block, offset)

    def do_deploy(self) -> None:
        stop = self.get("stopTime")
        if not stop:
            raise InvalidInputError(f"{self._rtype} {self.guid}: set 'stopTime' (simulated "
                                    f"time at which the simulation ends, e.g. \"10s\")")
        host = self.host()
        if host is not None and not host.when_ready(self.deploy):
            return  # deploy() comes again when the node is READY (or FAILED)
        self._members = self.members()
        for rm in self._members:
            rm.check()
        specs = [rm.spec() for role in _ORDER for rm in self._members if isinstance(rm, role)]
        specs += [rm.spec() for rm in self._members
                  if not isinstance(rm, _ORDER + (Ns3Stack,))]
        output = self.trace_path("stdout")
        os.makedirs(os.path.dirname(output), exist_ok=True)
        if host is not None:
            self._proc = self._start_on(host)
            specs, output = self._remote.localize(specs), self._remote.remote(output)
        else:
            self._proc = client.acquire()
        self._proc.on_event = self._on_event
        hello = self._proc.wait_ready()
        self.info(f"ns-3 {hello.get('version')} ready in simulator process {hello.get('pid')}"
                  f"{'' if host is None else ' on ' + self._proc.where}")
        self._proc.request("build", timeout=BUILD_TIMEOUT, objects=specs, output=output,
                           realtime=self.get("realtime"), seed=self.get("seed"),
                           run=self.get("run"))
        for rm in self._members:
            if rm.state < ResourceState.READY:
                rm.set_ready()
        super().do_deploy()

    def host(self):
        """The LinuxNode the simulator process runs on, or None (here)."""
        hosts = self.get_connected(HOST_RTYPE)
        if len(hosts) > 1:
            raise InvalidInputError(f"{self._rtype} {self.guid} is connected to {len(hosts)} "
                                    f"{HOST_RTYPE} resources; the simulator runs on one")
        return hosts[0] if hosts else None

    def _start_on(self, host) -> client.SimulatorProcess:
        if host.state == ResourceState.FAILED:
            raise InvalidInputError(f"{self._rtype} {self.guid}: its {HOST_RTYPE} {host.guid} "
                                    f"FAILED: {host.failure or 'see its log'}")
        self._remote = RemoteRun(host, os.path.dirname(self.trace_path("stdout")), self.guid)
        return self._remote.start(self.get("python"))

    # -- start: run -------------------------------------------------------------------------------
    def do_start(self) -> None:
        apps = [rm for rm in self._members if isinstance(rm, Ns3Application)]
        stop = seconds(self.get("stopTime"))
        times = start_times(apps, stop)
        events = []
        for app in apps:
            start, end = times[app.guid]
            events.append([start, str(app.guid), "started"])
            if end is not None and end < stop:
                events.append([end, str(app.guid), "stopped"])
        self.set_started()
        by_ref = {str(guid): list(t) for guid, t in times.items()}
        threading.Thread(target=self._run, args=(stop, events, by_ref), daemon=True,
                         name=f"ns3-sim-{self.guid}").start()

    def _run(self, stop: float, events: list, times: dict) -> None:
        try:
            self.result = self._proc.request(
                "run", timeout=self.get("timeout"), stop=stop, events=events,
                flowmon=self.get("flowMonitor"), times=times)
        except Exception as exc:
            self.failure = str(exc)
            self.error(f"simulation failed: {exc}")
            for rm in self._members:
                if isinstance(rm, Ns3Application) and rm.state < ResourceState.FINISHED:
                    rm.failure = f"the simulation failed: {exc}"
                    rm.set_failed()
            self.set_failed()
            return
        if self._remote is not None:
            self._remote.fetch()  # the traces and ns-3's output, written on the node
        self._metrics.update(flow_metrics(self.result.get("flows", [])))
        self._metrics["sim_time_s"] = self.result.get("sim_time", stop)
        self._metrics["sim_wall_s"] = self.result.get("wall_s", 0.0)
        stdout = self.trace("stdout") or ""
        for rm in self._members:
            if isinstance(rm, Ns3Application):
                rm._metrics.update(app_metrics(rm, self.result, stdout))
            rm.on_simulation_end()
        self.collected["stdout"] = self.trace_path("stdout")
        self.set_finished()

    def _on_event(self, msg: dict) -> None:
        if msg.get("event") != "state":
            return
        rm = self.ec.get_resource(int(msg["ref"]))
        rm.on_event(msg["state"], msg["sim_time"])

    def do_stop(self) -> None:
        self.warning("a simulation ends at its stopTime; stop ignored until then")

    def do_release(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.on_event = None
            if self._remote is not None and self.state == ResourceState.FINISHED:
                proc.close()  # on a node: never kept for a next run, never left behind
            elif self._remote is not None:
                proc.kill()
            elif self.state == ResourceState.FINISHED:
                client.give_back(proc)  # the next run (a sweep's next point) reuses it
            else:
                proc.kill()  # failed or cut short: its state is not trusted
                client.prewarm()
        super().do_release()


def start_times(apps: list[Ns3Application], stop: float) -> dict[int, tuple[float, float | None]]:
    """Each application's (start, stop) in simulated seconds: its StartTime and StopTime,
    moved by START and STOP conditions on other ns-3 applications of the simulation.

    A condition "when B is STARTED (STOPPED) plus d" is B's simulated start (stop) time
    plus d. A START condition delays the start; a STOP condition stops the application
    then (or at its StopTime if that comes first), never before it started.
    Conditions on anything outside the simulation are left to the engine (wall time)."""
    own = {a.guid: (seconds(a.get("StartTime")) or 0.0, _stop_of(a)) for a in apps}
    times = dict(own)
    ids = set(own)

    def when(conditions) -> float | None:
        """The simulated time at which every condition (within the simulation) holds."""
        found = None
        for group, state, delay in conditions:
            if not set(group) <= ids:
                continue  # waits for something outside the simulation: the EC handles it
            for guid in group:
                dep_start, dep_stop = times[guid]
                base = dep_start if state <= ResourceState.STARTED else (
                    stop if dep_stop is None else dep_stop)
                at = base + (parse_delay(delay) if delay else 0.0)
                found = at if found is None else max(found, at)
        return found

    for _ in range(2 * len(apps) + 2):
        changed = False
        for app in apps:
            start, end = own[app.guid]
            after = when(app.conditions.get(ResourceAction.START, []))
            if after is not None:
                start = max(start, after)
            until = when(app.conditions.get(ResourceAction.STOP, []))
            if until is not None:
                end = max(start, until if end is None else min(end, until))
            if (start, end) != times[app.guid]:
                times[app.guid] = (start, end)
                changed = True
        if not changed:
            return times
    raise InvalidInputError("the START/STOP conditions between ns-3 applications form a cycle")


def _stop_of(app: Ns3Application) -> float | None:
    value = seconds(app.get("StopTime"))
    return value if value else None
