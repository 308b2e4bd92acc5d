"""The sudo paths, logging in as a real unprivileged user over a real sshd.

The other SSH tests log in as root, where ``sudo`` is skipped. Here the node's
user is an ordinary user with passwordless sudo (``sudo_user``): a sudo app
runs as root, and stop and release must still reach its processes, which the
user itself cannot signal; a root-owned file an app left must not keep the
node from cleaning its directories.
"""

from __future__ import annotations

import os
import subprocess

import pytest

from nepi_prefect.execution.ec import ExperimentController
from nepi_prefect.execution.recording import Recorder
from nepi_prefect.execution.resource import ResourceAction, ResourceState
from nepi_prefect.execution.trace import TraceAttr
from nepi_prefect.resources.linux.parsers import pcap_info
from tests.helpers import add_rm, engine_ec, wait_until
from tests.fixtures.sshd import node_attrs

pytestmark = pytest.mark.ssh
S = ResourceState
DONE = (S.FINISHED, S.FAILED, S.STOPPED, S.RELEASED)


@pytest.fixture
def ec(tmp_path):
    yield from engine_ec(tmp_path, "sudo")




def _node(ec, user, **extra) -> int:
    return add_rm(ec, "LinuxNode", **node_attrs(user.server, **extra))


def _marker() -> str:
    return f"1000.{int.from_bytes(os.urandom(4), 'big')}"


def _pgrep(pattern: str) -> str:
    """Processes of any user matching ``pattern``: the host is this machine."""
    return subprocess.run(["pgrep", "-af", pattern], capture_output=True, text=True).stdout.strip()


def _owners(pattern: str) -> set[str]:
    pids = [line.split()[0] for line in _pgrep(pattern).splitlines()]
    if not pids:
        return set()
    out = subprocess.run(["ps", "-o", "user=", "-p", ",".join(pids)], capture_output=True,
                         text=True).stdout
    return set(out.split())


def _started(ec, guid) -> None:
    assert ec.wait(guid, (S.STARTED,) + DONE, timeout=30)
    rm = ec.get_resource(guid)
    assert ec.state(guid) == S.STARTED, getattr(rm, "failure", None)


# -- who runs the command --------------------------------------------------------------

def test_sudo_app_runs_as_root_and_its_stdout_is_readable(ec, sudo_user):
    n = _node(ec, sudo_user)
    a = add_rm(ec, "LinuxApplication", n, command="id -u; whoami; echo oops >&2", sudo=True)
    ec.deploy()
    assert ec.wait(a, DONE, timeout=30)
    assert ec.state(a) == S.FINISHED, ec.get_resource(a).failure
    assert not ec.get_resource(n).is_root
    assert ec.trace(a, "stdout") == "0\nroot\n"
    assert ec.trace(a, "stderr") == "oops\n"
    assert ec.trace(a, "stdout", TraceAttr.SIZE) == len("0\nroot\n")
    path = ec.trace(a, "stdout", TraceAttr.PATH)
    assert path.startswith(sudo_user.home + "/")


def test_app_without_sudo_runs_as_the_login_user(ec, sudo_user):
    n = _node(ec, sudo_user)
    a = add_rm(ec, "LinuxApplication", n, command="id -u")
    ec.deploy()
    assert ec.wait(a, DONE, timeout=30)
    assert ec.state(a) == S.FINISHED, ec.get_resource(a).failure
    assert ec.trace(a, "stdout") == f"{sudo_user.uid}\n"
    assert sudo_user.uid != 0


# -- stop and release reach root processes ------------------------------------------------

@pytest.mark.parametrize("command", [
    "sleep {marker}",
    # the grace period ends with SIGKILL, which sudo cannot relay: the group kill must
    # reach the command itself (without a terminal, use_pty leaves it in the group)
    "trap '' TERM INT HUP; sleep {marker}; sleep {marker}",
], ids=["plain", "ignores-sigterm"])
def test_stopping_a_sudo_app_leaves_no_process(ec, sudo_user, command):
    n = _node(ec, sudo_user)
    marker = _marker()
    a = add_rm(ec, "LinuxApplication", n, sudo=True, command=command.format(marker=marker))
    ec.deploy()
    _started(ec, a)
    wait_until(lambda: _owners(f"^sleep {marker}") == {"root"}, message="the sleep runs as root")
    ec.stop(a)
    assert ec.state(a) == S.STOPPED
    assert _pgrep(marker) == ""


def test_releasing_a_running_sudo_app_leaves_no_process(sudo_user, tmp_path):
    ec = ExperimentController(exp_id=f"sudo-rel-{os.urandom(3).hex()}", local_dir=str(tmp_path),
                              recorder=Recorder())
    marker = _marker()
    try:
        n = _node(ec, sudo_user)
        a = add_rm(ec, "LinuxApplication", n, command=f"sleep {marker}", sudo=True)
        ec.deploy()
        _started(ec, a)
        wait_until(lambda: _owners(f"^sleep {marker}") == {"root"}, message="the sleep runs as root")
    finally:
        ec.shutdown()
    assert ec.state(a) == S.RELEASED
    assert _pgrep(marker) == ""


# -- tcpdump under its default sudo -------------------------------------------------------------

def _capture(ec, sudo_user):
    """A tcpdump on lo and a ping it sees; returns (tcpdump guid, its unique filter)."""
    n = _node(ec, sudo_user)
    b = os.urandom(3)
    other = f"127.{b[0]}.{b[1]}.{max(b[2], 2)}"  # in the command line, so pgrep finds this one
    flt = f"icmp and host 127.0.0.1 and not host {other}"
    dump = add_rm(ec, "LinuxTcpdump", n, interface="lo", filter=flt)
    ping = add_rm(ec, "LinuxPing", n, target="127.0.0.1", count=3, interval=0.2)
    # no delay: tcpdump is STARTED once it captures (sudo and opening it come first)
    ec.register_condition(ping, ResourceAction.START, dump, S.STARTED)
    ec.deploy()
    assert ec.wait_finished([ping], timeout=60)
    assert ec.state(ping) == S.FINISHED, ec.get_resource(ping).failure
    assert ec.state(dump) == S.STARTED, ec.get_resource(dump).failure
    assert ec.get(dump, "sudo") is True and not ec.get_resource(n).is_root
    # tcpdump runs as root, or as its own user once the capture is open
    assert _owners(other) in ({"root"}, {"tcpdump"})
    return dump, other


def test_tcpdump_as_a_user_captures_and_stop_ends_it(ec, sudo_user):
    dump, other = _capture(ec, sudo_user)
    ec.stop(dump)
    assert ec.state(dump) == S.STOPPED
    assert _pgrep(other) == ""
    rm = ec.get_resource(dump)
    assert rm.get_metrics()["packets_captured"] >= 6  # 3 requests + 3 replies
    pcap = ec.trace(dump, "pcap")
    assert isinstance(pcap, bytes)
    info = pcap_info(pcap)
    assert info.packets >= 6 and not info.truncated and info.linktype in (1, 113, 276)


def test_tcpdump_as_a_user_is_gone_after_release(sudo_user, tmp_path):
    ec = ExperimentController(exp_id=f"sudo-dump-{os.urandom(3).hex()}",
                              local_dir=str(tmp_path), recorder=Recorder())
    try:
        dump, other = _capture(ec, sudo_user)
        info = pcap_info(ec.trace(dump, "pcap"))  # -U: a whole pcap while it runs
        assert info.packets >= 6 and not info.truncated
    finally:
        ec.shutdown()
    assert ec.state(dump) == S.RELEASED
    assert _pgrep(other) == ""


# -- what a sudo app leaves on the host ------------------------------------------------------

def test_a_finished_sudo_apps_children_do_not_outlive_release(sudo_user, tmp_path):
    ec = ExperimentController(exp_id=f"sudo-bg-{os.urandom(3).hex()}", local_dir=str(tmp_path),
                              recorder=Recorder())
    marker = _marker()
    try:
        n = _node(ec, sudo_user, cleanProcesses=True)
        # exits 0 at once, leaving a root sleep behind in its process group
        a = add_rm(ec, "LinuxApplication", n, command=f"sleep {marker} > /dev/null 2>&1 &",
                sudo=True)
        ec.deploy()
        assert ec.wait(a, DONE, timeout=30) and ec.state(a) == S.FINISHED
        assert _owners(f"^sleep {marker}") == {"root"}
    finally:
        ec.shutdown()
    assert _pgrep(marker) == ""


def test_clean_experiment_removes_what_a_sudo_app_wrote(sudo_user, tmp_path):
    ec = ExperimentController(exp_id=f"sudo-clean-{os.urandom(3).hex()}",
                              local_dir=str(tmp_path), recorder=Recorder())
    try:
        n = _node(ec, sudo_user, cleanExperiment=True)
        # root-owned directories in the user's run_home: the user alone cannot empty them
        a = add_rm(ec, "LinuxApplication", n, sudo=True,
                command="mkdir -p out/deeper && echo data > out/deeper/file && echo ok")
        ec.deploy()
        assert ec.wait(a, DONE, timeout=30) and ec.state(a) == S.FINISHED
        assert ec.trace(a, "stdout") == "ok\n"
        exp_home = ec.get_resource(n).exp_home
        assert os.stat(f"{ec.get_resource(a).run_home}/out").st_uid == 0
    finally:
        ec.shutdown()
    assert not os.path.exists(exp_home)


def test_clean_home_removes_what_a_sudo_app_wrote_before(sudo_user, tmp_path):
    first = ExperimentController(exp_id=f"sudo-left-{os.urandom(3).hex()}",
                                 local_dir=str(tmp_path / "1"), recorder=Recorder())
    try:
        n = _node(first, sudo_user)
        a = add_rm(first, "LinuxApplication", n, sudo=True,
                command="mkdir -p out/deeper && touch out/deeper/f")
        first.deploy()
        assert first.wait(a, DONE, timeout=30) and first.state(a) == S.FINISHED
        left = f"{first.get_resource(a).run_home}/out/deeper/f"
    finally:
        first.shutdown()
    assert os.path.exists(left)
    second = ExperimentController(exp_id=f"sudo-home-{os.urandom(3).hex()}",
                                  local_dir=str(tmp_path / "2"), recorder=Recorder())
    try:
        n = _node(second, sudo_user, cleanHome=True)
        a = add_rm(second, "LinuxApplication", n, command="echo fresh")
        second.deploy()
        assert second.wait(a, DONE, timeout=30)
        assert second.state(n) != S.FAILED, second.get_resource(n).failure
        assert second.state(a) == S.FINISHED, second.get_resource(a).failure
    finally:
        second.shutdown()
    assert not os.path.exists(left)
