"""ns-3 through nepi-prefect against the same scripts written directly for ns-3's bindings.

Prints the import/warm-up cost once, then the wall time (median of the runs after
a first, JIT-warming one) of: the point-to-point UDP echo (examples/ns3_udp_echo.yaml)
and a 10-node dumbbell (4 senders, 4 sinks, 2 routers, 4 UDP OnOff flows of 3 Mbit/s
over a 10 Mbit/s bottleneck) simulating 10 s. Goal (issue 16): at most 1.2x the
direct script after warm-up.

Run: ``python benchmarks/bench_ns3.py [runs]`` (default 4).
The direct scripts run in their own process with ns-3 imported once, like the
simulator process nepi-prefect uses; the figure excludes that import for both.
The two run interleaved (direct echo, nepi echo, direct dumbbell, nepi dumbbell, ...)
so that both see the same load of a shared machine.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAIRS = 4  # senders and sinks: 2 * PAIRS + 2 routers = 10 nodes


# -- the direct scripts (run in a child process: python bench_ns3.py --direct N) -------------
def direct_echo(ns, out: str) -> None:
    nodes = ns.NodeContainer()
    nodes.Create(2)
    p2p = ns.PointToPointHelper()
    p2p.SetDeviceAttribute("DataRate", ns.StringValue("5Mbps"))
    p2p.SetChannelAttribute("Delay", ns.StringValue("2ms"))
    devices = p2p.Install(nodes)
    ns.InternetStackHelper().Install(nodes)
    address = ns.Ipv4AddressHelper()
    address.SetBase(ns.Ipv4Address("10.1.1.0"), ns.Ipv4Mask("255.255.255.0"))
    interfaces = address.Assign(devices)
    server = ns.UdpEchoServerHelper(9).Install(nodes.Get(1))
    server.Start(ns.Seconds(1.0))
    echo = ns.UdpEchoClientHelper(interfaces.GetAddress(1).ConvertTo(), 9)
    echo.SetAttribute("MaxPackets", ns.UintegerValue(3))
    echo.SetAttribute("Interval", ns.TimeValue(ns.Seconds(1.0)))
    echo.SetAttribute("PacketSize", ns.UintegerValue(1024))
    echo.Install(nodes.Get(0)).Start(ns.Seconds(2.0))
    p2p.EnablePcap(f"{out}/d1.pcap", devices.Get(0), False, True)
    p2p.EnablePcap(f"{out}/d2.pcap", devices.Get(1), False, True)
    p2p.EnableAscii(ns.AsciiTraceHelper().CreateFileStream(f"{out}/d1.tr"), devices.Get(0))
    monitor_and_run(ns, 10.0)


def direct_dumbbell(ns, out: str) -> None:
    left, right = ns.CreateObject[ns.Node](), ns.CreateObject[ns.Node]()
    senders, sinks = ns.NodeContainer(), ns.NodeContainer()
    senders.Create(PAIRS)
    sinks.Create(PAIRS)
    stack = ns.InternetStackHelper()
    stack.Install(senders)
    stack.Install(sinks)
    stack.Install(left)
    stack.Install(right)
    access, bottleneck = ns.PointToPointHelper(), ns.PointToPointHelper()
    access.SetDeviceAttribute("DataRate", ns.StringValue("100Mbps"))
    access.SetChannelAttribute("Delay", ns.StringValue("1ms"))
    bottleneck.SetDeviceAttribute("DataRate", ns.StringValue("10Mbps"))
    bottleneck.SetChannelAttribute("Delay", ns.StringValue("10ms"))
    address = ns.Ipv4AddressHelper()
    address.SetBase(ns.Ipv4Address("10.2.1.0"), ns.Ipv4Mask("255.255.255.0"))
    address.Assign(bottleneck.Install(left, right))
    sink_ips = []
    for i in range(PAIRS):
        address.SetBase(ns.Ipv4Address(f"10.1.{i + 1}.0"), ns.Ipv4Mask("255.255.255.0"))
        address.Assign(access.Install(senders.Get(i), left))
        address.SetBase(ns.Ipv4Address(f"10.3.{i + 1}.0"), ns.Ipv4Mask("255.255.255.0"))
        sink_ips.append(address.Assign(access.Install(right, sinks.Get(i))).GetAddress(1))
    for i in range(PAIRS):
        port = 9001 + i
        remote = ns.InetSocketAddress(sink_ips[i], port).ConvertTo()
        onoff = ns.OnOffHelper("ns3::UdpSocketFactory", remote)
        onoff.SetConstantRate(ns.DataRate("3Mbps"), 1000)
        apps = onoff.Install(senders.Get(i))
        apps.Start(ns.Seconds(1.0))
        apps.Stop(ns.Seconds(9.0))
        local = ns.InetSocketAddress(ns.Ipv4Address.GetAny(), port).ConvertTo()
        ns.PacketSinkHelper("ns3::UdpSocketFactory", local).Install(sinks.Get(i))
    ns.Ipv4GlobalRoutingHelper.PopulateRoutingTables()
    monitor_and_run(ns, 10.0, routed=True)


def monitor_and_run(ns, stop: float, routed: bool = False) -> None:
    helper = ns.FlowMonitorHelper()
    monitor = helper.InstallAll()
    ns.Simulator.Stop(ns.Seconds(stop))
    ns.Simulator.Run()
    monitor.CheckForLostPackets()
    for _flow, _stats in monitor.GetFlowStats():
        pass  # read them, as nepi-prefect does
    ns.Simulator.Destroy()


def direct_main() -> None:
    """Serve the direct scripts: a scenario name per stdin line, its wall seconds back."""
    started = time.monotonic()
    from ns import ns
    print(json.dumps({"import_s": time.monotonic() - started}), flush=True)
    scripts = {"echo": direct_echo, "dumbbell": direct_dumbbell}
    with tempfile.TemporaryDirectory() as out:
        for line in sys.stdin:
            t = time.monotonic()
            scripts[line.strip()](ns, out)
            print(json.dumps(time.monotonic() - t), flush=True)


class Direct:
    """The direct scripts' process, asked to run one scenario at a time (interleaved with
    nepi-prefect's runs, so that both see the same load of a shared machine)."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, __file__, "--direct"], text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.import_s = json.loads(self.proc.stdout.readline())["import_s"]

    def time(self, name: str) -> float:
        self.proc.stdin.write(name + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(60)


# -- the same through nepi-prefect ---------------------------------------------------------------
def dumbbell_ec(ec) -> None:
    """The direct dumbbell, as ns-3 resources of an experiment."""
    def add(rtype: str, *connect: int, **attrs) -> int:
        guid = ec.register_resource(rtype)
        for name, value in attrs.items():
            ec.set(guid, name, value)
        for other in connect:
            ec.register_connection(guid, other)
        return guid

    def link(a: int, b: int, net: str, rate: str, delay: str) -> None:
        channel = add("ns3::PointToPointChannel", Delay=delay)
        add("ns3::PointToPointNetDevice", a, channel, DataRate=rate, ip=f"{net}.1")
        add("ns3::PointToPointNetDevice", b, channel, DataRate=rate, ip=f"{net}.2")

    sim = add("ns3::Simulation", stopTime="10s")
    left, right = add("ns3::Node", sim), add("ns3::Node", sim)
    link(left, right, "10.2.1", "10Mbps", "10ms")
    for i in range(PAIRS):
        sender, sink = add("ns3::Node", sim), add("ns3::Node", sim)
        link(sender, left, f"10.1.{i + 1}", "100Mbps", "1ms")
        link(right, sink, f"10.3.{i + 1}", "100Mbps", "1ms")
        add("ns3::OnOffApplication", sender, Protocol="ns3::UdpSocketFactory",
            Remote=f"10.3.{i + 1}.2:{9001 + i}", DataRate="3Mbps", PacketSize=1000,
            OnTime="ns3::ConstantRandomVariable[Constant=1]",
            OffTime="ns3::ConstantRandomVariable[Constant=0]", StartTime="1s", StopTime="9s")
        add("ns3::PacketSink", sink, Protocol="ns3::UdpSocketFactory",
            Local=f"0.0.0.0:{9001 + i}")


def nepi_main(runs: int, direct: Direct) -> dict:
    from nepi_prefect.execution.ec import ExperimentController
    from nepi_prefect.execution.recording import Recorder
    from nepi_prefect.resources.ns3 import client
    from nepi_prefect.spec.io import load_experiment
    from nepi_prefect.spec.run import run_experiment

    requests = _time_requests(client)
    started = time.monotonic()
    proc = client.acquire()
    hello = proc.wait_ready()
    warm = time.monotonic() - started
    client.give_back(proc)
    times: dict[str, list[float]] = {"echo": [], "dumbbell": []}
    floor: dict[str, list[float]] = {"echo": [], "dumbbell": []}
    parts: dict[str, list[float]] = {"build": [], "run": [], "built": [], "simulate": []}
    with tempfile.TemporaryDirectory() as out:
        for _ in range(runs):
            floor["echo"].append(direct.time("echo"))
            requests.clear()
            t = time.monotonic()
            ec = load_experiment(ROOT / "examples" / "ns3_udp_echo.yaml", local_dir=out,
                                 recorder=Recorder())
            assert run_experiment(ec, timeout=600)["state"] == "COMPLETED"
            times["echo"].append(time.monotonic() - t)
            for op, wall, result in requests:
                parts[op].append(wall)
                if op == "run":
                    parts["simulate"].append(sum(result["phases"].values()))
                if op == "build":
                    parts["built"].append(result["wall_s"])
            floor["dumbbell"].append(direct.time("dumbbell"))
            t = time.monotonic()
            ec = ExperimentController(exp_id="bench-dumbbell", local_dir=out, recorder=Recorder())
            dumbbell_ec(ec)
            assert run_experiment(ec, timeout=600)["state"] == "COMPLETED"
            times["dumbbell"].append(time.monotonic() - t)
    return {"import_s": hello["import_s"], "warm_s": warm, "times": times, "parts": parts,
            "direct": {"import_s": direct.import_s, "times": floor}}


def _time_requests(client) -> list:
    """Record (op, wall seconds, result) of each request to the simulator process."""
    seen: list = []
    request = client.SimulatorProcess.request

    def timed(self, op, timeout=None, **fields):
        started = time.monotonic()
        result = request(self, op, timeout, **fields)
        seen.append((op, time.monotonic() - started, result))
        return result

    client.SimulatorProcess.request = timed
    return seen


def steady(values: list[float]) -> float:
    """The median after the first run (which JIT-compiles what it calls first)."""
    return statistics.median(values[1:] if len(values) > 1 else values)


def main() -> None:
    if "--direct" in sys.argv:
        direct_main()
        return
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 4
    child = Direct()
    try:
        nepi = nepi_main(runs, child)
    finally:
        child.close()
    direct = nepi["direct"]
    print(f"ns-3 import (from ns import ns): direct {direct['import_s']:.1f} s, "
          f"simulator process {nepi['import_s']:.1f} s (warm-up, paid once per process: "
          f"{nepi['warm_s']:.1f} s wall)")
    print(f"{'scenario':<28}{'direct s':>10}{'nepi s':>10}{'ratio':>8}   (median of runs 2..{runs})")
    for name, label in (("echo", "UDP echo (p2p, 10 s sim)"),
                        ("dumbbell", f"dumbbell {2 * PAIRS + 2} nodes, 10 s sim")):
        d, n = steady(direct["times"][name]), steady(nepi["times"][name])
        print(f"{label:<28}{d:>10.3f}{n:>10.3f}{n / d:>8.2f}x")
    parts = {k: steady(v) for k, v in nepi["parts"].items()}
    echo = steady(nepi["times"]["echo"])
    print(f"UDP echo through nepi-prefect, where the time goes: build request "
          f"{parts['build'] * 1e3:.1f} ms (in the simulator process {parts['built'] * 1e3:.1f} "
          f"ms), run request {parts['run'] * 1e3:.1f} ms (in the simulator process "
          f"{parts['simulate'] * 1e3:.1f} ms), the rest (description, engine "
          f"deploy/start/release, summary) {(echo - parts['build'] - parts['run']) * 1e3:.1f} ms")
    print("first runs (with JIT): direct " + ", ".join(
        f"{k} {v[0]:.2f}s" for k, v in direct["times"].items()) + "; nepi " + ", ".join(
        f"{k} {v[0]:.2f}s" for k, v in nepi["times"].items()))


if __name__ == "__main__":
    main()
