"""Losing a node for good: sshd (the listener and every connection) killed while five
apps run. The node and its apps become FAILED naming the node and the cause, every
wait returns within a bound, and the summary says FAILED."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from nepi_prefect.execution.ec import ExperimentController
from nepi_prefect.execution.recording import Recorder
from nepi_prefect.execution.resource import ResourceState as S
from nepi_prefect.orchestration.recorder import PrefectRecorder
from tests.faults.common import bounded, no_process_left, prefect_final, summary_on_disk
from tests.fixtures.sshd import kill_for_good, node_attrs, restart_sshd, start_sshd
from tests.helpers import until_file_command, wait_until

pytestmark = pytest.mark.ssh
LOST_AFTER = 3.0  # NEPI_PREFECT_NODE_LOST_AFTER for the test: reconnects stop after this


def _node_with_apps(ec, server, commands: list[str]) -> tuple[int, list[int]]:
    node = ec.register_resource("LinuxNode")
    for k, v in node_attrs(server, connectTimeout=3.0).items():
        ec.set(node, k, v)
    apps = []
    for command in commands:
        app = ec.register_resource("LinuxApplication")
        ec.set(app, "command", command)
        ec.register_connection(app, node)
        apps.append(app)
    return node, apps


def _pgrep(marker: str) -> str:
    return subprocess.run(["pgrep", "-af", marker], capture_output=True, text=True).stdout


def test_sshd_killed_for_good_fails_node_and_apps(tmp_path, monkeypatch):
    monkeypatch.setenv("NEPI_PREFECT_NODE_LOST_AFTER", str(LOST_AFTER))
    server = start_sshd(str(tmp_path))
    marker = f"nepi-lost-{os.urandom(4).hex()}"
    ec = ExperimentController(exp_id="node-lost", local_dir=str(tmp_path / "results"),
                              recorder=Recorder())
    try:
        node, apps = _node_with_apps(ec, server,
                                     [f"exec -a {marker}-{i} sleep 300" for i in range(5)])
        ec.deploy()
        assert ec.wait_started(apps, timeout=60)
        assert wait_until(lambda: _pgrep(marker).count(marker) == 5, timeout=30)
        kill_for_good(server)
        lost_at = time.monotonic()
        assert ec.wait_finished(apps, timeout=90), [ec.state(a, hr=True) for a in apps]
        waited = time.monotonic() - lost_at
        # the first FAILED app ends the waits; the node fails the others in the same task
        rms = [ec.get_resource(g) for g in apps + [node]]
        assert wait_until(lambda: all(rm.failed_time for rm in rms), timeout=30), \
            [(rm.guid, ec.state(rm.guid, hr=True)) for rm in rms]
        for app in apps:
            failure = ec.get_resource(app).failure
            assert f"LinuxNode {node}" in failure and "lost" in failure, failure
        assert f"LinuxNode {node}" in ec.get_resource(node).failure
        assert f"{server.host}:{server.port}" in ec.get_resource(node).failure
        assert ec.wait(apps + [node], timeout=30)  # every wait returns
        started = time.monotonic()
        ec.shutdown()
        shutdown = time.monotonic() - started
        summary = ec.summary()
        assert summary["state"] == "FAILED"
        assert f"LinuxNode {node}" in summary["failure"], summary["failure"]
        outcomes = {r["guid"]: r["state"] for r in summary["resources"]}
        assert [outcomes[g] for g in [node] + apps] == ["FAILED"] * 6, outcomes
        host = summary["hosts"][0]
        assert host["ok"] is False and host["reason"] == "lost", host
        print(f"\nwaits returned {waited:.1f} s after the loss (reconnects for {LOST_AFTER} s); "
              f"shutdown {shutdown:.1f} s")
        assert waited < LOST_AFTER + 60
    finally:
        ec.shutdown()
        subprocess.run(["pkill", "-KILL", "-f", marker])  # the lost run's apps (our marker)
        server.stop()


def test_sshd_back_within_the_grace_is_survived(tmp_path, monkeypatch):
    """The same sshd killed (every connection too) and started again on its port
    before NEPI_PREFECT_NODE_LOST_AFTER: the apps go on and finish."""
    monkeypatch.setenv("NEPI_PREFECT_NODE_LOST_AFTER", "60")
    server = start_sshd(str(tmp_path))
    ec = ExperimentController(exp_id="node-back", local_dir=str(tmp_path / "results"),
                              recorder=Recorder())
    try:
        go = tmp_path / "go"  # the apps run until the host is back
        node, apps = _node_with_apps(ec, server, [until_file_command(go)] * 3)
        ec.deploy()
        assert ec.wait_started(apps, timeout=60)
        kill_for_good(server)
        down_until = time.monotonic() + 1.5  # a few failed polls while the host is down
        while time.monotonic() < down_until:
            assert [ec.state(a) for a in apps] == [S.STARTED] * 3
            time.sleep(0.1)
        restart_sshd(server)
        go.touch()
        assert ec.wait_finished(apps, timeout=90)
        assert [ec.state(a) for a in apps] == [S.FINISHED] * 3, \
            [ec.get_resource(a).failure for a in apps]
        assert ec.state(node) != S.FAILED
    finally:
        ec.shutdown()
        server.stop()
    assert ec.summary()["state"] == "COMPLETED"


def test_a_lost_node_that_is_not_critical_fails_alone(tmp_path, monkeypatch):
    """Node A (not critical, nor its apps) lost for good: A and its apps FAIL, the app
    on node B finishes, and the experiment goes on to COMPLETED, with A's host named."""
    monkeypatch.setenv("NEPI_PREFECT_NODE_LOST_AFTER", str(LOST_AFTER))
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    lost, kept = start_sshd(str(tmp_path / "a")), start_sshd(str(tmp_path / "b"))
    marker = f"nepi-lost-{os.urandom(4).hex()}"
    ec = ExperimentController(exp_id="node-lost-alone", local_dir=str(tmp_path / "results"),
                              recorder=Recorder())
    try:
        a, a_apps = _node_with_apps(ec, lost, [f"exec -a {marker}-{i} sleep 300" for i in range(2)])
        for guid in [a] + a_apps:
            ec.set(guid, "critical", False)
        go = tmp_path / "go"  # B's app runs until A is declared lost
        _, b_apps = _node_with_apps(ec, kept, [until_file_command(go)])
        ec.deploy()
        assert ec.wait_started(a_apps + b_apps, timeout=60)
        kill_for_good(lost)
        assert ec.wait(a_apps, timeout=LOST_AFTER + 60)
        # the apps end the wait; the node fails right after them, in the same task
        assert wait_until(lambda: all(ec.get_resource(g).failed_time for g in [a] + a_apps),
                          timeout=30)
        assert ec.state(b_apps[0]) == S.STARTED  # the rest goes on
        go.touch()
        assert ec.wait_finished(b_apps, timeout=60)
        assert ec.state(b_apps[0]) == S.FINISHED
    finally:
        ec.shutdown()
        subprocess.run(["pkill", "-KILL", "-f", marker])
        lost.stop()
        kept.stop()
    summary = ec.summary()
    assert summary["state"] == "COMPLETED", summary["failure"]
    hosts = {h["guid"]: h for h in summary["hosts"]}
    assert hosts[a]["reason"] == "lost" and f"{lost.host}:{lost.port}" in hosts[a]["detail"]


def _lost_run(tmp_path, monkeypatch, server, marker: str, critical: bool = True,
              recorder: Recorder | None = None) -> ExperimentController:
    """A run whose node was declared lost while 3 apps ran (they still run). A critical
    node's loss aborts the run, which releases everything at once (the host still down);
    a non-critical one's RMs are released at shutdown."""
    monkeypatch.setenv("NEPI_PREFECT_NODE_LOST_AFTER", str(LOST_AFTER))
    monkeypatch.setenv("NEPI_PREFECT_LOST_RUNS", str(tmp_path / "host-runs"))
    ec = ExperimentController(exp_id=f"node-lost-kill-{marker[-8:]}",
                              local_dir=str(tmp_path / "results"), recorder=recorder or Recorder())
    node, apps = _node_with_apps(ec, server, [f"echo out-{i}; exec -a {marker}-{i} sleep 300"
                                              for i in range(3)])
    for guid in [node] + apps:
        ec.set(guid, "critical", critical)
    ec.deploy()
    assert ec.wait_started(apps, timeout=60)
    wait_until(lambda: _pgrep(marker).count(marker) == 3, timeout=30)
    kill_for_good(server)
    with bounded(LOST_AFTER + 60, "the waits on a lost node"):
        assert ec.wait(apps, timeout=LOST_AFTER + 120)
    # the apps end the wait; the node fails right after them, in the same task
    wait_until(lambda: ec.get_resource(node).failed_time, timeout=30)
    assert _pgrep(marker).count(marker) == 3  # the loss itself kills nothing
    return ec


def test_a_lost_hosts_processes_are_killed_when_it_is_back_before_release(tmp_path, monkeypatch):
    server = start_sshd(str(tmp_path))
    marker = f"nepi-lostkill-{os.urandom(4).hex()}"
    ec = None
    try:
        ec = _lost_run(tmp_path, monkeypatch, server, marker, critical=False)
        assert ec.state(ec.resources[0]) == S.FAILED  # not released yet
        restart_sshd(server)  # the host is back before the release
        ec.shutdown()
        assert wait_until(lambda: marker not in _pgrep(marker), timeout=30), _pgrep(marker)
        assert [r["state"] for r in ec.summary()["resources"]] == ["FAILED"] * 4
        assert not list((tmp_path / "host-runs").rglob("*.json"))  # nothing left to kill
    finally:
        if ec is not None:
            ec.shutdown()
        subprocess.run(["pkill", "-KILL", "-f", marker])
        server.stop()


@pytest.mark.prefect
@pytest.mark.timeout(600)
def test_a_lost_runs_processes_are_killed_by_the_next_run_on_the_host(tmp_path, monkeypatch,
                                                                     prefect_server):
    """sshd killed for good: the run ends FAILED (summary.json and Prefect); the apps'
    outputs stay on the host; the next run there, once it is back, kills the processes."""
    server = start_sshd(str(tmp_path))
    marker = f"nepi-lostkill-{os.urandom(4).hex()}"
    try:
        ec = _lost_run(tmp_path, monkeypatch, server, marker,
                       recorder=PrefectRecorder(timeout=120))
        with bounded(120, "shutdown with the host down"):
            ec.shutdown()  # the host is still down: its release cannot kill them
        assert _pgrep(marker).count(marker) == 3
        summary = summary_on_disk(ec.run_dir)
        assert summary["state"] == "FAILED" and "LinuxNode 1" in summary["failure"]
        state, message = prefect_final(ec.exp_id)
        assert state == "FAILED" and "lost" in message, message
        notes = list((tmp_path / "host-runs").rglob("*.json"))
        assert len(notes) == 1 and '"lost": true' in notes[0].read_text()
        restart_sshd(server)
        assert _pgrep(marker).count(marker) == 3
        # the next run on that host (no cleanProcesses needed for a lost run's leftovers)
        nxt = ExperimentController(exp_id="next-run", local_dir=str(tmp_path / "results"),
                                   recorder=Recorder())
        try:
            _, apps = _node_with_apps(nxt, server, ["true"])
            nxt.deploy()
            assert nxt.wait_finished(apps, timeout=60)
            no_process_left(marker)
        finally:
            nxt.shutdown()
        assert nxt.summary()["state"] == "COMPLETED"
        assert not list((tmp_path / "host-runs").rglob("*.json"))
        # no trace lost: what the lost apps printed is still on the host
        homes = [r["run_home"] for r in json.load(open(os.path.join(
            ec.run_dir, "run-state.json")))["resources"] if r.get("run_home")]
        assert sorted(open(f"{h}/stdout").read() for h in homes) == \
            [f"out-{i}\n" for i in range(3)]
    finally:
        subprocess.run(["pkill", "-KILL", "-f", marker])
        server.stop()
