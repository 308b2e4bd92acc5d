"""The measurement RMs with the real tools: over the loopback sshd, and between
two hosts made of network namespaces (each with its own sshd)."""

from __future__ import annotations

import os
import time

import pytest

from nepi_prefect.execution.errors import AttributeValueError
from nepi_prefect.execution.resource import ResourceAction, ResourceState
from nepi_prefect.execution.trace import TraceAttr
from nepi_prefect.resources.linux import application as application_module
from nepi_prefect.resources.linux.parsers import pcap_info
from tests.helpers import add_rm, engine_ec, wait_until
from tests.fixtures.sshd import node_attrs

pytestmark = pytest.mark.ssh
S = ResourceState
PING_KEYS = {"rtt_min_ms", "rtt_avg_ms", "rtt_max_ms", "rtt_mdev_ms", "packet_loss_pct",
             "packets_sent", "packets_received"}


@pytest.fixture
def ec(tmp_path):
    yield from engine_ec(tmp_path, "meas")




def _node(ec, attrs: dict) -> int:
    return add_rm(ec, "LinuxNode", **attrs)


def _finished(ec, guids, timeout=60.0) -> None:
    assert ec.wait_finished(guids, timeout=timeout), "measurement did not end in time"
    for g in guids:
        rm = ec.get_resource(g)
        assert rm.state == S.FINISHED, f"{rm!r}: {getattr(rm, 'failure', None)}"


# -- attributes fail at the call -----------------------------------------------------

def test_bad_attribute_values_fail_at_set(ec):
    ping = ec.register_resource("LinuxPing")
    with pytest.raises(AttributeValueError):
        ec.set(ping, "count", 0)
    with pytest.raises(AttributeValueError):
        ec.set(ping, "interval", "often")
    udp = ec.register_resource("LinuxUdpTest")
    with pytest.raises(AttributeValueError, match="server, client|'server'"):
        ec.set(udp, "mode", "both")
    with pytest.raises(AttributeValueError, match="bits per second"):
        ec.set(udp, "bandwidth", "fast")
    tr = ec.register_resource("LinuxTraceroute")
    with pytest.raises(AttributeValueError):
        ec.set(tr, "method", "carrier-pigeon")


def test_commands_built_from_attributes(ec):
    ping = ec.get_resource(add_rm(ec, "LinuxPing", target="10.0.0.1", count=3, interval=0.5,
                               packetSize=100, ttl=7, quiet=True))
    assert ping.build_command() == "ping -c 3 -i 0.5 -s 100 -t 7 -q 10.0.0.1"
    dump = ec.get_resource(add_rm(ec, "LinuxTcpdump", interface="lo", filter="icmp and host 1.2.3.4",
                               snaplen=96, count=10))
    assert dump.build_command() == "tcpdump --immediate-mode -U -w pcap -i lo -s 96 -c 10 'icmp and host 1.2.3.4'"
    assert dump.get("sudo") is True and ping.get("depends") == "iputils-ping"


# -- over the loopback sshd ------------------------------------------------------------

def test_ping_loopback_metrics(ec, sshd):
    node = _node(ec, node_attrs(sshd))
    ping = add_rm(ec, "LinuxPing", node, target="127.0.0.1", count=3, interval=0.2)
    ec.deploy()
    _finished(ec, [ping])
    metrics = ec.get_resource(ping).get_metrics()
    assert PING_KEYS <= set(metrics)
    assert metrics["packets_sent"] == 3 and metrics["packets_received"] == 3
    assert metrics["packet_loss_pct"] == 0
    assert 0 < metrics["rtt_min_ms"] <= metrics["rtt_avg_ms"] <= metrics["rtt_max_ms"] < 1000
    assert [r["seq"] for r in ec.get_resource(ping).replies()] == [1, 2, 3]


def test_stopped_ping_keeps_its_statistics(ec, sshd):
    node = _node(ec, node_attrs(sshd))
    ping = add_rm(ec, "LinuxPing", node, target="127.0.0.1", interval=0.2)  # no count: runs on
    ec.deploy()
    assert ec.wait_started([ping], timeout=30)
    rm = ec.get_resource(ping)
    wait_until(lambda: len(rm.replies()) >= 2, message="two ping replies")
    ec.stop(ping)
    assert rm.state == S.STOPPED
    assert rm.get_metrics()["packets_received"] >= 2
    assert "rtt_avg_ms" in rm.get_metrics()


def test_tcpdump_captures_ping_and_collector_fetches_pcap(ec, sshd):
    node = _node(ec, node_attrs(sshd))
    dump = add_rm(ec, "LinuxTcpdump", node, interface="lo",
               filter="icmp and src host 127.0.0.1 and dst host 127.0.0.1")
    ping = add_rm(ec, "LinuxPing", node, target="127.0.0.1", count=3, interval=0.2)
    col = add_rm(ec, "Collector", traceName="pcap")
    ec.register_connection(col, dump)
    # no delay: tcpdump is STARTED once it captures, so the ping's first packet is seen
    ec.register_condition(ping, ResourceAction.START, dump, S.STARTED)
    ec.deploy()
    _finished(ec, [ping])
    rm = ec.get_resource(dump)
    path = ec.trace(dump, "pcap", TraceAttr.PATH)
    assert path.endswith("/LinuxTcpdump-%d/pcap" % dump)
    ec.stop(dump)
    assert rm.get_metrics()["packets_captured"] >= 6  # 3 requests + 3 replies
    live = ec.trace(dump, "pcap")
    assert isinstance(live, bytes) and pcap_info(live).packets >= 6
    ec.shutdown()
    local = rm.collected["pcap"]
    assert local == os.path.join(ec.run_dir, f"LinuxTcpdump-{dump}", "pcap")
    info = pcap_info(open(local, "rb").read())
    assert info.packets >= 6 and not info.truncated and info.linktype in (1, 113, 276)


def test_tcpdump_that_cannot_capture_fails_at_once_with_its_reason(ec, sshd, monkeypatch):
    """A start waits for tcpdump to capture, but not for one that exited: no such
    interface fails it (its stderr says why), long before the capture wait ends."""
    monkeypatch.setattr(application_module, "READY_WAIT", 120.0)
    node = _node(ec, node_attrs(sshd))
    dump = add_rm(ec, "LinuxTcpdump", node, interface="nepi-no-such0")
    started = time.monotonic()
    ec.deploy()
    assert ec.wait(dump, (S.FAILED,), timeout=60), ec.state(dump, hr=True)
    assert time.monotonic() - started < 60  # it did not wait the 120 s for a capture
    assert "exited with code 1" in ec.get_resource(dump).failure
    assert "nepi-no-such0" in ec.trace(dump, "stderr")  # tcpdump's own words, kept


def test_traceroute_loopback(ec, sshd):
    node = _node(ec, node_attrs(sshd))
    tr = add_rm(ec, "LinuxTraceroute", node, target="127.0.0.1", maxHops=3, waitTime=1)
    ec.deploy()
    _finished(ec, [tr])
    rm = ec.get_resource(tr)
    assert rm.get_metrics()["hops"] == 1 and rm.get_metrics()["reached"] == 1
    assert rm.hop_list()[0].addresses == ["127.0.0.1"]


# -- between two namespace hosts ---------------------------------------------------------

def test_ping_and_traceroute_between_hosts(ec, netns_lab):
    a, b = netns_lab.hosts
    na, nb = _node(ec, a.node_attrs()), _node(ec, b.node_attrs())
    ping = add_rm(ec, "LinuxPing", na, target=b.address, count=3, interval=0.2)
    back = add_rm(ec, "LinuxPing", nb, target=a.address, count=2, interval=0.2)
    tr = add_rm(ec, "LinuxTraceroute", na, target=b.address, maxHops=4, waitTime=1)
    lost = add_rm(ec, "LinuxPing", na, target="10.%s.0.99" % a.address.split(".")[1], count=2,
               interval=0.2, timeout=0.5, critical=False)
    ec.deploy()
    _finished(ec, [ping, back, tr])
    assert ec.wait_finished([lost], timeout=30)
    m = ec.get_resource(ping).get_metrics()
    assert m["packets_received"] == 3 and m["packet_loss_pct"] == 0
    assert ec.get_resource(back).get_metrics()["packets_received"] == 2
    hops = ec.get_resource(tr).hop_list()
    assert [h.addresses for h in hops] == [[b.address]]
    # nobody answers for .99: ping exits 1, the RM FAILED, its loss is still measured
    assert ec.get_resource(lost).state == S.FAILED
    assert ec.get_resource(lost).get_metrics()["packet_loss_pct"] == 100


def test_udp_test_between_hosts(ec, netns_lab):
    a, b = netns_lab.hosts
    na, nb = _node(ec, a.node_attrs()), _node(ec, b.node_attrs())
    server = add_rm(ec, "LinuxUdpTest", nb, mode="server", port=5301, bindAddress=b.address)
    client = add_rm(ec, "LinuxUdpTest", na, mode="client", target=b.address, port=5301,
                 bandwidth="2M", duration=1)
    ec.register_condition(client, ResourceAction.START, server, S.STARTED)
    ec.deploy()
    _finished(ec, [client, server])
    cm, sm = ec.get_resource(client).get_metrics(), ec.get_resource(server).get_metrics()
    assert 1.0 < cm["throughput_mbps"] < 3.0
    assert cm["loss_pct"] <= 5 and cm["jitter_ms"] >= 0 and cm["packets"] > 0
    assert sm["packets"] == cm["packets"] and sm["bytes"] > 0


