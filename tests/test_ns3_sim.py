"""ns-3 simulations run for real (small ones), checked against what ns-3 must give.

Skipped only where the ns3 wheel is not installed or cannot be imported (see
tests/fixtures/ns3.py); the import is paid once per session.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nepi_prefect.execution.recording import Recorder
from nepi_prefect.execution.resource import ResourceState
from nepi_prefect.resources.ns3 import client
from nepi_prefect.spec.io import load_experiment, resource_names
from nepi_prefect.spec.run import run_experiment
from tests.fixtures.ns3 import ns3_ready  # noqa: F401  (session fixture)
from tests.helpers import wait_until

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
# A test may wait for ns-3's import (minutes on a loaded machine) before its run.
pytestmark = [pytest.mark.usefixtures("ns3_ready"), pytest.mark.timeout(1500)]


def warm() -> None:
    """Wait for an imported simulator process (after a crash test, a new one imports:
    minutes on a loaded machine), so that the experiment's timeout measures the run."""
    proc = client.acquire()
    proc.wait_ready()
    client.give_back(proc)


def run(tmp_path, example: str, **overrides) -> tuple[dict, dict]:
    """Run an example with overrides; (summary, resources by name)."""
    warm()
    ec = load_experiment(EXAMPLES / example, overrides=overrides or None,
                         local_dir=str(tmp_path), recorder=Recorder())
    summary = run_experiment(ec, timeout=240)
    by_name = {res["name"]: res for res in summary["resources"]}
    return summary, by_name


def run_text(tmp_path, desc: str) -> tuple[dict, dict]:
    """Run a description given as text; (summary, resources by name)."""
    path = tmp_path / "experiment.yaml"
    path.write_text(desc)
    warm()
    ec = load_experiment(path, local_dir=str(tmp_path), recorder=Recorder())
    summary = run_experiment(ec, timeout=240)
    return summary, {res["name"]: res for res in summary["resources"]}


def transmission_s(frame_bytes: int, rate_bps: float) -> float:
    return frame_bytes * 8 / rate_bps


def ascii_rtts(text: str) -> list[float]:
    """Client side round trips from an ns-3 ASCII trace: enqueue (+) to receive (r)."""
    sent = [float(line.split()[1]) for line in text.splitlines() if line.startswith("+ ")]
    received = [float(line.split()[1]) for line in text.splitlines() if line.startswith("r ")]
    return [r - s for s, r in zip(sent, received)]


def pcap_records(path: str) -> list[tuple[float, int]]:
    """(time, captured length) of each record of a pcap file."""
    data = Path(path).read_bytes()
    assert struct.unpack("<I", data[:4])[0] == 0xA1B2C3D4, "not a little-endian pcap"
    records, offset = [], 24
    while offset < len(data):
        sec, usec, caplen, _ = struct.unpack("<IIII", data[offset:offset + 16])
        records.append((sec + usec / 1e6, caplen))
        offset += 16 + caplen
    return records


def test_ascii_traces_after_a_run_without_them_in_the_same_simulator(tmp_path):
    """The warm simulator process serves one run after another: packets sent by a run
    without ASCII traces must not stop the next one from having them (ns-3 aborts when
    packet metadata is turned on after packets were sent)."""
    first, _ = run(tmp_path / "plain", "ns3_dumbbell.yaml")
    assert first["state"] == "COMPLETED", first
    summary, res = run(tmp_path / "ascii", "ns3_udp_echo.yaml")
    assert summary["state"] == "COMPLETED", summary
    assert ascii_rtts(Path(res["d1"]["traces"]["ascii"]).read_text())


def test_udp_echo_rtt_traces_and_simulated_start_times(tmp_path):
    summary, res = run(tmp_path, "ns3_udp_echo.yaml")
    assert summary["state"] == "COMPLETED", summary
    assert {r["state"] for r in summary["resources"] if r["rtype"].startswith("ns3::")} \
        == {"FINISHED"}
    # The server starts at its StartTime (1 s); the client 1 s after the server
    # STARTED: the condition became the client's start time in simulated time.
    assert res["server"]["metrics"]["sim_start_s"] == pytest.approx(1.0)
    assert res["client"]["metrics"]["sim_start_s"] == pytest.approx(2.0)
    # 1024 bytes of data + UDP 8 + IPv4 20 + PPP 2 on 5 Mbit/s, 2 ms each way.
    one_way = 0.002 + transmission_s(1024 + 8 + 20 + 2, 5e6)
    rtts = ascii_rtts(Path(res["d1"]["traces"]["ascii"]).read_text())
    assert len(rtts) == 3
    assert rtts == pytest.approx([2 * one_way] * 3, abs=1e-5)  # the trace prints 6 digits
    sim = res["sim"]["metrics"]
    assert sim["flows"] == 2 and sim["loss_pct"] == 0
    assert sim["flow1_delay_ms"] == pytest.approx(one_way * 1e3, abs=1e-3)
    records = pcap_records(res["d2"]["traces"]["pcap"])
    assert len(records) == 6 and {length for _, length in records} == {1054}
    assert records[0][0] == pytest.approx(2.0 + one_way, abs=1e-5)


def test_ping_rtt_matches_the_link(tmp_path):
    desc = (EXAMPLES / "ns3_udp_echo.yaml").read_text().replace(
        "rtype: ns3::UdpEchoClient\n    attributes: {Remote: \"10.1.1.2:9\", MaxPackets: 3, "
        "Interval: 1s, PacketSize: 1024}",
        "rtype: ns3::Ping\n    attributes: {Destination: 10.1.1.2, Count: 4, "
        "VerboseMode: Verbose, StartTime: 1s}")
    _summary, res = run_text(tmp_path, desc)
    client_res = res["client"]
    assert client_res["rtype"] == "ns3::Ping"
    metrics = client_res["metrics"]
    # ICMP echo: 64 bytes + IPv4 20 + PPP 2 each way on 5 Mbit/s, 2 ms.
    rtt = 2 * (0.002 + transmission_s(64 + 20 + 2, 5e6)) * 1e3
    assert metrics["packets_sent"] == 4 and metrics["packets_received"] == 4
    assert metrics["rtt_avg_ms"] == pytest.approx(rtt, abs=0.002)
    assert metrics["packet_loss_pct"] == 0


def test_dumbbell_bottleneck_rate_bounds_throughput(tmp_path):
    slow, res_slow = run(tmp_path / "slow", "ns3_dumbbell.yaml", **{"bna.DataRate": "2Mbps"})
    fast, res_fast = run(tmp_path / "fast", "ns3_dumbbell.yaml", **{"bna.DataRate": "20Mbps"})
    assert slow["state"] == fast["state"] == "COMPLETED"
    slow_sim, fast_sim = res_slow["sim"]["metrics"], res_fast["sim"]["metrics"]
    # What crosses a 2 Mbit/s bottleneck: at most 2 Mbit/s, for each sink while it
    # receives, and for both together from the first packet sent (1 s) to the end (~9.3 s).
    sinks = [res_slow[name]["metrics"] for name in ("sink1", "sink2")]
    assert all(0 < sink["goodput_mbps"] < 2.0 for sink in sinks)
    assert sum(sink["rx_bytes"] for sink in sinks) * 8 / 8.3 < 2e6
    assert slow_sim["loss_pct"] > 50
    # At 20 Mbit/s both 8 Mbit/s flows pass whole.
    assert fast_sim["loss_pct"] == 0
    assert fast_sim["flow1_throughput_mbps"] == pytest.approx(8 * 1028 / 1000, rel=0.02)
    # the sink's goodput is payload over the time its flow ran (1 s to 9 s), not its life
    assert res_fast["sink1"]["metrics"]["goodput_mbps"] == pytest.approx(8.0, rel=0.01)
    # flow2 waits 2 s (simulated) for flow1: translated into its start time.
    assert res_fast["flow2"]["metrics"]["sim_start_s"] == pytest.approx(3.0)
    assert res_fast["flow2"]["metrics"]["sim_stop_s"] == pytest.approx(9.0)


def test_stop_condition_between_apps_is_a_simulated_stop_time(tmp_path):
    # The server stops 1.5 s (simulated) after the client STARTED (2 s): at 3.5 s,
    # between the client's second (3 s) and third (4 s) request, so only two echoes.
    desc = (EXAMPLES / "ns3_udp_echo.yaml").read_text().replace(
        "timeout: 5m", "  - resources: [server]\n    action: STOP\n    wait_for: [client]\n"
        "    state: STARTED\n    time: 1.5s\ntimeout: 5m")
    summary, res = run_text(tmp_path, desc)
    assert summary["state"] == "COMPLETED", summary
    assert res["server"]["metrics"]["sim_stop_s"] == pytest.approx(3.5)
    assert "sim_stop_s" not in res["client"]["metrics"]
    sim = res["sim"]["metrics"]
    assert sim["flow1_tx_packets"] == 3 and sim["flow1_rx_packets"] == 3  # requests arrive
    assert sim["flow2_tx_packets"] == 2  # the stopped server answers no more
    received = [line for line in Path(res["d1"]["traces"]["ascii"]).read_text().splitlines()
                if line.startswith("r ")]
    # two echoes (UDP); the third request gets ICMP port unreachable from the server's node
    assert ["protocol 1 " in r for r in received] == [False, False, True]


def test_error_model_drops_and_process_is_reused(tmp_path):
    desc = (EXAMPLES / "ns3_udp_echo.yaml").read_text().replace(
        "connections:\n", "  - name: loss\n    rtype: ns3::RateErrorModel\n"
        "    attributes: {ErrorRate: 1.0, ErrorUnit: ERROR_UNIT_PACKET}\nconnections:\n"
        "  - [loss, d2]\n")
    path = tmp_path / "loss.yaml"
    path.write_text(desc)
    pids = []
    warm()
    for i in range(2):
        ec = load_experiment(path, local_dir=str(tmp_path / str(i)), recorder=Recorder())
        summary = run_experiment(ec, timeout=240)
        sim = next(r for r in summary["resources"] if r["name"] == "sim")
        assert summary["state"] == "COMPLETED"
        assert sim["metrics"]["flows"] == 1 and sim["metrics"]["loss_pct"] == 100
        pids.append(client._spare.pid if client._spare else None)
    assert pids[0] is not None and pids[0] == pids[1], "the warm process was not reused"


def test_realtime_scheduler_follows_wall_time(tmp_path):
    summary, res = run(tmp_path, "ns3_udp_echo.yaml",
                       **{"sim.realtime": True, "sim.stopTime": "2.5s", "client.MaxPackets": 1})
    assert summary["state"] == "COMPLETED"
    assert res["sim"]["metrics"]["sim_wall_s"] >= 2.4  # 2.5 s simulated took as long
    assert res["client"]["state"] == "FINISHED"


def test_started_state_comes_in_simulated_order(tmp_path):
    warm()
    ec = load_experiment(EXAMPLES / "ns3_udp_echo.yaml", local_dir=str(tmp_path),
                         recorder=Recorder())
    run_experiment(ec, timeout=240)
    names = {n: g for g, n in resource_names(ec).items()}
    server, client_rm = ec.get_resource(names["server"]), ec.get_resource(names["client"])
    assert server.start_time <= client_rm.start_time <= client_rm.finish_time
    assert client_rm.state == ResourceState.RELEASED or client_rm.finish_time is not None
    assert os.path.exists(ec.get_resource(names["sim"]).trace_path("stdout"))


CONTROLLER = """
import json, sys, time
from nepi_prefect.execution.recording import Recorder
from nepi_prefect.execution.resource import ResourceState
from nepi_prefect.spec.io import load_experiment, resource_names
ec = load_experiment(sys.argv[1], local_dir=sys.argv[2], recorder=Recorder(),
                     overrides=json.loads(sys.argv[3]) or None)
names = {n: g for g, n in resource_names(ec).items()}
flow1, flow2 = ec.get_resource(names["flow1"]), ec.get_resource(names["flow2"])
ec.deploy()
while flow2.state < ResourceState.STOPPED:
    time.sleep(0.1)
print(flow1.state == ResourceState.STARTED and flow2.state == ResourceState.STOPPED, flush=True)
time.sleep(3600)
"""
#: the dumbbell kept busy: flow1 sends until 100000 s simulated (hours of wall time)
ENDLESS = {"sim.stopTime": "100000s", "sim.timeout": 3600, "flow1.StopTime": "100000s"}


def controller_mid_run(path, out, overrides: dict | None = None) -> subprocess.Popen:
    """A controller process running the dumbbell at ``path`` until flow2 STOPPED while
    flow1 sends on: ns-3 is then busy in C++ with nothing more to write. Kill it to see
    what it leaves behind."""
    controller = subprocess.Popen(
        [sys.executable, "-c", CONTROLLER, str(path), str(out), json.dumps(overrides or {})],
        stdout=subprocess.PIPE, text=True, cwd=str(Path(__file__).resolve().parent.parent))
    if controller.stdout.readline().strip() != "True":
        controller.kill()
        controller.wait(30)
        raise AssertionError("the controller did not reach: flow2 STOPPED, flow1 sends")
    return controller


def children_of(pid: int) -> list[int]:
    found = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            ppid = next(line for line in status.read_text().splitlines() if line.startswith("PPid:"))
        except (OSError, StopIteration):
            continue
        if int(ppid.split()[1]) == pid:
            found.append(int(status.parent.name))
    return found


def test_a_killed_controller_leaves_no_simulator_behind(tmp_path):
    # SIGKILL: no release, no atexit. ns-3 is busy in C++ (flow1 sends until 100000 s),
    # reads no end-of-file and writes nothing more: the worker dies with its parent.
    controller = controller_mid_run(EXAMPLES / "ns3_dumbbell.yaml", tmp_path, ENDLESS)
    try:
        workers = children_of(controller.pid)
        assert workers, "the controller's simulator process runs"
    finally:
        controller.kill()
        controller.wait(30)
    wait_until(lambda: not any(map(alive, workers)), 30, "the simulator process ended")


def alive(pid: int) -> bool:
    try:
        return "zombie" not in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False


# The two tests that kill the simulator process come last: each later test would
# wait for a fresh import.
def test_a_value_ns3_refuses_fails_with_its_message(tmp_path):
    # The controller cannot know every ns-3 type name; ns-3 aborts, the
    # controller survives and says why.
    summary, res = run(tmp_path, "ns3_dumbbell.yaml",
                       **{"flow1.OnTime": "ns3::NoSuchRandomVariable"})
    assert summary["state"] == "FAILED"
    assert res["sim"]["state"] == "FAILED"
    assert "ns3::NoSuchRandomVariable not found" in res["sim"]["failure"]
    assert "exited with code" in res["sim"]["failure"]


def test_runaway_simulation_is_stopped_by_the_timeout(tmp_path):
    warm()  # the refused-value test killed the last process: import before timing
    start = time.monotonic()
    summary, res = run(tmp_path, "ns3_dumbbell.yaml", **{**ENDLESS, "sim.timeout": 5})
    assert summary["state"] == "FAILED"
    assert "did not finish 'run' within 5s" in res["sim"]["failure"]
    assert time.monotonic() - start < 200
    assert res["flow1"]["state"] == "FAILED"
