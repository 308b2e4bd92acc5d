"""The Linux application RMs on namespace hosts, unchanged: app, ping, traceroute,
udptest (iperf3), tcpdump and the Collector; and a host reached over its own sshd."""

from __future__ import annotations

import os

import pytest

from nepi_prefect.execution.resource import ResourceAction, ResourceState
from nepi_prefect.execution.trace import TraceAttr
from nepi_prefect.resources.linux.parsers import pcap_info
from tests.fixtures.netns_runs import ec, leftovers, netns_state, prefix_of  # noqa: F401
from tests.helpers import add_rm

S = ResourceState


def _net(ec, sshd: bool = False):
    """Two hosts behind a switch: 10.0.0.1 and 10.0.0.2."""
    a, b = add_rm(ec, "NetnsNode", sshd=sshd), add_rm(ec, "NetnsNode")
    sw = add_rm(ec, "NetnsSwitch")
    for host, ip in ((a, "10.0.0.1/24"), (b, "10.0.0.2/24")):
        link = add_rm(ec, "NetnsLink", ip1=ip)
        ec.register_connection(link, host)
        ec.register_connection(link, sw)
    return a, b


def _finished(ec, guids, timeout=90.0):
    assert ec.wait_finished(guids, timeout=timeout), "did not end in time"
    for g in guids:
        rm = ec.get_resource(g)
        assert rm.state == S.FINISHED, f"{rm!r}: {rm.failure}"


def test_application_traces_stop_and_collector(ec):
    a, b = _net(ec)
    app = add_rm(ec, "LinuxApplication", a, command="ip -o -4 addr show dev eth0; echo err >&2")
    server = add_rm(ec, "LinuxApplication", b, command="exec sleep 300")
    col = add_rm(ec, "Collector", traceName="stdout")
    ec.register_connection(col, app)
    ec.deploy()
    _finished(ec, [app])
    assert "10.0.0.1/24" in ec.trace(app, "stdout")  # ran inside host a's namespace
    assert ec.trace(app, "stderr") == "err\n"
    assert ec.wait_started([server], timeout=60)
    pid = ec.get_resource(server).pid
    assert os.path.exists(f"/proc/{pid}")
    ec.stop(server)
    assert ec.state(server) == S.STOPPED
    prefix = prefix_of(ec)
    ec.shutdown()
    local = ec.get_resource(app).collected["stdout"]
    assert "10.0.0.1/24" in open(local).read()
    assert not os.path.exists(f"/proc/{pid}") or _zombie(pid)
    assert leftovers(prefix) == []


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1].startswith("Z")
    except FileNotFoundError:
        return True


def test_ping_and_traceroute_across_a_router(ec):
    # a - r - b with a route on each end
    a, r, b = (add_rm(ec, "NetnsNode", forwarding=(i == 1)) for i in range(3))
    for left, right, net in ((a, r, "10.0.1"), (r, b, "10.0.2")):
        link = add_rm(ec, "NetnsLink", ip1=f"{net}.1/24", ip2=f"{net}.2/24")
        ec.register_connection(link, left)
        ec.register_connection(link, right)
    for host, routes in ((a, "10.0.2.0/24 via 10.0.1.2"), (b, "default via 10.0.2.1")):
        ec.register_connection(add_rm(ec, "NetnsRoute", routes=routes), host)
    ping = add_rm(ec, "LinuxPing", a, target="10.0.2.2", count=2, interval=0.2)
    tr = add_rm(ec, "LinuxTraceroute", a, target="10.0.2.2", maxHops=4, waitTime=1)
    ec.deploy()
    _finished(ec, [ping, tr])
    assert ec.get_resource(ping).get_metrics()["packets_received"] == 2
    hops = ec.get_resource(tr).hop_list()
    assert [h.addresses for h in hops] == [["10.0.1.2"], ["10.0.2.2"]]


def test_udptest_iperf3_between_hosts(ec):
    a, b = _net(ec)
    server = add_rm(ec, "LinuxUdpTest", b, mode="server", port=5301)
    client = add_rm(ec, "LinuxUdpTest", a, mode="client", target="10.0.0.2", port=5301,
                    bandwidth="2M", duration=1)
    ec.register_condition(client, ResourceAction.START, server, S.STARTED)
    ec.deploy()
    _finished(ec, [server, client])
    m = ec.get_resource(client).get_metrics()
    assert 1.0 <= m["throughput_mbps"] <= 3.0, m  # 2 Mbit/s asked, over 1 s


def test_tcpdump_captures_in_the_namespace_and_collector_fetches_pcap(ec):
    a, b = _net(ec)
    dump = add_rm(ec, "LinuxTcpdump", b, interface="eth0", filter="icmp")
    ping = add_rm(ec, "LinuxPing", a, target="10.0.0.2", count=3, interval=0.2)
    col = add_rm(ec, "Collector", traceName="pcap")
    ec.register_connection(col, dump)
    # no delay: tcpdump is STARTED once it captures
    ec.register_condition(ping, ResourceAction.START, dump, S.STARTED)
    ec.deploy()
    _finished(ec, [ping])
    ec.stop(dump)
    rm = ec.get_resource(dump)
    assert rm.get_metrics()["packets_captured"] >= 6
    assert ec.trace(dump, "pcap", TraceAttr.PATH).endswith(f"/LinuxTcpdump-{dump}/pcap")
    ec.shutdown()
    info = pcap_info(open(rm.collected["pcap"], "rb").read())
    assert info.packets >= 6 and not info.truncated


@pytest.mark.ssh
def test_host_with_its_own_sshd_is_reached_over_ssh(ec):
    a, b = _net(ec, sshd=True)
    app = add_rm(ec, "LinuxApplication", a, command="echo $SSH_CONNECTION; ip -o -4 addr show eth0")
    ping = add_rm(ec, "LinuxPing", a, target="10.0.0.2", count=1)
    ec.deploy()
    _finished(ec, [app, ping])
    node = ec.get_resource(a)
    assert node.transport.label != f"netns:{node.netns}"  # an SSH connection, not nsenter
    out = ec.trace(app, "stdout")
    assert node.get("hostname") in out and "10.0.0.1/24" in out
    prefix = prefix_of(ec)
    assert len(leftovers(prefix)) == 4  # 2 hosts, 1 switch, the management link
    ec.shutdown()
    assert leftovers(prefix) == []
    assert os.listdir(os.environ["NEPI_PREFECT_NETNS_STATE"]) == []
    # keys and sshd config
    assert not os.path.exists(os.path.join(os.environ["NEPI_PREFECT_NETNS_HOMES"], prefix))
