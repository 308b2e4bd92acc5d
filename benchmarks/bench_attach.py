"""How long ``attach`` takes over a SIGKILLed run: N apps on a loopback sshd, the
controller killed while they run; then ``ExperimentController.attach`` (log in again,
every app watched again), the wait until they end, and ``shutdown()`` (traces collected,
everything released, summary.json). No Prefect record (NEPI_PREFECT_RECORDER=none).

Run: ``python benchmarks/bench_attach.py [N ...]`` (default 5 20 50).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from nepi_prefect.execution.ec import ExperimentController  # noqa: E402
from nepi_prefect.execution.recording import Recorder  # noqa: E402
from tests.fixtures.crashed import kill_controller, pgrep, start_controller  # noqa: E402
from tests.fixtures.sshd import node_attrs, start_sshd  # noqa: E402

RUN_FOR = 6.0  # seconds each app runs after the controller started it


def one(n: int, root: str, server) -> tuple[float, float, float, str]:
    marker = f"nepi-bench-attach-{os.urandom(4).hex()}"
    commands = [f"echo out-{i}; exec -a {marker}-{i} sleep {RUN_FOR}" for i in range(n)]
    proc, run_dir = start_controller(node_attrs(server, home=os.path.join(root, "home")),
                                     commands, os.path.join(root, f"results-{n}"))
    kill_controller(proc)
    try:
        started = time.monotonic()
        ec = ExperimentController.attach(run_dir, recorder=Recorder())
        attached = time.monotonic() - started
        ec.wait_finished(ec.end_guids(), timeout=300)
        followed = time.monotonic() - started
        ec.shutdown()
        total = time.monotonic() - started
        with open(os.path.join(run_dir, "summary.json")) as f:
            state = json.load(f)["state"]
        assert pgrep(marker) == [], pgrep(marker)
        return attached, followed, total, state
    finally:
        subprocess.run(["pkill", "-KILL", "-f", marker])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sizes", nargs="*", type=int, default=[5, 20, 50])
    args = parser.parse_args()
    os.environ["NEPI_PREFECT_RECORDER"] = "none"
    root = tempfile.mkdtemp(prefix="nepi-bench-attach-")
    os.environ["NEPI_PREFECT_LOST_RUNS"] = os.path.join(root, "host-runs")
    os.makedirs(os.path.join(root, "sshd"))
    server = start_sshd(os.path.join(root, "sshd"))
    try:
        print(f"{'apps':>5} {'attach s':>9} {'to the end s':>13} {'+ shutdown s':>13}  state"
              f"   (apps run {RUN_FOR:g} s after their start)")
        for n in args.sizes:
            attached, followed, total, state = one(n, root, server)
            print(f"{n:>5} {attached:>9.2f} {followed:>13.2f} {total:>13.2f}  {state}")
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
