"""The netns transport: commands run inside a network namespace of this machine.

A namespace host shares this machine's file system and process table; only
its network stack is its own. So files are read and written directly (as
:class:`LocalTransport` does) and only commands change: each runs as
``nsenter --net=/run/netns/NAME bash -c COMMAND``. ``nsenter`` is used rather
than ``ip netns exec`` because it does not remount /sys for every command
(half the cost), and nothing the applications run needs a namespace's /sys.
"""

from __future__ import annotations

import shutil
import subprocess

from nepi_prefect.transport.base import CommandResult, TransportError, TransportTimeout
from nepi_prefect.transport.local import LocalTransport

NETNS_DIR = "/run/netns"


def netns_argv(netns: str) -> list[str]:
    """The argv prefix that runs a program inside network namespace ``netns``."""
    if shutil.which("nsenter"):
        return ["nsenter", f"--net={NETNS_DIR}/{netns}", "--"]
    return ["ip", "netns", "exec", netns]


class NetnsTransport(LocalTransport):
    """Runs commands with bash inside one named network namespace."""

    def __init__(self, netns: str):
        self.netns = netns
        self.label = f"netns:{netns}"
        self._argv = netns_argv(netns)

    def connect(self) -> None:
        probe = self.run("true", timeout=30)
        if not probe.ok:
            raise TransportError(f"{self.label}: cannot enter the namespace: "
                                 f"{probe.stderr.strip()[-300:]}")

    def run(self, command: str, timeout: float | None = None) -> CommandResult:
        try:
            proc = subprocess.run([*self._argv, "bash", "-c", command], stdin=subprocess.DEVNULL,
                                  capture_output=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise TransportTimeout(f"{self.label}: command timed out after {timeout}s") from None
        return CommandResult(proc.stdout.decode(errors="replace"),
                             proc.stderr.decode(errors="replace"), proc.returncode)
