"""NetnsNode and NetnsSwitch: hosts and bridges in network namespaces of this machine.

A NetnsNode *is* a LinuxNode whose transport runs commands inside its own
namespace, so every application RM (LinuxApplication, LinuxPing, LinuxUdpTest,
LinuxTcpdump, Collector, ...) works on it unchanged. With ``sshd`` on, it gets
its own OpenSSH server and is reached over SSH like a remote host.

A NetnsSwitch is a namespace holding one Linux bridge (``br0``); links that
end on it are enslaved to the bridge. Keeping bridges out of the root
namespace keeps this machine's own network untouched, and deleting the
namespace removes the bridge with every port.
"""

from __future__ import annotations

import os
import subprocess
import threading

from nepi_prefect import settings
from nepi_prefect.execution.attribute import Attribute, Flags, Types
from nepi_prefect.execution.resource import ResourceManager, ResourceState, clsinit_copy
from nepi_prefect.resources.linux.node import LinuxNode, NodeError
from nepi_prefect.resources.netns.run import NetnsError, NetnsRun, ip_batch, run_of, sh
from nepi_prefect.resources.netns.sshd import start_sshd
from nepi_prefect.transport.base import Transport
from nepi_prefect.transport.netns import NetnsTransport, netns_argv

#: a router: written to /proc/sys by the host's first shell (no sysctl program to start)
_FORWARD = ("echo 1 > /proc/sys/net/ipv4/ip_forward && "
            "echo 1 > /proc/sys/net/ipv6/conf/all/forwarding")


class _NamespaceMixin(ResourceManager):
    """Owns one namespace of the run; deletes it (and all inside) at release.

    It sits right above ResourceManager in the MRO, so the namespace is gone
    before the RM is marked RELEASED (what the EC's release waits for).
    """

    def __init__(self, ec, guid):
        super().__init__(ec, guid)
        self._netns: str | None = None
        self._run: NetnsRun | None = None
        self._gone = False  # released: a deploy still running must not create anything now
        # held while the namespace is made or removed: a release waits for a deploy
        self._life_lock = threading.Lock()
        self._root_links: list[str] = []  # root-namespace interfaces (sshd's link)
        self._daemon: subprocess.Popen | None = None  # the sshd, reaped at release

    @property
    def netns(self) -> str | None:
        """The namespace's name (``<run prefix>-<h|s><guid>``), once deployed."""
        return self._netns

    def _create_namespace(self, kind: str) -> str:
        if self._gone:
            raise NetnsError("released while deploying")
        self._run = run_of(self.ec)
        self._netns = self._run.add_namespace(f"{kind}{self.guid}")
        return self._netns

    def do_release(self) -> None:
        try:
            with self._life_lock:
                self._gone = True
                if self._run is not None and self._netns is not None:
                    for dev in self._root_links:
                        # the kernel would delete it with the namespace, but later
                        self._run.remove_link(dev)
                    self._run.remove_namespace(self._netns)
                    if self._daemon is not None:
                        self._daemon.wait(30)  # killed with the namespace; reap it
        finally:
            super().do_release()


@clsinit_copy
class NetnsNode(LinuxNode, _NamespaceMixin):
    """A host in its own network namespace on this machine."""

    _rtype = "NetnsNode"
    _help = ("A host in its own network namespace on this machine (needs root); "
             "applications run on it as on a LinuxNode")
    _platform = "netns"

    @classmethod
    def _register_attributes(cls) -> None:
        D = Flags.Design
        cls._register_attribute(Attribute(
            "forwarding", "Forward IPv4/IPv6 packets between the host's interfaces (a router)",
            type=Types.Bool, default=False, flags=D))
        cls._register_attribute(Attribute(
            "sshd", "Run an OpenSSH server in the host and reach it over SSH, like a remote "
                    "host (sets hostname, port, username, identity, knownHosts)",
            type=Types.Bool, default=False, flags=D))
        cls._register_attribute(Attribute(
            "sshPort", "Port of the host's sshd", type=Types.Integer, default=22,
            range=(1, 65535), flags=D))

    def _make_transport(self) -> Transport:
        if self.get("sshd"):
            return LinuxNode._make_transport(self)
        return NetnsTransport(self.netns, setup=_FORWARD if self.get("forwarding") else None)

    def do_deploy(self) -> None:
        if self._netns is None:
            try:
                with self._life_lock:
                    ns = self._create_namespace("h")
                    if self.get("home") is None:
                        self._set_value("home", os.path.join(settings.netns_homes_dir(),
                                                             self.ec.exp_id, f"h{self.guid}"))
                    if self.get("sshd"):
                        if self.get("forwarding"):  # SSH, not a netns shell, runs commands
                            sh([*netns_argv(ns), "sh", "-c", _FORWARD], f"making {ns} a router")
                        self._start_sshd(ns)
            except NetnsError as exc:
                self.failure = f"NetnsNode {self.guid}: {exc}"
                raise NodeError(self.failure) from None
        super().do_deploy()

    def _start_sshd(self, ns: str) -> None:
        self._root_links = [f"{self._run.prefix}m{self.guid}"]
        access = start_sshd(self._run, ns, self.guid, self.get("sshPort"), self.get("connectTimeout"))
        self._daemon = access.process
        for name, value in (("hostname", access.hostname), ("port", access.port),
                            ("username", access.username), ("identity", access.identity),
                            ("knownHosts", access.known_hosts)):
            self._set_value(name, value)


@clsinit_copy
class NetnsSwitch(_NamespaceMixin):
    """A learning bridge that NetnsLinks connect hosts to."""

    _rtype = "NetnsSwitch"
    _help = "A switch (Linux bridge, in its own namespace) that NetnsLinks connect hosts to"
    _platform = "netns"

    @classmethod
    def _register_attributes(cls) -> None:
        cls._register_attribute(Attribute(
            "stp", "Run the spanning tree protocol (needed only for loops of switches)",
            type=Types.Bool, default=False, flags=Flags.Design))

    def do_deploy(self) -> None:
        if self._netns is None:
            try:
                with self._life_lock:
                    ns = self._create_namespace("s")
                    ip_batch(["link add br0 type bridge stp_state %d forward_delay 0"
                              % int(bool(self.get("stp"))), "link set br0 up"],
                             f"creating the bridge of {ns}", netns=ns)
            except NetnsError as exc:
                self.failure = f"NetnsSwitch {self.guid}: {exc}"
                raise
        super().do_deploy()

    def release_after(self) -> list[int]:
        return sorted(self.connections)

    def release_dependents(self) -> list[int]:
        return sorted(self.connections)


def endpoint_ready(rm: ResourceManager) -> bool | None:
    """True when a link end is READY (or further), None if it FAILED, else False."""
    if rm.state == ResourceState.FAILED:
        return None
    return ResourceState.READY <= rm.state < ResourceState.FAILED
