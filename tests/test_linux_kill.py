"""Stopping or releasing an application leaves nothing it started alive on the host:
not a child in the background, not a daemon that left the session and forked twice.

Over SSH (a real sshd on loopback) and on a local node; the processes are looked
for with ``pgrep -f`` and a marker only this test uses.
"""

from __future__ import annotations

import os
import random
import subprocess

import pytest

from nepi_prefect.execution.resource import ResourceState as S
from tests.fixtures.sshd import node_attrs
from tests.helpers import add_rm, engine_ec, wait_until

#: what the command leaves running, and how many processes show ``sleep MARKER``
COMMANDS = {
    # a child in the background of a shell that waits for it (same session)
    "child": ("bash -c 'sleep {m} & wait' & sleep {m}", 3),
    # a daemon: a new session, then the intermediate process exits (reparented to init)
    "daemon": ("( setsid sleep {m} & ); sleep {m}", 2),
}


def _running(marker: str) -> list[str]:
    found = subprocess.run(["pgrep", "-af", f"sleep {marker}"], capture_output=True, text=True)
    return [line for line in found.stdout.splitlines() if "pgrep" not in line]


@pytest.fixture(params=["local", pytest.param("ssh", marks=pytest.mark.ssh)])
def node_attributes(request, tmp_path):
    if request.param == "local":
        return {"hostname": "localhost", "home": str(tmp_path / "home")}
    return node_attrs(request.getfixturevalue("sshd"))


def _marker() -> str:
    """A sleep duration no other process on the machine uses."""
    return f"1000.{os.getpid()}{random.randrange(10**6):06d}"


@pytest.mark.parametrize("kind", sorted(COMMANDS))
@pytest.mark.parametrize("action", ["stop", "release"])
def test_nothing_the_app_started_outlives_it(tmp_path, node_attributes, kind, action):
    marker = _marker()
    for ec in engine_ec(tmp_path, f"kill-{kind}"):
        node = add_rm(ec, "LinuxNode", **node_attributes)
        command, count = COMMANDS[kind]
        app = add_rm(ec, "LinuxApplication", node, command=command.format(m=marker))
        ec.deploy()
        assert ec.wait(app, (S.STARTED, S.FINISHED, S.FAILED), timeout=60)
        assert ec.state(app) == S.STARTED, ec.get_resource(app).failure
        wait_until(lambda: len(_running(marker)) == count,
                   message=lambda: f"{count} processes, found {_running(marker)}")
        if action == "stop":
            ec.stop(app)
            assert ec.state(app) == S.STOPPED
        else:
            ec.release([app])
            assert ec.state(app) == S.RELEASED
        assert _running(marker) == [], f"left alive after {action}"


def test_a_daemon_left_by_a_finished_app_dies_at_release(tmp_path):
    marker = _marker()
    for ec in engine_ec(tmp_path, "kill-finished"):
        node = add_rm(ec, "LinuxNode", hostname="localhost", home=str(tmp_path / "home"))
        app = add_rm(ec, "LinuxApplication", node, command=f"( setsid sleep {marker} & )")
        ec.deploy()
        assert ec.wait(app, (S.FINISHED, S.FAILED), timeout=60) and ec.state(app) == S.FINISHED
        wait_until(lambda: _running(marker), message="the daemon runs")
        ec.release([app])
        assert _running(marker) == []
