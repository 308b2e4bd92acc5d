"""A host that accepts TCP and never speaks: the node fails within its connect
timeout, naming the host; the app on the good host is released (no process left);
summary.json and Prefect say FAILED."""

from __future__ import annotations

import socket
import threading

import pytest

from tests.faults import common as fault
from tests.fixtures.sshd import node_attrs

pytestmark = [pytest.mark.ssh, pytest.mark.prefect, pytest.mark.timeout(600)]


@pytest.fixture
def silent_host():
    """A loopback port that accepts connections and never sends a byte."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    held, stop = [], threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(5)
        for conn in held:
            conn.close()
        listener.close()


def test_a_silent_host_fails_its_node_within_the_connect_timeout(sshd, silent_host, tmp_path,
                                                                 prefect_server):
    marker = fault.new_marker("silent")
    ec, exp_id = fault.recorded_ec("fault-silent", str(tmp_path / "results"))
    silent = fault.node_on(ec, {**node_attrs(sshd), "port": silent_host, "connectTimeout": 3.0})
    good = fault.node_on(ec, node_attrs(sshd, home=str(tmp_path / "home")))
    apps = [fault.app_on(ec, silent, f"exec -a {marker}-s sleep 300"),
            fault.app_on(ec, good, f"exec -a {marker}-g sleep 300")]
    try:
        ec.deploy()
        with fault.bounded(3.0 + 60, "the wait on a silent host"):
            assert ec.wait(apps + [silent], timeout=120)
        failure = ec.get_resource(silent).failure
        assert f"127.0.0.1:{silent_host}" in failure, failure
    finally:
        with fault.bounded(120, "shutdown"):
            ec.shutdown()
    fault.no_process_left(marker)
    summary = fault.summary_on_disk(ec.run_dir)
    assert summary["state"] == "FAILED" and f"LinuxNode {silent}" in summary["failure"]
    hosts = {h["guid"]: h for h in summary["hosts"]}
    assert not hosts[silent]["ok"] and hosts[good]["ok"] is not None
    state, message = fault.prefect_final(exp_id)
    assert state == "FAILED" and "127.0.0.1" in (message or ""), message
