"""Remote processes never outlive the script: an interrupted experiment is still released."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap

import pytest

from tests.fixtures.sshd import node_attrs
from tests.helpers import wait_until

SCRIPT = textwrap.dedent('''
    import json, signal, sys
    from nepi_prefect.execution.ec import ExperimentController

    attrs, seconds = json.loads(sys.argv[1]), sys.argv[2]
    ec = ExperimentController(exp_id="exit-cleanup")   # no shutdown() anywhere
    node = ec.register_resource("LinuxNode")
    for name, value in attrs.items():
        ec.set(node, name, value)
    app = ec.register_resource("LinuxApplication")
    ec.set(app, "command", f"sleep {seconds}")
    ec.register_connection(app, node)
    ec.deploy()
    ec.wait_started(app)
    print("STARTED", flush=True)
    signal.pause()  # until the test signals this process
''')


def running(pattern: str) -> list[str]:
    found = subprocess.run(["pgrep", "-af", pattern], capture_output=True, text=True)
    return [line for line in found.stdout.splitlines() if "pgrep" not in line]


@pytest.mark.ssh
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_interrupted_script_releases_its_remote_processes(sshd, tmp_path, signum):
    seconds = f"1000.{random.randrange(10**6):06d}"     # a sleep nobody else runs
    env = {**os.environ, "NEPI_PREFECT_RESULTS": str(tmp_path)}
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, json.dumps(node_attrs(sshd)), seconds],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout.readline().strip() == "STARTED", proc.stderr.read()
        # STARTED means launched; the wrapper may exec the command a moment later
        wait_until(lambda: running(f"sleep {seconds}"), message="the app runs on the host")
        proc.send_signal(signum)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    wait_until(lambda: not running(f"sleep {seconds}"),
               message=f"the app's processes end: {running(f'sleep {seconds}')}")
    assert "exited without calling shutdown()" in proc.stderr.read()
