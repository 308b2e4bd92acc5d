"""The measurement parsers, on output captured from the real tools.

The files in tests/data/measurements were produced by iputils ping,
traceroute 2.1, iperf 3.12 and tcpdump 4.99 between network namespaces.
"""

from pathlib import Path

import pytest

from nepi_prefect.resources.linux.parsers import (
    Iperf3Error,
    parse_iperf3,
    parse_ping,
    parse_ping_replies,
    parse_tcpdump_stats,
    parse_traceroute,
    pcap_info,
    traceroute_metrics,
)

DATA = Path(__file__).parent / "data" / "measurements"


def text(name: str) -> str:
    return (DATA / name).read_text()


def test_ping_all_replies():
    m = parse_ping(text("ping_ok.txt"))
    assert m == {
        "packets_sent": 3, "packets_received": 3, "packet_loss_pct": 0.0, "ping_errors": 0,
        "rtt_min_ms": 0.046, "rtt_avg_ms": 0.047, "rtt_max_ms": 0.050, "rtt_mdev_ms": 0.002,
    }


def test_ping_replies_per_packet():
    replies = parse_ping_replies(text("ping_routed.txt"))
    assert [r["seq"] for r in replies] == [1, 2]
    assert replies[0] == {"seq": 1, "address": "10.231.2.1", "ttl": 63, "time_ms": 0.085}


def test_ping_quiet_has_summary_only():
    m = parse_ping(text("ping_quiet.txt"))
    assert m["packets_received"] == 2 and m["rtt_max_ms"] == 0.070
    assert parse_ping_replies(text("ping_quiet.txt")) == []


def test_ping_total_loss_has_no_rtt():
    m = parse_ping(text("ping_loss.txt"))
    assert m["packet_loss_pct"] == 100.0 and m["packets_received"] == 0
    assert not any(k.startswith("rtt_") for k in m)


def test_ping_errors_counted():
    m = parse_ping(text("ping_errors.txt"))
    assert (m["packets_sent"], m["ping_errors"], m["packet_loss_pct"]) == (4, 4, 100.0)
    assert parse_ping_replies(text("ping_errors.txt")) == []
    assert parse_ping(text("ping_ttl_exceeded.txt"))["ping_errors"] == 2


def test_ping_without_statistics_is_empty():
    assert parse_ping("PING 10.0.0.1 (10.0.0.1) 56(84) bytes of data.\n") == {}


def test_traceroute_numeric_two_hops():
    hops = parse_traceroute(text("traceroute_2hops.txt"))
    assert [h.ttl for h in hops] == [1, 2]
    assert hops[0].addresses == ["10.231.1.254"] and hops[1].addresses == ["10.231.2.1"]
    assert hops[1].rtts_ms == [0.227, 0.017, 0.014]
    m = traceroute_metrics(text("traceroute_2hops.txt"))
    assert m["hops"] == 2 and m["reached"] == 1 and m["responding_hops"] == 2
    assert m["last_hop_rtt_ms"] == pytest.approx((0.227 + 0.017 + 0.014) / 3)


def test_traceroute_names_and_addresses():
    (hop,) = parse_traceroute(text("traceroute_lo_names.txt"))
    assert hop.probes[0].name == "localhost" and hop.addresses == ["127.0.0.1"]
    assert traceroute_metrics(text("traceroute_lo_names.txt"))["reached"] == 1


def test_traceroute_silent_hops():
    hops = parse_traceroute(text("traceroute_stars.txt"))
    assert len(hops) == 3 and not any(h.responded for h in hops)
    m = traceroute_metrics(text("traceroute_stars.txt"))
    assert (m["hops"], m["responding_hops"], m["reached"]) == (3, 0, 0)


def test_traceroute_mixed_responders_and_flags():
    # The shape of a load-balanced hop (two routers answer) and of !H annotations.
    hops = parse_traceroute(" 4  10.0.0.1  1.5 ms  10.0.0.2  2.5 ms *\n"
                            " 5  10.0.0.9  3.0 ms !H  * 4.0 ms !H\n")
    assert hops[0].addresses == ["10.0.0.1", "10.0.0.2"] and hops[0].probes[2].address is None
    assert hops[1].probes[0].flags == ["!H"] and hops[1].rtts_ms == [3.0, 4.0]


def test_iperf3_udp_client():
    m = parse_iperf3(text("iperf3_udp_client.json"))
    assert m["throughput_bps"] == pytest.approx(5002622.1268317653)
    assert m["throughput_mbps"] == pytest.approx(5.0026, rel=1e-3)
    assert (m["lost_packets"], m["packets"], m["loss_pct"]) == (0, 432, 0.0)
    assert m["jitter_ms"] == pytest.approx(0.00737613209528702)


def test_iperf3_udp_server_side():
    m = parse_iperf3(text("iperf3_server.json"))
    assert m["bytes"] == 625536 and m["packets"] == 432 and m["jitter_ms"] > 0


def test_iperf3_error_raises():
    with pytest.raises(Iperf3Error, match="Connection refused"):
        parse_iperf3(text("iperf3_refused.json"))
    with pytest.raises(Iperf3Error):
        parse_iperf3("iperf3: error - unable to start listener\n")


def test_tcpdump_exit_counters():
    assert parse_tcpdump_stats(text("tcpdump_stderr.txt")) == {
        "packets_captured": 4, "packets_received_by_filter": 4, "packets_dropped_by_kernel": 0}


def test_pcap_info_counts_records():
    info = pcap_info((DATA / "icmp.pcap").read_bytes())
    assert (info.linktype, info.packets, info.truncated) == (1, 4, False)  # Ethernet


def test_pcap_info_rejects_garbage_and_sees_truncation():
    with pytest.raises(ValueError, match="not a pcap"):
        pcap_info(b"hello world, not a capture file")
    data = (DATA / "icmp.pcap").read_bytes()
    info = pcap_info(data[:-10])
    assert info.packets == 3 and info.truncated
