"""Fan-out over many SSH hosts: every host in its own network namespace with its
own sshd (tests/fixtures/multihost.py). All apps of all hosts finish with the
right output; a host that dies or never answers fails only its own RMs, and
the summary says which hosts failed and why."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from nepi_prefect.execution.ec import ExperimentController
from nepi_prefect.execution.recording import Recorder
from nepi_prefect.execution.resource import ResourceState as S
from nepi_prefect.orchestration.artifacts import report_markdown, summary_artifact
from nepi_prefect.util.timefuncs import tnow
from tests.fixtures import multihost
from tests.fixtures.multihost import (
    SilentServer,
    multihost_lab,  # noqa: F401  (the fixture)
    netns_supported,
    start_hosts,
    stop_hosts,
)

pytestmark = pytest.mark.ssh
MULTIHOST_COUNT = 10


def _experiment(tmp_path, hosts_attrs: list[dict], apps: int, command: str):
    """An EC with one node per host and ``apps`` apps per node (nothing critical)."""
    ec = ExperimentController(exp_id="many-hosts", local_dir=str(tmp_path), recorder=Recorder())
    nodes, by_host = [], []
    for h, attrs in enumerate(hosts_attrs):
        node = ec.register_resource("LinuxNode")
        for key, value in {**attrs, "cleanExperiment": True, "critical": False}.items():
            ec.set(node, key, value)
        nodes.append(node)
        guids = []
        for i in range(apps):
            app = ec.register_resource("LinuxApplication")
            ec.set(app, "command", command.format(h=h, i=i))
            ec.set(app, "critical", False)
            ec.register_connection(app, node)
            guids.append(app)
        by_host.append(guids)
    return ec, nodes, by_host


def test_ten_hosts_twenty_apps_each_all_finish(multihost_lab, tmp_path):  # noqa: F811
    hosts = [host.node_attrs() for host in multihost_lab.hosts]
    ec, nodes, by_host = _experiment(tmp_path, hosts, 20, "echo out-{h}-{i}")
    try:
        ec.deploy()
        every = [a for guids in by_host for a in guids]
        assert ec.wait_finished(every, timeout=240) is not False
        for h, guids in enumerate(by_host):
            for i, app in enumerate(guids):
                assert ec.state(app) == S.FINISHED, ec.get_resource(app).failure
                assert ec.trace(app, "stdout") == f"out-{h}-{i}\n"
    finally:
        ec.shutdown()
    summary = ec.summary()
    assert [h["ok"] for h in summary["hosts"]] == [True] * len(hosts)
    assert {h["host"].split("@")[-1].rsplit(":", 1)[0] for h in summary["hosts"]} == \
        {attrs["hostname"] for attrs in hosts}
    assert all(h["rms"] == 20 and h["rms_failed"] == 0 for h in summary["hosts"])


@pytest.fixture
def small_lab():
    why = netns_supported()
    if why:
        pytest.skip(why)
    lab = start_hosts(3)
    try:
        yield lab
    finally:
        stop_hosts(lab)
        assert not lab.leftovers()


def test_a_host_killed_mid_run_fails_only_its_own_rms(small_lab, tmp_path):
    hosts = [host.node_attrs(connectTimeout=3.0) for host in small_lab.hosts]
    ec, nodes, by_host = _experiment(tmp_path, hosts, 5, "sleep 4; echo out-{h}-{i}")
    for app in by_host[0]:  # still running when host 0 is killed, however slow the start
        ec.set(app, "command", "sleep 300")
    try:
        ec.deploy()
        every = [a for guids in by_host for a in guids]
        assert ec.wait_started(every, timeout=120) is not False
        small_lab.hosts[0].kill()
        assert ec.wait_finished(every, timeout=120) is not False
        for app in by_host[0]:
            assert ec.state(app) == S.FAILED
            assert "lost" in ec.get_resource(app).failure
        for h in (1, 2):
            for i, app in enumerate(by_host[h]):
                assert ec.state(app) == S.FINISHED, ec.get_resource(app).failure
                assert ec.trace(app, "stdout") == f"out-{h}-{i}\n"
    finally:
        ec.shutdown()
    summary = ec.summary()
    reports = {h["guid"]: h for h in summary["hosts"]}
    assert reports[nodes[0]]["ok"] is False and reports[nodes[0]]["reason"] == "lost"
    assert reports[nodes[0]]["rms_failed"] == 5
    assert reports[nodes[1]]["ok"] and reports[nodes[2]]["ok"]
    # the same accounting in summary.json, the summary artifact and the report
    on_disk = json.loads((Path(ec.run_dir) / "summary.json").read_text())
    assert on_disk["hosts"] == json.loads(json.dumps(summary["hosts"]))
    lost_line = f"host {reports[nodes[0]]['host']} (guid {nodes[0]}) failed: lost: "
    for text in (summary_artifact(summary)["description"], report_markdown(summary)):
        assert "hosts: 2 ok, 1 failed" in text and lost_line in text, text


def test_a_host_that_never_answers_does_not_hold_the_others(small_lab, tmp_path):
    silent = SilentServer()
    try:
        timeout = 3.0
        hosts = [host.node_attrs(connectTimeout=timeout) for host in small_lab.hosts[:2]]
        hosts.append({**hosts[0], "hostname": silent.host, "port": silent.port,
                      "acceptUnknownHostKeys": True})
        ec, nodes, by_host = _experiment(tmp_path, hosts, 5, "echo out-{h}-{i}")
        try:
            start, stamp = time.monotonic(), tnow()
            ec.deploy()
            every = [a for guids in by_host for a in guids]
            assert ec.wait_finished(every, timeout=120) is not False
            elapsed = time.monotonic() - start
            for h in (0, 1):
                for i, app in enumerate(by_host[h]):
                    assert ec.state(app) == S.FINISHED, ec.get_resource(app).failure
                    assert ec.trace(app, "stdout") == f"out-{h}-{i}\n"
            assert ec.state(nodes[2]) == S.FAILED
            assert all(ec.state(app) == S.FAILED for app in by_host[2])
            # the silent host's node gave up when its connect timeout ran out
            silent_rm = ec.get_resource(nodes[2])
            assert (silent_rm.failed_time - stamp).total_seconds() < timeout + 10
            assert elapsed < 60  # generous: the good hosts are not held back for long
        finally:
            ec.shutdown()
        report = {h["guid"]: h for h in ec.summary()["hosts"]}[nodes[2]]
        assert report["ok"] is False and report["reason"] == "unreachable"
        assert "SSH" in report["detail"] or "timed out" in report["detail"]
    finally:
        silent.close()


def _lab_mounts() -> set[str]:
    """Loop devices and mounts of multihost labs on this machine."""
    loops = subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
    with open("/proc/self/mountinfo") as f:
        mounts = [line.split()[4] for line in f]
    return ({line.split(":")[0] for line in loops.splitlines() if "nepi-multihost-" in line}
            | {m for m in mounts if "nepi-multihost-" in m})


def test_the_hosts_homes_are_on_a_journaled_fs_torn_down_with_the_lab(small_lab):
    if os.geteuid() != 0 or not shutil.which("mkfs.ext4"):
        pytest.skip("a journaled mount for the lab needs root and mkfs.ext4")
    assert small_lab.fs == "journaled"
    host = small_lab.hosts[0]
    source = subprocess.run(["findmnt", "-n", "-o", "SOURCE", "-T", host.server.workdir],
                            capture_output=True, text=True).stdout.strip()
    assert source.startswith("/dev/loop")
    assert os.path.isdir(f"/proc/fs/jbd2/{os.path.basename(source)}-8")  # a journal
    # the host's sshd sees it: its mount namespace was copied after the mount
    with open(f"/proc/{host.server.proc.pid}/mountinfo") as f:
        assert any(line.split()[4] == small_lab.workdir for line in f)
    assert f"mount {small_lab.workdir}" in small_lab.leftovers()


def test_a_lab_is_torn_down_with_a_process_still_on_its_fs():
    why = netns_supported()
    if why:
        pytest.skip(why)
    lab = start_hosts(1)
    # a process of the host that holds the file system (its working directory)
    os.makedirs(lab.hosts[0].home, exist_ok=True)
    busy = subprocess.Popen(["ip", "netns", "exec", lab.hosts[0].netns, "sleep", "600"],
                            cwd=lab.hosts[0].home)
    try:
        stop_hosts(lab)
        assert busy.wait(30) is not None
        assert lab.leftovers() == []
    finally:
        busy.kill()
        busy.wait()


def test_a_lab_that_fails_to_start_leaves_no_mount(monkeypatch):
    why = netns_supported()
    if why:
        pytest.skip(why)
    before = _lab_mounts()

    def refuse(*_args, **_kwargs):
        raise RuntimeError("sshd refused to start")

    monkeypatch.setattr(multihost, "start_netns_sshd", refuse)
    with pytest.raises(RuntimeError, match="refused"):
        start_hosts(2)
    assert _lab_mounts() <= before
