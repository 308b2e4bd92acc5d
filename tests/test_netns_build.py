"""Emulated networks: building, shaping at run time, total clean-up, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from nepi_prefect.execution.errors import AttributeValueError
from nepi_prefect.execution.recording import Recorder
from nepi_prefect.execution.resource import ResourceState
from nepi_prefect.resources.netns.run import NetnsError, known_run
from nepi_prefect.spec.io import build_experiment, description_from_data
from nepi_prefect.spec.validate import DescriptionError
from tests.fixtures.netns_runs import (  # noqa: F401 (fixtures)
    ec, leftovers, netem_available, netns_state, prefix_of)
from tests.helpers import add_rm, wait_until

S = ResourceState


def _pair(ec, **link):
    a, b = add_rm(ec, "NetnsNode"), add_rm(ec, "NetnsNode")
    link = add_rm(ec, "NetnsLink", ip1="10.0.0.1/24 fd00::1/64", ip2="10.0.0.2/24 fd00::2/64",
                  **link)
    ec.register_connection(link, a)
    ec.register_connection(link, b)
    return a, b, link


def _qdisc(ns: str, dev: str) -> str:
    return subprocess.run(["tc", "-n", ns, "qdisc", "show", "dev", dev],
                          capture_output=True, text=True).stdout


def test_pair_pings_v4_v6_and_release_removes_everything(ec):
    a, b, link = _pair(ec)
    p4 = add_rm(ec, "LinuxPing", node=a, target="10.0.0.2", count=2, interval=0.2)
    p6 = add_rm(ec, "LinuxPing", node=b, target="fd00::1", count=2, interval=0.2)
    ec.deploy()
    assert ec.wait_finished([p4, p6], timeout=60)
    for p in (p4, p6):
        rm = ec.get_resource(p)
        assert rm.state == S.FINISHED, rm.failure
        assert rm.get_metrics()["packets_received"] == 2
    prefix = prefix_of(ec)
    assert sorted(leftovers(prefix)) == [f"{prefix}-h{a}", f"{prefix}-h{b}"]
    ec.shutdown()
    assert leftovers(prefix) == []
    assert os.listdir(os.environ["NEPI_PREFECT_NETNS_STATE"]) == []


def test_star_and_line_from_compact_description(tmp_path, netns_state):
    desc = description_from_data({
        "name": "shapes",
        "topology": [{"shape": "star", "hosts": 3, "prefix": "s"},
                     {"shape": "line", "hosts": 4, "prefix": "l", "subnet": "10.1.0.0/24"}],
        "resources": [
            {"name": "p1", "rtype": "LinuxPing", "attributes": {"target": "10.0.0.3", "count": 1}},
            {"name": "p2", "rtype": "LinuxPing", "attributes": {"target": "10.1.0.10", "count": 1}},
        ],
        "connections": [["sh1", "p1"], ["lh1", "p2"]],
    })
    ec = build_experiment(desc, local_dir=str(tmp_path), recorder=Recorder())
    try:
        ec.deploy()
        guids = [g for g in ec.resources if ec.get_resource(g).get_rtype() == "LinuxPing"]
        assert ec.wait_finished(guids, timeout=90)
        for g in guids:
            rm = ec.get_resource(g)
            assert rm.state == S.FINISHED and rm.get_metrics()["packets_received"] == 1, rm.failure
        prefix = prefix_of(ec)
        assert len(leftovers(prefix)) == 3 + 1 + 4  # hosts + switch of the star, line hosts
    finally:
        ec.shutdown()
    assert leftovers(prefix) == []


def test_rate_changes_at_run_time_with_set_and_set_with_conditions(ec):
    a, b, link = _pair(ec, rate=10)
    ec.deploy()
    assert ec.wait_deployed([a, b, link], timeout=60)
    rm = ec.get_resource(link)
    (ns1, if1), (ns2, if2) = rm.interfaces
    assert "tbf" in _qdisc(ns1, if1) and "rate 10Mbit" in _qdisc(ns2, if2)
    ec.set(link, "rate", 2)
    assert "rate 2Mbit" in _qdisc(ns1, if1) and "rate 2Mbit" in _qdisc(ns2, if2)
    app = add_rm(ec, "LinuxApplication", node=a, command="sleep 0.5")
    ec.deploy([app])
    ec.set_with_conditions("rate", 5, link, app, S.STARTED, "0.2s")
    wait_until(lambda: "rate 5Mbit" in _qdisc(ns1, if1), message="the rate to change to 5 Mbit/s")
    assert ec.get(link, "rate") == 5
    if netem_available():  # a delay turns the tbf into a netem that keeps the rate
        ec.set(link, "delay", 20)
        assert "netem" in _qdisc(ns1, if1) and "delay 20ms" in _qdisc(ns2, if2)
        ec.set(link, "delay", 0)
    else:  # refused with the reason; the attribute and the qdisc stay as they were
        with pytest.raises(NetnsError, match="This kernel has no netem"):
            ec.set(link, "delay", 20)
        assert ec.get(link, "delay") == 0 and "rate 5Mbit" in _qdisc(ns1, if1)
    ec.set(link, "rate", 0)
    assert "tbf" not in _qdisc(ns1, if1) and "netem" not in _qdisc(ns1, if1)


def test_delay_gives_round_trip_time_or_a_clear_no_netem_error(ec):
    a, b, link = _pair(ec, delay=20)
    ping = add_rm(ec, "LinuxPing", node=a, target="10.0.0.2", count=3, interval=0.2)
    ec.deploy()
    assert ec.wait_finished([ping], timeout=60)
    if netem_available():
        rtt = ec.get_resource(ping).get_metrics()["rtt_avg_ms"]
        assert 38 <= rtt <= 60, rtt  # 2 × 20 ms, plus what a loaded machine adds
    else:
        lk = ec.get_resource(link)
        assert lk.failed_time is not None
        assert "This kernel has no netem" in lk.failure
        assert lk.interfaces == []  # the veth was removed at once


def _network_script(tmp_path, then: str, sshd: bool = True) -> str:
    """A program that builds two hosts (one with sshd if ``sshd``) and a shaped link,
    prints the run's prefix, then does ``then``."""
    return textwrap.dedent(f"""
        import os, signal, sys, threading
        sys.path.insert(0, {os.getcwd()!r})
        from nepi_prefect.execution.ec import ExperimentController
        from nepi_prefect.execution.recording import Recorder
        from nepi_prefect.resources.netns.run import known_run
        from tests.helpers import add_rm
        ec = ExperimentController(exp_id="child", local_dir={str(tmp_path)!r}, recorder=Recorder())
        a = add_rm(ec, "NetnsNode", sshd={sshd}); b = add_rm(ec, "NetnsNode")
        l = add_rm(ec, "NetnsLink", ip1="10.0.0.1/24", ip2="10.0.0.2/24", rate=5)
        ec.register_connection(l, a); ec.register_connection(l, b)
        ec.deploy(); assert ec.wait_deployed([a, b, l], timeout=90)
        assert not ec.get_resource(a).failure, ec.get_resource(a).failure
        print(known_run(ec).prefix, flush=True)
    """) + then + "\n"


def _killed_run(tmp_path) -> tuple[str, int]:
    """Run :func:`_network_script` and SIGKILL it; returns the run's prefix and the sshd's pid."""
    script = _network_script(tmp_path, "os.kill(os.getpid(), signal.SIGKILL)")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    prefix = proc.stdout.split()[0]
    left = leftovers(prefix)
    assert len(left) == 3, left  # two namespaces and the sshd's management link
    state = os.environ["NEPI_PREFECT_NETNS_STATE"]
    with open(os.path.join(state, f"{prefix}.json")) as f:
        return prefix, json.load(f)["pids"][0]


@pytest.mark.ssh  # the killed run's host logs in over its own sshd
def test_killed_run_is_cleaned_by_the_cli(tmp_path, netns_state):
    prefix, sshd_pid = _killed_run(tmp_path)
    cli = os.path.join(os.path.dirname(sys.executable), "nepi-prefect")
    out = subprocess.run([cli, "cleanup", "--netns"], capture_output=True, text=True, timeout=60)
    assert prefix in out.stdout, out.stdout + out.stderr
    assert leftovers(prefix) == []
    wait_until(lambda: _gone(sshd_pid), message="the sshd to end")
    assert os.listdir(netns_state) == []


@pytest.mark.ssh
def test_killed_run_is_cleaned_by_the_next_run(tmp_path, netns_state, ec):
    prefix, _ = _killed_run(tmp_path)
    node = add_rm(ec, "NetnsNode")
    ec.deploy()
    assert ec.wait_deployed([node], timeout=60)
    assert leftovers(prefix) == []
    assert os.listdir(netns_state) == [f"{prefix_of(ec)}.json"]


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1].startswith("Z")  # a zombie awaiting its reaper
    except FileNotFoundError:
        return True


# -- bad input ------------------------------------------------------------------------------

def test_bad_addresses_fail_at_set(ec):
    link = ec.register_resource("NetnsLink")
    with pytest.raises(AttributeValueError, match="no prefix length"):
        ec.set(link, "ip1", "10.0.0.1")
    with pytest.raises(AttributeValueError, match="not an IPv4 or IPv6"):
        ec.set(link, "ip2", "10.0.0.300/24")
    with pytest.raises(AttributeValueError, match="between 0.0 and 100.0"):
        ec.set(link, "loss", 120)


def test_overlapping_addresses_fail_at_deploy_and_leave_nothing(ec):
    a, b, l1 = _pair(ec)
    c = add_rm(ec, "NetnsNode")
    l2 = add_rm(ec, "NetnsLink", ip1="10.0.0.2/24", ip2="10.0.0.3/24")
    ec.register_connection(l2, b)
    ec.register_connection(l2, c)
    ec.deploy()
    rms = [ec.get_resource(g) for g in (l1, l2)]
    wait_until(lambda: any(rm.failure for rm in rms), message="a link to fail")
    assert "overlaps the address 10.0.0.2/24" in " ".join(rm.failure or "" for rm in rms)
    prefix = prefix_of(ec)
    ec.shutdown()
    assert leftovers(prefix) == []


def test_link_with_one_end_fails_clearly(ec):
    a = add_rm(ec, "NetnsNode")
    lonely = add_rm(ec, "NetnsLink", ip1="10.0.0.1/24")
    ec.register_connection(lonely, a)
    with pytest.raises(Exception, match="cannot be connected"):
        ec.register_connection(lonely, add_rm(ec, "LinuxPing", target="10.0.0.2"))
    ec.deploy(guids=[a, lonely])   # not the refused ping: unconnected, it would fail first
    rm = ec.get_resource(lonely)
    wait_until(lambda: rm.failure, message="the link to fail")
    assert "needs two ends" in rm.failure and "connected to 1" in rm.failure
    ec.shutdown()
    # The failure releases everything: the node may be released before it made the
    # run (its namespaces are made after the run object); if it did, nothing is left.
    run = known_run(ec)
    assert run is None or leftovers(run.prefix) == []


def test_a_rate_tc_refuses_fails_and_removes_the_veth(ec):
    a, b, link = _pair(ec, rate=1e-7)
    ec.deploy()
    rm = ec.get_resource(link)
    wait_until(lambda: rm.failure, message="the link to fail")
    assert "tc refused 'tbf rate 0bit" in rm.failure
    assert rm.interfaces == []
    for node in (a, b):
        ns = ec.get_resource(node).netns
        links = subprocess.run(["ip", "-n", ns, "-o", "link"], capture_output=True, text=True)
        assert "eth0" not in links.stdout
    prefix = prefix_of(ec)
    ec.shutdown()
    assert leftovers(prefix) == []


def test_description_errors_name_the_problem(netns_state):
    with pytest.raises(DescriptionError, match="undeclared|unknown|not declared"):
        description_from_data({"resources": [{"name": "l", "rtype": "NetnsLink"},
                                             {"name": "h", "rtype": "NetnsNode"}],
                               "connections": [["l", "h"], ["l", "nosuch"]]})
    with pytest.raises(DescriptionError, match="holds 2 hosts, 6 needed"):
        description_from_data({"topology": {"shape": "star", "hosts": 6,
                                            "subnet": "10.0.0.0/30"}})
    with pytest.raises(DescriptionError, match=r"address 10.0.0.2 is given twice \(x.ip2 and y.ip1\)"):
        description_from_data({"resources": [
            {"name": "x", "rtype": "NetnsLink", "attributes": {"ip1": "10.0.0.1/24", "ip2": "10.0.0.2/24"}},
            {"name": "y", "rtype": "NetnsLink", "attributes": {"ip1": "10.0.0.2/24"}}]})
    with pytest.raises(DescriptionError, match="expected one of line, star, dumbbell"):
        description_from_data({"topology": {"shape": "ring", "hosts": 3}})


def test_ctrl_c_releases_everything(tmp_path, netns_state):
    script = _network_script(tmp_path, "threading.Event().wait()  # until Ctrl-C", sshd=False)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        prefix = proc.stdout.readline().strip()
        assert prefix, proc.stderr.read()
        assert len(leftovers(prefix)) == 2
        proc.send_signal(signal.SIGINT)
        proc.wait(120)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
    assert leftovers(prefix) == []
    assert os.listdir(netns_state) == []


def test_without_privileges_the_error_says_so(tmp_path, netns_state):
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {os.getcwd()!r})
        from nepi_prefect.execution.ec import ExperimentController
        from nepi_prefect.execution.recording import Recorder
        from tests.helpers import add_rm
        ec = ExperimentController(exp_id="noroot", local_dir={str(tmp_path / 'r')!r},
                                  recorder=Recorder())
        a = add_rm(ec, "NetnsNode")
        ec.deploy(); ec.wait_deployed([a], timeout=60)
        print(ec.get_resource(a).failure)
        ec.shutdown()
    """)
    os.chmod(tmp_path, 0o777)
    env = dict(os.environ, NEPI_PREFECT_NETNS_STATE=str(tmp_path / "state"), HOME=str(tmp_path))
    proc = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                           sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, env=env, cwd=str(tmp_path))
    assert "need root" in proc.stdout, proc.stdout + proc.stderr


def test_dumbbell_example_shows_the_bottleneck(tmp_path, netns_state):
    from nepi_prefect.spec.io import load_experiment
    ec = load_experiment("examples/dumbbell.yaml", local_dir=str(tmp_path), recorder=Recorder())
    try:
        names = {ec.get_resource(g).get_rtype(): g for g in ec.resources}
        flow = next(g for g in ec.resources if ec.get_resource(g).get_rtype() == "LinuxUdpTest"
                    and ec.get(g, "mode") == "client")
        ping = names["LinuxPing"]
        ec.deploy()
        assert ec.wait_finished([flow, ping], timeout=120)
        got = ec.get_resource(flow).get_metrics()
        assert 8.0 <= got["throughput_mbps"] <= 11.0, got  # 20 offered, 10 let through
        # the ping crosses the queue the flow fills: far above an idle veth's ~0.1 ms
        assert ec.get_resource(ping).get_metrics()["rtt_avg_ms"] > 5, ec.get_resource(ping).get_metrics()
    finally:
        ec.shutdown()
