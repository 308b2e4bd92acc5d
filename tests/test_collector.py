"""The Collector against a real sshd: layout, failures, missing traces."""

from __future__ import annotations

import logging
import os

import pytest

from nepi_prefect.execution.ec import ExperimentController
from nepi_prefect.execution.errors import AttributeValueError
from nepi_prefect.execution.recording import Recorder
from nepi_prefect.execution.resource import ResourceState
from tests.fixtures.sshd import node_attrs

pytestmark = pytest.mark.ssh
S = ResourceState


@pytest.fixture
def ec(tmp_path):
    ctl = ExperimentController(exp_id=f"col-{os.urandom(3).hex()}", local_dir=str(tmp_path),
                               recorder=Recorder())
    yield ctl
    ctl.shutdown()


def _rm(ec, rtype: str, *connect: int, **attrs) -> int:
    guid = ec.register_resource(rtype)
    for k, v in attrs.items():
        ec.set(guid, k, v)
    for other in connect:
        ec.register_connection(guid, other)
    return guid


def test_names_that_leave_the_run_dir_are_refused(ec):
    col = ec.register_resource("Collector")
    for name, value in (("rename", "../escape"), ("subDir", "/etc"), ("traceName", "a b")):
        with pytest.raises(AttributeValueError):
            ec.set(col, name, value)
    ec.set(col, "subDir", "logs/pings")


def test_layout_subdir_and_rename(ec, sshd):
    node = _rm(ec, "LinuxNode", **node_attrs(sshd))
    apps = [_rm(ec, "LinuxApplication", node, command=f"echo hello {i}; echo oops >&2")
            for i in range(2)]
    out = _rm(ec, "Collector", *apps, traceName="stdout")
    err = _rm(ec, "Collector", apps[0], traceName="stderr", subDir="errors", rename="err.txt")
    ec.deploy()
    assert ec.wait_finished(apps, timeout=30)
    ec.shutdown()
    for i, app in enumerate(apps):
        path = os.path.join(ec.run_dir, f"LinuxApplication-{app}", "stdout")
        assert open(path).read() == f"hello {i}\n"
        assert ec.get_resource(app).collected["stdout"] == path
    err_path = os.path.join(ec.run_dir, "errors", f"LinuxApplication-{apps[0]}", "err.txt")
    assert open(err_path).read() == "oops\n"
    assert ec.get_resource(apps[0]).collected["stderr"] == err_path
    assert "stderr" not in ec.get_resource(apps[1]).collected
    assert ec.get_resource(out).files == {a: ec.get_resource(a).collected["stdout"] for a in apps}
    assert ec.state(err) == S.RELEASED


def test_collects_after_a_critical_failure(ec, sshd):
    node = _rm(ec, "LinuxNode", **node_attrs(sshd))
    ping = _rm(ec, "LinuxPing", node, target="127.0.0.1", interval=0.2)  # runs until stopped
    ec.enable_trace(ping, "stdout")
    bad = _rm(ec, "LinuxApplication", node, command="echo partial; sleep 1; false",
              critical=True)
    col = _rm(ec, "Collector", ping, bad, traceName="stdout")
    ec.deploy()
    assert ec.wait_finished([bad], timeout=30)
    ec.shutdown()  # waits for the releases the failure started
    assert f"LinuxApplication {bad} FAILED" in ec.failure
    assert ec.outcome(ec.get_resource(bad)) == "FAILED"
    # the failed app's own output is kept
    assert open(ec.get_resource(bad).collected["stdout"]).read() == "partial\n"
    # the ping was stopped gracefully by the collector: its output has the statistics
    ping_out = open(ec.get_resource(ping).collected["stdout"]).read()
    assert "packets transmitted" in ping_out and "icmp_seq=1" in ping_out
    assert ec.get_resource(ping).get_metrics()["packets_received"] >= 1
    assert ec.state(col) == S.RELEASED


def test_missing_trace_is_a_warning_not_a_failure(ec, sshd, caplog):
    node = _rm(ec, "LinuxNode", **node_attrs(sshd))
    app = _rm(ec, "LinuxApplication", node, command="true")
    # an app without build/install never writes deploy_stdout; a node has no traces at all
    col = _rm(ec, "Collector", app, node, traceName="deploy_stdout")
    ec.deploy()
    assert ec.wait_finished([app], timeout=30)
    with caplog.at_level(logging.WARNING):
        ec.shutdown()
    assert ec.failure is None
    assert ec.get_resource(app).collected == {}
    assert ec.state(col) == S.RELEASED and ec.outcome(ec.get_resource(col)) != "FAILED"
    text = caplog.text
    assert "does not exist" in text and f"LinuxNode {node} has no trace" in text
    assert not os.path.exists(os.path.join(ec.run_dir, f"LinuxApplication-{app}"))
