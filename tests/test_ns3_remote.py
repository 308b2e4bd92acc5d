"""The ns-3 simulator process on a LinuxNode, over the node's SSH connection.

The node is the loopback OpenSSH server of tests/fixtures/sshd.py: this machine,
so the remote ``python`` is this interpreter, which has the ns3 wheel. Each test
starts (and imports ns-3 in) a simulator process on the node; none is kept.
"""

from __future__ import annotations

import glob
import os
import sys
import time
from pathlib import Path

import pytest
import yaml

from nepi_prefect.execution.recording import Recorder
from nepi_prefect.execution.resource import ResourceState
from nepi_prefect.spec.io import load_experiment, resource_names
from nepi_prefect.spec.run import run_experiment
from tests.fixtures.ns3 import ns3_ready  # noqa: F401  (session fixture: skips without ns3)
from tests.fixtures.sshd import node_attrs
from tests.helpers import wait_until
from tests.test_ns3_sim import (
    EXAMPLES, ascii_rtts, controller_mid_run, pcap_records, transmission_s)

pytestmark = [pytest.mark.ssh, pytest.mark.usefixtures("ns3_ready"), pytest.mark.timeout(1500)]


def on_node(tmp_path, sshd, example: str, **attrs) -> tuple[Path, str]:
    """``example`` with its simulation connected to a LinuxNode on ``sshd``, under a
    unique experiment name (the marker of its processes on the node)."""
    desc = yaml.safe_load((EXAMPLES / example).read_text())
    desc["name"] = f"ns3-remote-{os.urandom(4).hex()}"
    desc["resources"].append({"name": "host", "rtype": "LinuxNode",
                              "attributes": node_attrs(sshd, home=str(tmp_path / "home"))})
    desc["connections"].append(["sim", "host"])
    sim = next(r for r in desc["resources"] if r["name"] == "sim")
    sim["attributes"].update({"python": sys.executable, **attrs})
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(desc))
    return path, desc["name"]


def endless(path: Path) -> None:
    """flow1 sends until 100000 s simulated: the run keeps ns-3 busy for hours of wall time
    (a simulation whose events ran out ends at once, whatever its stopTime)."""
    desc = yaml.safe_load(path.read_text())
    next(r for r in desc["resources"] if r["name"] == "flow1")["attributes"]["StopTime"] = "100000s"
    path.write_text(yaml.safe_dump(desc))


def workers_of(name: str) -> list[int]:
    """Pids of simulator processes of experiment ``name`` (their command line holds the
    run's directory on the node)."""
    found = []
    for proc in glob.glob("/proc/[0-9]*/cmdline"):
        try:
            cmdline = Path(proc).read_bytes().decode(errors="replace")
        except OSError:
            continue
        if f"/exp/{name}/" in cmdline and "worker.py" in cmdline:
            found.append(int(proc.split("/")[2]))
    return found


def no_workers_left(name: str) -> None:
    wait_until(lambda: not workers_of(name), 30, f"no simulator process of {name} left")


def run_on_node(tmp_path, path) -> tuple[dict, dict]:
    ec = load_experiment(path, local_dir=str(tmp_path / "run"), recorder=Recorder())
    summary = run_experiment(ec, timeout=1200)
    return summary, {r["name"]: r for r in summary["resources"]}


def test_udp_echo_runs_on_the_node_and_its_traces_come_back(tmp_path, sshd):
    path, name = on_node(tmp_path, sshd, "ns3_udp_echo.yaml")
    summary, res = run_on_node(tmp_path, path)
    assert summary["state"] == "COMPLETED", summary
    # the worker ran from the run's directory on the node (<home>/.nepi-prefect/exp/...)
    assert glob.glob(f"{tmp_path}/home/.nepi-prefect/exp/{name}/*/ns3-*/worker.py")
    one_way = 0.002 + transmission_s(1024 + 8 + 20 + 2, 5e6)
    # the traces were written on the node and fetched into the local run directory
    assert str(tmp_path / "run") in res["d1"]["traces"]["ascii"]
    rtts = ascii_rtts(Path(res["d1"]["traces"]["ascii"]).read_text())
    assert rtts == pytest.approx([2 * one_way] * 3, abs=1e-5)
    assert len(pcap_records(res["d2"]["traces"]["pcap"])) == 6
    assert res["sim"]["metrics"]["flow1_delay_ms"] == pytest.approx(one_way * 1e3, abs=1e-3)
    assert res["client"]["metrics"]["sim_start_s"] == pytest.approx(2.0)
    no_workers_left(name)


def test_a_crash_on_the_node_fails_with_ns3s_message(tmp_path, sshd):
    path, name = on_node(tmp_path, sshd, "ns3_dumbbell.yaml")
    desc = yaml.safe_load(path.read_text())
    flow1 = next(r for r in desc["resources"] if r["name"] == "flow1")
    flow1["attributes"]["OnTime"] = "ns3::NoSuchRandomVariable"
    path.write_text(yaml.safe_dump(desc))
    summary, res = run_on_node(tmp_path, path)
    assert summary["state"] == "FAILED"
    failure = res["sim"]["failure"]
    assert "ns3::NoSuchRandomVariable not found" in failure and "exited with code" in failure
    assert f"on root@127.0.0.1:{sshd.port}" in failure or f"127.0.0.1:{sshd.port}" in failure
    no_workers_left(name)


def test_a_runaway_simulation_on_the_node_is_killed_by_the_timeout(tmp_path, sshd):
    path, name = on_node(tmp_path, sshd, "ns3_dumbbell.yaml", stopTime="100000s", timeout=5)
    endless(path)
    summary, res = run_on_node(tmp_path, path)
    assert summary["state"] == "FAILED"
    assert "did not finish 'run' within 5s" in res["sim"]["failure"]
    assert res["flow1"]["state"] == "FAILED"
    no_workers_left(name)


def test_release_mid_run_leaves_no_simulator_on_the_node(tmp_path, sshd):
    path, name = on_node(tmp_path, sshd, "ns3_dumbbell.yaml", stopTime="100000s",
                         timeout=3600)
    endless(path)
    ec = load_experiment(path, local_dir=str(tmp_path / "run"), recorder=Recorder())
    sim = ec.get_resource({n: g for g, n in resource_names(ec).items()}["sim"])
    try:
        ec.deploy()
        wait_until(lambda: sim.state == ResourceState.STARTED or sim.state >= ResourceState.FAILED,
                   1200, "the simulation STARTED on the node")
        assert sim.state == ResourceState.STARTED
        assert workers_of(name), "the simulator runs on the node"
        start = time.monotonic()
    finally:
        ec.shutdown()  # releases the simulation while ns-3 runs (100000 s simulated)
    no_workers_left(name)
    assert time.monotonic() - start < 120


def test_a_killed_controller_leaves_no_simulator_on_the_node(tmp_path, sshd):
    # The controller dies (SIGKILL: no release runs) while ns-3 is busy in C++, reads no
    # end-of-file and has nothing more to write (flow2 STOPPED at 9 s simulated, flow1
    # sends until 100000 s): only --die-with-parent ends it, with its sshd session.
    path, name = on_node(tmp_path, sshd, "ns3_dumbbell.yaml", stopTime="100000s",
                         timeout=3600)
    endless(path)
    controller = controller_mid_run(path, tmp_path / "run")
    try:
        assert workers_of(name), "the simulator runs on the node"
    finally:
        controller.kill()
        controller.wait(30)
    no_workers_left(name)


def test_a_node_python_without_ns3_fails_at_deploy_saying_so(tmp_path, sshd):
    path, name = on_node(tmp_path, sshd, "ns3_udp_echo.yaml", python="/usr/bin/python3")
    summary, res = run_on_node(tmp_path, path)
    assert summary["state"] == "FAILED"
    failure = res["sim"]["failure"]
    assert "during the import of ns-3" in failure and "No module named 'ns'" in failure
    no_workers_left(name)
