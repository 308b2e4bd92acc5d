"""Emulated networks: build and teardown time at 50 hosts, and shaping accuracy.

* a 50-host line and a 50-host star (the compact ``topology:`` form): seconds
  from deploy until every host, switch, link and route is READY (target < 10 s),
  seconds to release them all (target < 5 s), nothing left with the run's prefix, and
  the CPU time it all took (wall times follow the machine's load; CPU time does not);
* a link with 20 ms of delay each way: ping RTT vs 40 ms (target within 5 %);
  needs netem in the kernel, else the figure is reported as not measurable;
* a 10 Mbit/s rate limit: iperf3 TCP throughput vs 10 Mbit/s (target within 10 %).

    python benchmarks/bench_netns.py [HOSTS]     (as root)
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from nepi_prefect.execution.ec import ExperimentController  # noqa: E402
from nepi_prefect.execution.recording import Recorder  # noqa: E402
from nepi_prefect.execution.resource import ResourceAction, ResourceState  # noqa: E402
from nepi_prefect.resources.linux.parsers import parse_iperf3  # noqa: E402
from nepi_prefect.resources.netns.run import known_run  # noqa: E402
from nepi_prefect.spec.io import build_experiment, description_from_data  # noqa: E402

S = ResourceState


def leftovers(prefix: str) -> int:
    ns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    return sum(line.startswith(prefix) for line in ns.splitlines()) + links.count(f": {prefix}")


def cpu_seconds() -> float:
    """CPU time used so far by this process and its finished children."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def build_and_teardown(shape: str, hosts: int) -> tuple[float, float, int, int, float]:
    """(seconds to READY, seconds to release, RMs, things left, CPU seconds used)."""
    desc = description_from_data({"name": f"bench-{shape}",
                                  "topology": {"shape": shape, "hosts": hosts}})
    ec = build_experiment(desc, local_dir=tempfile.mkdtemp(prefix="bench-netns-"),
                          recorder=Recorder())
    guids = list(ec.resources)
    cpu0 = cpu_seconds()
    try:
        t0 = time.monotonic()
        ec.deploy()
        ok = ec.wait_deployed(guids, timeout=120)
        ready = time.monotonic() - t0
        # deploy() starts what is READY: STARTED counts too
        bad = [ec.get_resource(g) for g in guids if not S.READY <= ec.state(g) < S.FAILED]
        if not ok or bad:
            raise SystemExit(f"{shape}: not READY: {bad[:3]} {bad[0].failure if bad else ''}")
        prefix = known_run(ec).prefix
        t0 = time.monotonic()
        ec.release()
        teardown = time.monotonic() - t0
    finally:
        ec.shutdown()
    return ready, teardown, len(guids), leftovers(prefix), cpu_seconds() - cpu0


def _pair(ec: ExperimentController, **shaping) -> tuple[int, int, int]:
    def rm(rtype, **attrs):
        guid = ec.register_resource(rtype)
        for k, v in attrs.items():
            ec.set(guid, k, v)
        return guid
    a, b = rm("NetnsNode"), rm("NetnsNode")
    link = rm("NetnsLink", ip1="10.0.0.1/24", ip2="10.0.0.2/24", **shaping)
    ec.register_connection(link, a)
    ec.register_connection(link, b)
    return a, b, link


def ping_rtt(delay_ms: float) -> tuple[float | None, str]:
    ec = ExperimentController(exp_id="bench-delay", recorder=Recorder(),
                              local_dir=tempfile.mkdtemp(prefix="bench-netns-"))
    try:
        a, b, link = _pair(ec, delay=delay_ms)
        ping = ec.register_resource("LinuxPing")
        for k, v in (("target", "10.0.0.2"), ("count", 20), ("interval", 0.1)):
            ec.set(ping, k, v)
        ec.register_connection(ping, a)
        ec.deploy()
        ec.wait_finished([ping], timeout=120)
        if ec.get_resource(link).failure:
            return None, ec.get_resource(link).failure.split(". ")[-1]
        return ec.get_resource(ping).get_metrics()["rtt_avg_ms"], ""
    finally:
        ec.shutdown()


def iperf3_mbps(rate_mbps: float, seconds: float = 8.0) -> float:
    ec = ExperimentController(exp_id="bench-rate", recorder=Recorder(),
                              local_dir=tempfile.mkdtemp(prefix="bench-netns-"))
    try:
        a, b, _ = _pair(ec, rate=rate_mbps)
        server = ec.register_resource("LinuxApplication")
        ec.set(server, "command", "iperf3 -s -1 -p 5399")
        ec.register_connection(server, b)
        client = ec.register_resource("LinuxApplication")
        # -O 1: leave out the first second (slow start) as a steady-rate figure should
        ec.set(client, "command", f"sleep 0.5; iperf3 -c 10.0.0.2 -p 5399 -t {seconds} -O 1 -J")
        ec.register_connection(client, a)
        ec.register_condition(client, ResourceAction.START, server, S.STARTED, "0.5s")
        ec.deploy()
        ec.wait_finished([client], timeout=120)
        return parse_iperf3(ec.trace(client, "stdout"))["throughput_mbps"]
    finally:
        ec.shutdown()


def main() -> int:
    hosts = int(sys.argv[1]) if len(sys.argv) > 1 else 50
    ok = True
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    for shape in ("line", "star"):
        ready, down, rms, left, cpu = build_and_teardown(shape, hosts)
        good = ready < 10 and down < 5 and left == 0
        ok &= good
        print(f"{shape:5} {hosts} hosts ({rms} RMs): READY in {ready:.2f} s (target < 10), "
              f"teardown {down:.2f} s (target < 5), left behind {left}, "
              f"CPU {cpu:.2f} s in all  "
              f"{'OK' if good else 'MISSED'}")
    rtt, why = ping_rtt(20.0)
    if rtt is None:
        print(f"delay 20 ms each way: not measurable here: {why}")
    else:
        err = abs(rtt - 40.0) / 40.0 * 100
        ok &= err <= 5
        print(f"delay 20 ms each way: ping RTT {rtt:.2f} ms vs 40 ms ({err:.1f} % off, "
              f"target 5 %)  {'OK' if err <= 5 else 'MISSED'}")
    mbps = iperf3_mbps(10.0)
    err = abs(mbps - 10.0) / 10.0 * 100
    ok &= err <= 10
    print(f"rate 10 Mbit/s: iperf3 TCP {mbps:.2f} Mbit/s ({err:.1f} % off, target 10 %)  "
          f"{'OK' if err <= 10 else 'MISSED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
