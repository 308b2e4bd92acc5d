"""Metrics from a simulation's results: FlowMonitor flows, sinks, ns3::Ping's output."""

from __future__ import annotations

import re
import statistics
from typing import Any

from nepi_prefect.resources.ns3.base import Ns3NetDevice


def flow_metrics(flows: list[dict]) -> dict[str, float]:
    """Per flow (``flowN_...``, N being FlowMonitor's flow id) and overall: throughput
    (Mbit/s over first sent to last received), mean delay and jitter (ms), loss (%)."""
    metrics: dict[str, float] = {"flows": len(flows)}
    total_rx = total_tx = rx_packets = 0
    delay_sum = throughput = 0.0
    for flow in flows:
        prefix = f"flow{flow['id']}_"
        rx, tx = flow["rx_packets"], flow["tx_packets"]
        duration = flow["last_rx_s"] - flow["first_tx_s"]
        rate = flow["rx_bytes"] * 8 / duration / 1e6 if rx and duration > 0 else 0.0
        metrics[prefix + "throughput_mbps"] = rate
        metrics[prefix + "tx_packets"] = tx
        metrics[prefix + "rx_packets"] = rx
        metrics[prefix + "loss_pct"] = 100.0 * (tx - rx) / tx if tx else 0.0
        if rx:
            metrics[prefix + "delay_ms"] = 1e3 * flow["delay_sum_s"] / rx
        if rx > 1:
            metrics[prefix + "jitter_ms"] = 1e3 * flow["jitter_sum_s"] / (rx - 1)
        throughput += rate
        total_rx, total_tx, rx_packets = total_rx + rx, total_tx + tx, rx_packets + rx
        delay_sum += flow["delay_sum_s"]
    metrics["throughput_mbps"] = throughput
    metrics["loss_pct"] = 100.0 * (total_tx - total_rx) / total_tx if total_tx else 0.0
    if rx_packets:
        metrics["delay_ms"] = 1e3 * delay_sum / rx_packets
    return metrics


def app_metrics(app: Any, result: dict, stdout: str) -> dict[str, float]:
    """What one application measured: a PacketSink's received bytes and goodput,
    a Ping's round-trip times (from its verbose output)."""
    metrics: dict[str, float] = {}
    ref = str(app.guid)
    if ref in result.get("sinks", {}):
        rx = result["sinks"][ref]
        start, end = _receiving(app, result)
        metrics["rx_bytes"] = rx
        metrics["goodput_mbps"] = rx * 8 / (end - start) / 1e6 if end > start else 0.0
    if app._ns3_tid == "ns3::Ping" and app.get("Destination"):
        metrics.update(ping_metrics(stdout, str(app.get("Destination")).split(":")[0]))
    return metrics


def _receiving(sink: Any, result: dict) -> tuple[float, float]:
    """When ``sink`` received: from the first packet sent to the last received of the
    FlowMonitor flows to its node and port; without them, the sink's whole life (which
    under-reports a flow shorter than the simulation)."""
    port = str(sink.get("Local") or "").rpartition(":")[2]
    node = sink.one_connected("ns3::Node", required=False)
    ips = {d.get("ip") for d in node.get_connected(Ns3NetDevice)} if node else set()
    flows = [f for f in result.get("flows", []) if f["rx_packets"] and f["dst"] in ips
             and str(f["dport"]) == port]
    if flows:
        return min(f["first_tx_s"] for f in flows), max(f["last_rx_s"] for f in flows)
    return (sink.sim_times.get("started", 0.0),
            sink.sim_times.get("stopped", result.get("sim_time", 0.0)))


def ping_metrics(stdout: str, destination: str) -> dict[str, float]:
    """rtt_min/avg/max/mdev_ms, packets sent and received, loss, for pings to ``destination``."""
    block = re.search(rf"PING {re.escape(destination)} .*?(?=^PING |\Z)", stdout, re.S | re.M)
    if not block:
        return {}
    text = block.group(0)
    rtts = [float(v) for v in re.findall(r"time=([\d.]+) ms", text)]
    metrics: dict[str, float] = {}
    summary = re.search(r"(\d+) packets transmitted, (\d+) received", text)
    if summary:
        sent, received = int(summary.group(1)), int(summary.group(2))
        metrics.update(packets_sent=sent, packets_received=received,
                       packet_loss_pct=100.0 * (sent - received) / sent if sent else 0.0)
    if rtts:
        metrics.update(rtt_min_ms=min(rtts), rtt_avg_ms=statistics.fmean(rtts),
                       rtt_max_ms=max(rtts), rtt_mdev_ms=statistics.pstdev(rtts))
    return metrics
