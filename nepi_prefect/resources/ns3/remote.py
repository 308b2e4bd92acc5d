"""The simulator process on a LinuxNode, over the node's existing SSH connection.

An ``ns3::Simulation`` connected to a ``LinuxNode`` runs its worker there: the
worker script (it needs only Python and the ``ns3`` wheel on the host) is copied
into the run's directory on the node, started on an exec channel of the node's
connection (``Transport.stream``) with the same JSON lines over its pipes, and
the files ns-3 writes there (pcap/ASCII traces, ns-3's printing) are fetched
into the local run directory after the run. The worker dies with its sshd
session (``--die-with-parent``) and is killed by process group on release.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Any

from nepi_prefect.resources.ns3.client import WORKER_SCRIPT, SimulatorProcess, worker_command

#: the resource type of the host a simulation may run on
HOST_RTYPE = "LinuxNode"


class RemoteRun:
    """One simulation's simulator process on a Linux node: its directory there, and
    the files to fetch back into the local ``local_dir`` (the run's ns3 directory)."""

    def __init__(self, node: Any, local_dir: str, guid: int):
        self.node = node
        self.local_dir = local_dir
        self.remote_dir = f"{node.exp_run_home}/ns3-{guid}"
        self._files: dict[str, str] = {}  # remote path -> local path

    def start(self, python: str) -> SimulatorProcess:
        """Copy the worker to the node and start it there with ``python``."""
        transport = self.node.transport
        transport.run(f"mkdir -p {shlex.quote(self.remote_dir)}", timeout=60).check(
            f"creating {self.remote_dir} on {transport.label}")
        script = f"{self.remote_dir}/worker.py"
        transport.write(script, Path(WORKER_SCRIPT).read_bytes())
        stream = transport.stream(worker_command(python, script, die_with_parent=True))
        return SimulatorProcess(stream, where=transport.label)

    def remote(self, local: str | None) -> str | None:
        """The node's path for a file of the local ns3 directory; fetched after the run."""
        if local is None:
            return None
        path = f"{self.remote_dir}/{os.path.relpath(local, self.local_dir)}"
        self._files[path] = local
        return path

    def localize(self, specs: list[dict]) -> list[dict]:
        """The build request's objects with their trace files on the node."""
        for spec in specs:
            for key in ("pcap", "ascii"):
                if spec.get(key):
                    spec[key] = self.remote(spec[key])
        return specs

    def fetch(self) -> None:
        """Copy what ns-3 wrote on the node into the local run directory."""
        transport = self.node.transport
        for remote, local in self._files.items():
            data = transport.read(remote)
            if data is not None:
                os.makedirs(os.path.dirname(local), exist_ok=True)
                with open(local, "wb") as f:
                    f.write(data)
