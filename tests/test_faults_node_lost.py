"""Losing a node for good: sshd (the listener and every connection) killed while five
apps run. The node and its apps become FAILED naming the node and the cause, every
wait returns within a bound, and the summary says FAILED."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from nepi_prefect.execution.ec import ExperimentController
from nepi_prefect.execution.recording import Recorder
from nepi_prefect.execution.resource import ResourceState as S
from tests.fixtures.sshd import SSHD, node_attrs, start_sshd, without_login_rc
from tests.helpers import wait_until

pytestmark = pytest.mark.ssh
LOST_AFTER = 3.0  # NEPI_PREFECT_NODE_LOST_AFTER for the test: reconnects stop after this


def _sshd_pids(master: int) -> list[int]:
    """The sshd master and its per-connection sshd processes (not the apps they ran)."""
    out = subprocess.run(["ps", "-e", "-o", "pid=,ppid=,comm="], capture_output=True,
                         text=True).stdout
    rows = [line.split(None, 2) for line in out.splitlines() if line.strip()]
    children: dict[int, list[tuple[int, str]]] = {}
    for pid, ppid, comm in rows:
        children.setdefault(int(ppid), []).append((int(pid), comm.strip()))
    found, todo = [master], [master]
    while todo:
        for pid, comm in children.get(todo.pop(), []):
            if comm.startswith("sshd"):
                found.append(pid)
                todo.append(pid)
    return found


def _kill_for_good(server) -> None:
    for pid in _sshd_pids(server.proc.pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    server.proc.wait(10)


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
        _kill_for_good(server)
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
        node, apps = _node_with_apps(ec, server, ["sleep 6"] * 3)
        ec.deploy()
        assert ec.wait_started(apps, timeout=60)
        _kill_for_good(server)
        down_until = time.monotonic() + 1.5  # a few failed polls while the host is down
        while time.monotonic() < down_until:
            assert [ec.state(a) for a in apps] == [S.STARTED] * 3
            time.sleep(0.1)
        server.proc = subprocess.Popen(
            without_login_rc([SSHD, "-D", "-e", "-f", os.path.join(server.workdir, "sshd_config")],
                             server.workdir),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
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
        _, b_apps = _node_with_apps(ec, kept, ["sleep 8"])
        ec.deploy()
        assert ec.wait_started(a_apps + b_apps, timeout=60)
        _kill_for_good(lost)
        assert ec.wait(a_apps, timeout=LOST_AFTER + 60)
        # the apps end the wait; the node fails right after them, in the same task
        assert wait_until(lambda: all(ec.get_resource(g).failed_time for g in [a] + a_apps),
                          timeout=30)
        assert ec.state(b_apps[0]) == S.STARTED  # the rest goes on
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
