"""What the environment manifest costs per node, and what the rest of a run's record costs.

1. The facts command over an open SSH session to a loopback sshd (what
   ``LinuxNode`` runs once at deploy): median and worst of N rounds. Target:
   at most 0.3 s per node.
2. The same on this machine without SSH (``hostname: localhost``).
3. A node's whole deploy with and without the facts (the facts gatherer
   replaced by a no-op): the difference is the added deploy time (the facts
   are gathered on a thread, so it should be about nothing).
4. ``record_environment`` at shutdown for an engine-only EC of 1000 RMs (the
   description saved as JSON and the manifest written).

    python benchmarks/bench_manifest.py [ROUNDS]
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from nepi_prefect.execution.ec import ExperimentController  # noqa: E402
from nepi_prefect.execution.environment import record_environment  # noqa: E402
from nepi_prefect.execution.recording import Recorder  # noqa: E402
from nepi_prefect.resources.linux.facts import gather_facts  # noqa: E402
from nepi_prefect.resources.linux import node as node_module  # noqa: E402
from nepi_prefect.transport.local import LocalTransport  # noqa: E402
from nepi_prefect.transport.ssh import SSHConfig, SSHTransport  # noqa: E402
from tests.fixtures.sshd import node_attrs, start_sshd  # noqa: E402

TARGET = 0.3


def facts_rounds(transport, rounds: int) -> list[float]:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        facts = gather_facts(transport)
        times.append(time.perf_counter() - start)
        assert facts.get("kernel") and facts["tools"].get("ping"), "facts incomplete"
    return times


class _NoFacts:
    def __init__(self, *args, **kwargs):
        pass

    def result(self) -> dict:
        return {}


def deploy_time(server, rounds: int, with_facts: bool, root: str) -> list[float]:
    original = node_module.BackgroundFacts
    if not with_facts:
        node_module.BackgroundFacts = _NoFacts
    times = []
    try:
        for i in range(rounds):
            ec = ExperimentController(exp_id=f"bench-manifest-{i}", recorder=Recorder(), local_dir=root)
            node = ec.register_resource("LinuxNode")
            for key, value in node_attrs(server).items():
                ec.set(node, key, value)
            start = time.perf_counter()
            ec.deploy()
            assert ec.wait_deployed([node], timeout=60)
            times.append(time.perf_counter() - start)
            ec.shutdown()
    finally:
        node_module.BackgroundFacts = original
    return times


def shutdown_record(root: str, count: int = 1000) -> float:
    ec = ExperimentController(exp_id="bench-manifest-engine", recorder=Recorder(), local_dir=root)
    for _ in range(count):
        ec.register_resource("LinuxNode")
    start = time.perf_counter()
    record_environment(ec)
    elapsed = time.perf_counter() - start
    ec._closed = True   # nothing was deployed: skip the release
    ec._dispatcher.stop()
    return elapsed


def show(label: str, times: list[float]) -> None:
    print(f"{label}: median {statistics.median(times) * 1000:.1f} ms, "
          f"max {max(times) * 1000:.1f} ms over {len(times)} rounds")


def main(rounds: int) -> int:
    workdir = tempfile.mkdtemp(prefix="nepi-bench-manifest-")
    server = start_sshd(workdir)
    ssh = SSHTransport(SSHConfig(host=server.host, port=server.port, username=server.username,
                                 key_filename=server.identity, known_hosts=server.known_hosts))
    try:
        ssh.connect()
        ssh.warm(1)  # as LinuxNode does; a bare run() without it hung here (see the note)
        ssh_times = facts_rounds(ssh, rounds)
        show("facts over SSH (one command, open session)", ssh_times)
        show("facts on localhost (no SSH)", facts_rounds(LocalTransport(), rounds))
        root = os.path.join(workdir, "results")
        with_f = deploy_time(server, rounds, True, root)
        without = deploy_time(server, rounds, False, root)
        show("LinuxNode deploy with facts", with_f)
        show("LinuxNode deploy without facts", without)
        print(f"added to a node's deploy (median): "
              f"{(statistics.median(with_f) - statistics.median(without)) * 1000:.1f} ms")
        print(f"record_environment for 1000 engine RMs at shutdown: "
              f"{shutdown_record(root) * 1000:.1f} ms")
        ok = statistics.median(ssh_times) <= TARGET
        print(f"target: facts <= {TARGET * 1000:.0f} ms per node (median): {'met' if ok else 'NOT met'}")
        return 0 if ok else 1
    finally:
        ssh.close()
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]) if len(sys.argv) > 1 else 10))
