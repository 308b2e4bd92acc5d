"""The simulator process: ns-3 (cppyy bindings) driven over JSON lines.

Run as ``python worker.py`` (here, or copied to a Linux node and run over its
SSH connection, with ``--die-with-parent``). It imports nothing of the project, so cppyy's process-wide state, an ns-3 abort (NS_FATAL_ERROR) or a
runaway simulation stays in this process; the controller
(:mod:`nepi_prefect.resources.ns3.client`) reads what it printed last.

Protocol: one JSON object per line. Requests ``{"id", "op", ...}`` on stdin;
answers ``{"id", "ok": true, "result"}`` or ``{"id", "ok": false, "error"}``
and events ``{"event", ...}`` on the protocol descriptor (the original stdout;
ns-3's own printing, e.g. Ping's, goes to the file the ``build`` request names).
The worker exits when stdin closes, so it never outlives its controller.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import sys
import time
import traceback

ns = None  # the ns-3 module, imported by main()


def _send(stream, obj: dict) -> None:
    stream.write(json.dumps(obj) + "\n")
    stream.flush()


# -- the TypeId registry --------------------------------------------------------------
def registry() -> dict:
    """Every registered TypeId: parents, whether it can be created, attributes."""
    types = {}
    for i in range(ns.TypeId.GetRegisteredN()):
        tid = ns.TypeId.GetRegistered(i)
        parents, parent = [], tid
        while parent.HasParent() and parent.GetParent().GetName() != parent.GetName():
            parent = parent.GetParent()
            parents.append(str(parent.GetName()))
        attrs = []
        for j in range(tid.GetAttributeN()):
            info = tid.GetAttribute(j)
            value_type = str(info.checker.GetValueTypeName())
            if value_type in _NOT_VALUES:
                # Asking more of their checkers makes cppyy instantiate templates of
                # incomplete types and crash; these are not settable from text anyway.
                continue
            attrs.append(_attribute(info, value_type))
        types[str(tid.GetName())] = {"parents": parents, "group": str(tid.GetGroupName()),
                                "constructor": bool(tid.HasConstructor()), "attributes": attrs}
    return {"version": _version(), "types": types}


#: attribute kinds that are not values (callbacks, object containers)
_NOT_VALUES = {"ns3::CallbackValue", "ns3::ObjectPtrContainerValue", "ns3::ObjectVectorValue",
               "ns3::ObjectMapValue"}


def _attribute(info, value_type: str) -> dict:
    checker = info.checker
    try:
        initial = str(info.initialValue.SerializeToString(checker))
    except Exception:  # a value without a string form
        initial = ""
    return {"name": str(info.name), "help": str(info.help), "initial": initial,
            "value_type": value_type, "underlying": str(checker.GetUnderlyingTypeInformation())
            if checker.HasUnderlyingTypeInformation() else "",
            "flags": int(info.flags), "deprecated": int(info.supportLevel) != 0}


def _version() -> str:
    try:
        from importlib.metadata import version
        return version("ns3")
    except Exception:
        return "unknown"


def _value_type(tid_name: str, name: str, cache: dict = {}) -> str:  # noqa: B006 (a memo)
    """The value type of an attribute, e.g. "ns3::AddressValue". Asked once per
    (type, attribute) in the process: through cppyy it costs ~0.15 ms, about half of a
    small experiment's build."""
    key = (tid_name, name)
    if key not in cache:
        info = ns.TypeId.AttributeInformation()
        if not ns.TypeId.LookupByName(tid_name).LookupAttributeByName(name, info):
            raise ValueError(f"{tid_name} has no attribute {name!r}")
        cache[key] = str(info.checker.GetValueTypeName())
    return cache[key]


# -- building the topology --------------------------------------------------------------
class Builder:
    """Creates the objects the controller describes, by reference (the RM's guid)."""

    def __init__(self):
        self.objects: dict[str, object] = {}
        self.apps: dict[str, object] = {}
        self.sinks: dict[str, object] = {}
        self.stack = None

    def value(self, tid_name: str, name: str, text):
        """An AttributeValue for ``text``; addresses "a.b.c.d" or "a.b.c.d:port" are parsed."""
        if _value_type(tid_name, name) == "ns3::AddressValue":
            host, _, port = str(text).partition(":")
            if port:
                return ns.AddressValue(ns.InetSocketAddress(ns.Ipv4Address(host), int(port)).ConvertTo())
            return ns.AddressValue(ns.Ipv4Address(host).ConvertTo())
        return ns.StringValue(str(text))

    def create(self, spec: dict, cls):
        factory = ns.ObjectFactory()
        factory.SetTypeId(spec["tid"])
        for name, text in spec.get("attrs", {}).items():
            factory.Set(name, self.value(spec["tid"], name, text))
        obj = factory.Create[cls]()
        self.objects[spec["ref"]] = obj
        return obj

    def build(self, spec: dict) -> None:
        getattr(self, "_" + spec["role"])(spec)

    def _node(self, spec: dict) -> None:
        node = self.create(spec, ns.Node)
        if spec.get("stack"):
            if self.stack is None:
                self.stack = ns.InternetStackHelper()
            self.stack.Install(node)
            ipv4 = node.GetObject[ns.Ipv4L3Protocol]()
            for name, text in spec.get("stack_attrs", {}).items():
                ipv4.SetAttribute(name, self.value("ns3::Ipv4L3Protocol", name, text))

    def _channel(self, spec: dict) -> None:
        self.create(spec, ns.Channel)

    def _queue(self, spec: dict) -> None:
        self.create(spec, ns.Object)

    def _errormodel(self, spec: dict) -> None:
        self.create(spec, ns.ErrorModel)

    def _object(self, spec: dict) -> None:
        obj = self.create(spec, ns.Object)
        if spec.get("node"):
            self.objects[spec["node"]].AggregateObject(obj)

    def _device(self, spec: dict) -> None:
        dev = self.create(spec, ns.NetDevice)
        node = self.objects[spec["node"]]
        dev.SetAddress(ns.Mac48Address.Allocate().ConvertTo())
        node.AddDevice(dev)
        concrete = getattr(ns, spec["tid"].split("::", 1)[1])
        typed = ns.DynamicCast[concrete](dev)
        if spec.get("has_txqueue"):
            queue = self.objects.get(spec.get("queue"))
            if queue is None:
                factory = ns.ObjectFactory()
                factory.SetTypeId("ns3::DropTailQueue<Packet>")
                queue = factory.Create[ns.Object]()
            dev.SetAttribute("TxQueue", ns.PointerValue(queue))
        if spec.get("error_model"):
            dev.SetAttribute("ReceiveErrorModel", ns.PointerValue(self.objects[spec["error_model"]]))
        if spec.get("channel"):
            channel = self.objects[spec["channel"]]
            chan_cls = getattr(ns, spec["channel_tid"].split("::", 1)[1])
            typed.Attach(ns.DynamicCast[chan_cls](channel))
        if spec.get("ip"):
            ipv4 = node.GetObject[ns.Ipv4]()
            index = ipv4.AddInterface(dev)
            ipv4.AddAddress(index, ns.Ipv4InterfaceAddress(
                ns.Ipv4Address(spec["ip"]), ns.Ipv4Mask(f"/{spec.get('prefix', 24)}")))
            ipv4.SetUp(index)
        helper = {"ns3::PointToPointNetDevice": ns.PointToPointHelper,
                  "ns3::CsmaNetDevice": ns.CsmaHelper}.get(spec["tid"])
        if helper is not None and spec.get("pcap"):
            helper().EnablePcap(spec["pcap"], dev, False, True)
        if helper is not None and spec.get("ascii"):
            helper().EnableAscii(ns.AsciiTraceHelper().CreateFileStream(spec["ascii"]), dev)

    def _application(self, spec: dict) -> None:
        app = self.create(spec, ns.Application)
        self.objects[spec["node"]].AddApplication(app)
        self.apps[spec["ref"]] = app
        if spec["tid"] == "ns3::PacketSink":
            self.sinks[spec["ref"]] = ns.DynamicCast[ns.PacketSink](app)


# -- running ------------------------------------------------------------------------------
def run(builder: Builder, req: dict, proto) -> dict:
    """Run to ``stop`` s of simulated time, telling each app event as it is reached.

    The result's ``phases`` says where the wall time went (seconds per step), for
    benchmarks/bench_ns3.py's breakdown."""
    phases: dict[str, float] = {}
    mark = time.monotonic()

    def lap(name: str) -> None:
        nonlocal mark
        now = time.monotonic()
        phases[name] = phases.get(name, 0.0) + now - mark
        mark = now

    for ref, (start, end) in req.get("times", {}).items():
        builder.apps[ref].SetStartTime(ns.Seconds(start))
        if end is not None:
            builder.apps[ref].SetStopTime(ns.Seconds(end))
    if builder.stack is not None:
        ns.Ipv4GlobalRoutingHelper.PopulateRoutingTables()
    helper = monitor = None
    if req.get("flowmon") and builder.stack is not None:
        helper = ns.FlowMonitorHelper()
        monitor = helper.InstallAll()
    lap("setup_s")
    stop = float(req["stop"])
    events = sorted((float(t), ref, what) for t, ref, what in req.get("events", []) if t <= stop)
    wall = time.monotonic()
    for at, ref, what in events:
        now = ns.Simulator.Now().GetSeconds()
        if at > now:
            ns.Simulator.Stop(ns.Seconds(at - now))
            ns.Simulator.Run()
        lap("simulate_s")
        _send(proto, {"event": "state", "ref": ref, "state": what, "sim_time": at})
        lap("events_s")
    now = ns.Simulator.Now().GetSeconds()
    ns.Simulator.Stop(ns.Seconds(max(stop - now, 0.0)))
    ns.Simulator.Run()
    wall = time.monotonic() - wall
    lap("simulate_s")
    result = {"sim_time": ns.Simulator.Now().GetSeconds(), "wall_s": wall,
              "flows": flows(helper, monitor) if monitor is not None else [],
              "sinks": {ref: int(s.GetTotalRx()) for ref, s in builder.sinks.items()}}
    lap("stats_s")
    ns.Simulator.Destroy()
    # Drop the last references to the objects: the trace helpers' files (pcap) are
    # flushed and closed when the devices holding their sinks are freed.
    builder.objects.clear()
    builder.apps.clear()
    builder.sinks.clear()
    gc.collect()
    lap("destroy_s")
    result["phases"] = phases
    return result


def flows(helper, monitor) -> list[dict]:
    """FlowMonitor's per-flow statistics, in flow id order."""
    monitor.CheckForLostPackets()
    classifier = ns.DynamicCast[ns.Ipv4FlowClassifier](helper.GetClassifier())
    found = []
    for flow_id, st in monitor.GetFlowStats():
        t = classifier.FindFlow(flow_id)
        found.append({
            "id": int(flow_id), "src": _ip(t.sourceAddress), "dst": _ip(t.destinationAddress),
            "sport": int(t.sourcePort), "dport": int(t.destinationPort), "proto": int(t.protocol),
            "tx_packets": int(st.txPackets), "rx_packets": int(st.rxPackets),
            "tx_bytes": int(st.txBytes), "rx_bytes": int(st.rxBytes),
            "lost_packets": int(st.lostPackets),
            "delay_sum_s": st.delaySum.GetSeconds(), "jitter_sum_s": st.jitterSum.GetSeconds(),
            "first_tx_s": st.timeFirstTxPacket.GetSeconds(),
            "last_rx_s": st.timeLastRxPacket.GetSeconds()})
    return sorted(found, key=lambda f: f["id"])


def _ip(addr) -> str:
    value = int(addr.Get())
    return ".".join(str((value >> s) & 255) for s in (24, 16, 8, 0))


# -- the loop ---------------------------------------------------------------------------------
def serve(proto) -> None:
    builder = Builder()
    for line in sys.stdin:
        if not line.strip():
            continue
        req = json.loads(line)
        op = req.get("op")
        try:
            if op == "quit":
                _send(proto, {"id": req.get("id"), "ok": True, "result": None})
                return
            if op == "registry":
                result = registry()
            elif op == "build":
                builder = Builder()  # a reused process: the last run was destroyed
                if req.get("output"):
                    _redirect_stdout(req["output"])
                if req.get("realtime"):  # before anything creates the simulator
                    ns.GlobalValue.Bind("SimulatorImplementationType",
                                        ns.StringValue("ns3::RealtimeSimulatorImpl"))
                ns.RngSeedManager.SetSeed(int(req.get("seed", 1)))
                ns.RngSeedManager.SetRun(int(req.get("run", 1)))
                started = time.monotonic()
                for spec in req["objects"]:
                    try:
                        builder.build(spec)
                    except Exception as exc:
                        raise RuntimeError(f"ref {spec['ref']} ({spec['tid']}): {exc}") from exc
                result = {"built": len(req["objects"]), "wall_s": time.monotonic() - started}
            elif op == "run":
                result = run(builder, req, proto)
            else:
                raise ValueError(f"unknown op {op!r}")
            _send(proto, {"id": req.get("id"), "ok": True, "result": result})
        except Exception as exc:
            traceback.print_exc(file=sys.stderr)
            _send(proto, {"id": req.get("id"), "ok": False, "error": f"{type(exc).__name__}: {exc}"})


def _redirect_stdout(path: str) -> None:
    """Send fd 1 (C++ std::cout and Python's print) to ``path``."""
    sys.stdout.flush()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.close(fd)


def _die_with_parent() -> None:
    """SIGKILL this process when its parent ends (Linux). On a remote host the parent is
    sshd's session process, which ends with the connection: a controller that vanished
    mid-run (the run blocks in C++ and reads no end-of-file) leaves no simulator behind."""
    import ctypes
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() == 1:  # the parent was gone already
        os._exit(1)


def main() -> None:
    global ns
    if "--die-with-parent" in sys.argv:
        _die_with_parent()
    # The protocol keeps the original stdout; ns-3's printing goes elsewhere (see build).
    proto = os.fdopen(os.dup(1), "w")
    _redirect_stdout(os.devnull)
    started = time.monotonic()
    from ns import ns as ns_module  # the slow part: cppyy compiles the bindings
    ns = ns_module
    # ASCII traces need packet metadata, which ns-3 refuses to turn on once any packet
    # was sent in the process: a warm process reused after a run without them aborted
    # the next run that asked for them. So it is on from the start, for every run.
    ns.PacketMetadata.Enable()
    # The import made millions of Python objects that live as long as the process;
    # freezing them keeps each run's gc.collect() (which closes the pcap files, see
    # run) from scanning them all again: 4-5 ms of a small experiment's run.
    gc.freeze()
    # cppyy's crash handlers run gdb for a back trace (tens of seconds); an abort
    # (NS_FATAL_ERROR) should end the process at once, its message already printed.
    for sig in (signal.SIGABRT, signal.SIGSEGV, signal.SIGBUS, signal.SIGILL, signal.SIGFPE):
        signal.signal(sig, signal.SIG_DFL)
    _send(proto, {"event": "hello", "version": _version(), "import_s": time.monotonic() - started,
                  "pid": os.getpid()})
    serve(proto)


if __name__ == "__main__":
    main()
