"""How long N LinuxApplications take over SSH on loopback, deploy to stdout read back.

Starts its own sshd (the test fixture's helpers, used as plain functions),
then runs ``echo hello-$i`` N times on one node. Targets: 50 apps < 3 s,
500 apps < 15 s (the reference NEPI took ~100 s for 50).

    python benchmarks/bench_ssh_apps.py [N ...]
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from nepi_prefect.execution.ec import ExperimentController  # noqa: E402
from nepi_prefect.execution.recording import Recorder  # noqa: E402
from nepi_prefect.execution.resource import ResourceState  # noqa: E402
from tests.fixtures.sshd import node_attrs, start_sshd  # noqa: E402

TARGETS = {50: 3.0, 500: 15.0}


def run(server, count: int) -> float:
    """Seconds from deploy until every app is FINISHED and its stdout read back."""
    ec = ExperimentController(exp_id=f"bench-{count}", recorder=Recorder())
    try:
        node = ec.register_resource("LinuxNode")
        for key, value in node_attrs(server, cleanExperiment=True).items():
            ec.set(node, key, value)
        apps = []
        for i in range(count):
            app = ec.register_resource("LinuxApplication")
            ec.set(app, "command", f"echo hello-{i}")
            ec.register_connection(app, node)
            apps.append(app)
        start = time.monotonic()
        ec.deploy()
        ec.wait_finished(apps)
        outs = [ec.trace(app, "stdout") for app in apps]
        elapsed = time.monotonic() - start
        bad = [a for a in apps if ec.state(a) != ResourceState.FINISHED]
        assert not bad, f"{len(bad)} apps did not finish"
        assert outs == [f"hello-{i}\n" for i in range(count)], "wrong stdout"
        return elapsed
    finally:
        ec.shutdown()


def main(counts: list[int]) -> int:
    workdir = tempfile.mkdtemp(prefix="nepi-bench-sshd-")
    server = start_sshd(workdir)
    failed = False
    try:
        for count in counts:
            elapsed = run(server, count)
            target = TARGETS.get(count)
            verdict = "" if target is None else (" (target < %.0f s: %s)" % (
                target, "ok" if elapsed < target else "MISSED"))
            failed |= target is not None and elapsed >= target
            print(f"{count:5d} LinuxApplications over SSH: {elapsed:6.2f} s wall{verdict}",
                  flush=True)
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main([int(a) for a in sys.argv[1:]] or [50, 500]))
