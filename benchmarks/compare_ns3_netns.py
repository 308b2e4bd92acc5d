"""Simulation against emulation: the same dumbbell in ns-3 and on namespace hosts.

Runs examples/dumbbell.yaml (namespace hosts, a tbf-shaped bottleneck, iperf3 UDP
offering 20 Mbit/s for 6 s, a ping across while the queue is full) and its ns-3
twin examples/ns3_dumbbell_twin.yaml (same hosts, rates, 1448-byte datagrams and a
bottleneck queue holding 100 ms at its rate, like the tbf's "latency 100ms") for
each bottleneck rate, and prints one markdown table: goodput, loss, ping RTT and
wall time of each. Delay cannot be compared on a kernel without netem (the
namespace link's delay needs it); the ping's RTT here is queueing delay.

Run as root: ``python benchmarks/compare_ns3_netns.py [rate ...]`` (Mbit/s; default
2 5 10 15). The emulation needs iproute2 and iperf3.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from nepi_prefect.execution.recording import Recorder
from nepi_prefect.resources.ns3 import client
from nepi_prefect.spec.io import load_experiment
from nepi_prefect.spec.run import run_experiment

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
FLOW_S = 6.0  # both flows send for 6 s


def run(example: str, overrides: dict, out: str) -> tuple[dict, float]:
    """The example's resources by name, and its wall time."""
    started = time.monotonic()
    ec = load_experiment(EXAMPLES / example, overrides=overrides, local_dir=out,
                         recorder=Recorder())
    summary = run_experiment(ec, timeout=300)
    if summary["state"] != "COMPLETED":
        raise SystemExit(f"{example} {overrides}: {summary['state']}: " + "; ".join(
            f"{r['name']}: {r['failure']}" for r in summary["resources"] if r.get("failure")))
    return {r["name"]: r for r in summary["resources"]}, time.monotonic() - started


def emulated(rate: float, out: str) -> dict:
    res, wall = run("dumbbell.yaml", {"bottleneck.rate": rate}, out)
    flow, ping = res["server"]["metrics"], res["ping"]["metrics"]
    return {"goodput": flow["bytes"] * 8 / FLOW_S / 1e6, "loss": flow["loss_pct"],
            "rtt": ping["rtt_avg_ms"], "wall": wall}


def simulated(rate: float, out: str) -> dict:
    queue = f"{int(rate * 1e6 * 0.1 / 8)}B"  # 100 ms at the rate
    res, wall = run("ns3_dumbbell_twin.yaml", {
        "bn1.DataRate": f"{rate:g}Mbps", "bn2.DataRate": f"{rate:g}Mbps",
        "q1.MaxSize": queue, "q2.MaxSize": queue}, out)
    sim = res["sim"]["metrics"]
    return {"goodput": res["server"]["metrics"]["rx_bytes"] * 8 / FLOW_S / 1e6,
            "loss": sim["flow1_loss_pct"], "rtt": res["ping"]["metrics"]["rtt_avg_ms"],
            "wall": wall}


def main() -> None:
    rates = [float(r) for r in sys.argv[1:]] or [2.0, 5.0, 10.0, 15.0]
    proc = client.acquire()  # import ns-3 before timing anything
    proc.wait_ready()
    client.give_back(proc)
    print("| bottleneck Mbit/s | goodput Mbit/s emu / sim | loss % emu / sim "
          "| ping RTT ms emu / sim | wall s emu / sim |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as out:
        for rate in rates:
            emu, sim = emulated(rate, out), simulated(rate, out)
            print(f"| {rate:g} | {emu['goodput']:.2f} / {sim['goodput']:.2f} "
                  f"| {emu['loss']:.1f} / {sim['loss']:.1f} | {emu['rtt']:.1f} / {sim['rtt']:.1f} "
                  f"| {emu['wall']:.1f} / {sim['wall']:.2f} |", flush=True)
    print(f"offered: 20 Mbit/s of 1448-byte UDP datagrams for {FLOW_S:g} s; goodput = UDP "
          f"payload received / {FLOW_S:g} s; ping a2 -> b2 while the queue is full")


if __name__ == "__main__":
    main()
