"""LinuxNode against a real OpenSSH server: reachability, host keys, layout, local mode."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from nepi_prefect.execution.ec import ExperimentController
from nepi_prefect.execution.errors import AttributeValueError
from nepi_prefect.execution.recording import Recorder
from nepi_prefect.execution.resource import ResourceState
from nepi_prefect.transport.local import LocalTransport
from tests.fixtures.sshd import node_attrs

pytestmark = pytest.mark.ssh
# A deployed node moves on to STARTED once its group's barrier opens.
DEPLOYED = (ResourceState.READY, ResourceState.STARTED)
FINAL = (*DEPLOYED, ResourceState.FAILED)


def _ec(name: str) -> ExperimentController:
    return ExperimentController(exp_id=f"{name}-{os.urandom(3).hex()}", recorder=Recorder())


def _node(ec, attrs: dict) -> int:
    n = ec.register_resource("LinuxNode")
    for k, v in attrs.items():
        ec.set(n, k, v)
    return n


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_deploy_resolves_home_and_layout(sshd):
    ec = _ec("layout")
    try:
        n = _node(ec, node_attrs(sshd))
        ec.deploy()
        assert ec.wait(n, FINAL, timeout=30)
        assert ec.state(n) in DEPLOYED
        node = ec.get_resource(n)
        home = os.path.expanduser("~")
        assert ec.get(n, "home") == home
        assert node.node_home == f"{home}/.nepi-prefect"
        assert node.exp_home == f"{home}/.nepi-prefect/exp/{ec.exp_id}"
        assert node.run_home(node) == f"{node.exp_home}/{ec.run_id}/LinuxNode-{n}"
        assert os.path.isdir(f"{node.exp_home}/{ec.run_id}")
    finally:
        ec.shutdown()


def test_clean_experiment_removes_the_exp_dir(sshd, tmp_path):
    ec = _ec("clean")
    try:
        n = _node(ec, node_attrs(sshd, home=str(tmp_path), cleanExperiment=True))
        ec.deploy()
        assert ec.wait(n, FINAL, timeout=30) and ec.state(n) in DEPLOYED
        exp_home = ec.get_resource(n).exp_home
        assert os.path.isdir(exp_home)
    finally:
        ec.shutdown()
    assert not os.path.exists(exp_home)


def test_invalid_port_is_rejected_at_set():
    ec = _ec("port")
    try:
        n = ec.register_resource("LinuxNode")
        with pytest.raises(AttributeValueError, match="port"):
            ec.set(n, "port", 70000)
        with pytest.raises(AttributeValueError, match="port"):
            ec.set(n, "port", "ssh")
        with pytest.raises(AttributeValueError, match="connectTimeout"):
            ec.set(n, "connectTimeout", -1)
    finally:
        ec.shutdown()


def _assert_fails_fast(attrs: dict, limit: float, pattern: str, caplog) -> None:
    ec = _ec("unreachable")
    start = time.monotonic()
    try:
        n = _node(ec, attrs)
        a = ec.register_resource("LinuxApplication")
        ec.set(a, "command", "echo never")
        ec.register_connection(a, n)
        ec.deploy()
        assert ec.wait([n, a], (ResourceState.FAILED, ResourceState.RELEASED), timeout=limit + 10)
        elapsed = time.monotonic() - start
        assert ExperimentController.outcome(ec.get_resource(n)) == "FAILED"
        failure = ec.get_resource(n).failure
        assert failure and f"{attrs['hostname']}:{attrs['port']}" in failure
        assert __import__("re").search(pattern, failure), failure
        assert elapsed < limit, elapsed
    finally:
        ec.shutdown()
    assert time.monotonic() - start < limit + 10  # nothing hangs on the way out


def test_closed_port_fails_with_a_clear_message(caplog):
    attrs = {"hostname": "127.0.0.1", "port": _closed_port(), "username": "nobody",
             "password": "hunter2-secret", "connectTimeout": 3}
    with caplog.at_level(logging.DEBUG):
        _assert_fails_fast(attrs, 9, "refused", caplog)  # under the default 10 s
    assert "hunter2-secret" not in caplog.text  # the secret never reaches a log


def test_silent_port_fails_within_connect_timeout(caplog):
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(5)
    try:
        attrs = {"hostname": "127.0.0.1", "port": srv.getsockname()[1], "username": "nobody",
                 "connectTimeout": 1.5}
        _assert_fails_fast(attrs, 9, "banner|timed out", caplog)  # 1.5 s asked, not 10
    finally:
        srv.close()


def test_changed_host_key_is_refused(sshd, tmp_path):
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "k")],
                   check=True)
    kind, blob = (tmp_path / "k.pub").read_text().split()[:2]
    (tmp_path / "kh").write_text(f"[127.0.0.1]:{sshd.port} {kind} {blob}\n")
    ec = _ec("hostkey")
    try:
        n = _node(ec, node_attrs(sshd, knownHosts=str(tmp_path / "kh"), acceptUnknownHostKeys=True))
        ec.deploy()
        assert ec.wait(n, FINAL, timeout=30)
        # a critical failure releases everything at once: read the outcome, not the state
        assert ExperimentController.outcome(ec.get_resource(n)) == "FAILED"
        assert "CHANGED" in ec.get_resource(n).failure
    finally:
        ec.shutdown()


_NETNS_SCRIPT = textwrap.dedent("""
    import time
    from nepi_prefect.execution.ec import ExperimentController
    from nepi_prefect.execution.recording import Recorder
    from nepi_prefect.execution.resource import ResourceState
    ec = ExperimentController(exp_id="blackhole", recorder=Recorder())
    start = time.monotonic()
    try:
        n = ec.register_resource("LinuxNode")
        for k, v in {"hostname": "10.99.0.2", "username": "nobody", "connectTimeout": 1.5}.items():
            ec.set(n, k, v)
        ec.deploy()
        ec.wait(n, (ResourceState.READY, ResourceState.FAILED), timeout=20)
        print("STATE", ec.outcome(ec.get_resource(n)))  # it may be RELEASED already
        print("FAILURE", ec.get_resource(n).failure)
        print("ELAPSED", time.monotonic() - start)
    finally:
        ec.shutdown()
""")


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("ip"), reason="needs root and iproute2")
def test_blackholed_address_in_a_network_namespace_fails_in_time():
    ns = f"nepi-bh-{os.getpid()}"
    if subprocess.run(["ip", "netns", "add", ns]).returncode != 0:
        pytest.skip("cannot create a network namespace here")
    try:
        # a veth whose peer never answers: SYNs to 10.99.0.2 vanish
        for cmd in (["link", "set", "lo", "up"], ["link", "add", "v0", "type", "veth", "peer", "name", "v1"],
                    ["addr", "add", "10.99.0.1/24", "dev", "v0"], ["link", "set", "v0", "up"]):
            subprocess.run(["ip", "-n", ns, *cmd], check=True)
        start = time.monotonic()
        out = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", _NETNS_SCRIPT],
                             capture_output=True, text=True, timeout=60,
                             cwd=os.path.dirname(os.path.dirname(__file__)))
        assert "STATE FAILED" in out.stdout, out.stdout + out.stderr
        assert "10.99.0.2:22" in out.stdout and "timed out" in out.stdout
        assert time.monotonic() - start < 20
    finally:
        subprocess.run(["ip", "netns", "del", ns])


def test_localhost_runs_locally_without_ssh(tmp_path):
    ec = _ec("local")
    try:
        n = _node(ec, {"hostname": "localhost", "home": str(tmp_path)})
        a = ec.register_resource("LinuxApplication")
        ec.set(a, "command", "echo local-$$ > ${RUN_HOME}/mark; echo done")
        ec.register_connection(a, n)
        ec.deploy()
        assert ec.wait(a, (ResourceState.FINISHED, ResourceState.FAILED), timeout=30)
        assert ec.state(a) == ResourceState.FINISHED
        assert isinstance(ec.get_resource(n).transport, LocalTransport)
        run_home = ec.get_resource(a).run_home
        assert run_home.startswith(str(tmp_path))
        assert open(os.path.join(run_home, "mark")).read().startswith("local-")
        assert ec.trace(a, "stdout") == "done\n"
    finally:
        ec.shutdown()
