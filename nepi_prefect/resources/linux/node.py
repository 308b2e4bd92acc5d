"""LinuxNode: a Linux host reached over SSH (or this machine, as "localhost").

Every RM of a node shares the node's one transport (one SSH connection with
a small pool of persistent shells) and its one :class:`AppMonitor`, which
polls the status of all running applications of the node in a single
command per period.

Layout on the host::

    <home>/.nepi-prefect/                         node_home
    <home>/.nepi-prefect/apps/<hash>/             app_home (sources + build, shared by runs)
    <home>/.nepi-prefect/exp/<exp_id>/            exp_home
    <home>/.nepi-prefect/exp/<exp_id>/<run_id>/<rtype>-<guid>/   an RM's run_home
"""

from __future__ import annotations

import functools
import shlex
import threading
from typing import Callable

from nepi_prefect.execution.attribute import Attribute, Flags, Types
from nepi_prefect.execution.resource import ResourceManager, ResourceState, clsinit_copy
from nepi_prefect.resources.linux.facts import BackgroundFacts
from nepi_prefect.resources.linux import lostruns
from nepi_prefect.resources.linux.appcommands import LAUNCH
from nepi_prefect.resources.linux.hostops import HostBatcher, StepGroup
from nepi_prefect.resources.linux.leftovers import kill_script
from nepi_prefect.resources.linux.monitor import AppMonitor, WatchedProcess  # noqa: F401
from nepi_prefect.resources.linux.processes import kill_app
from nepi_prefect.resources.linux.shellsafe import check_home, home_problem
from nepi_prefect.resources.linux.login import (  # noqa: F401  (NodeError: re-exported)
    LOCALHOSTS,
    LOGIN_ATTRIBUTES,
    NodeError,
    make_transport,
)
from nepi_prefect.transport.base import Transport, TransportError


@clsinit_copy
class LinuxNode(ResourceManager):
    """A Linux host that runs applications."""

    _rtype = "LinuxNode"
    _help = "A Linux host reached over SSH; hostname 'localhost' runs locally without SSH."
    _platform = "linux"
    _connects_to = ("LinuxApplication", "Collector")  # apps run on one node; nodes do not connect
    # for the run-state file: where the host is and how to log in again (no secret)
    _run_state_fields = ("hostname", "username", "port", "node_home", "identity", "knownHosts",
                         "acceptUnknownHostKeys", "connectTimeout", "gateway", "gatewayUser",
                         "gatewayPort", "credentials")

    @classmethod
    def _register_attributes(cls) -> None:
        D, S = Flags.Design, Types.String
        for name, help_, kw in (
            ("hostname", "Host name or address; 'localhost' runs commands locally, without SSH", {}),
            ("username", "User to log in as (default: the current user)", {}),
            ("identity", "Path of the SSH private key", {}),
            ("knownHosts", "known_hosts file used to verify the host key",
             {"default": "~/.ssh/known_hosts"}),
            ("home", "Base directory on the host (default: the user's home); an absolute "
                     "path without spaces or shell characters", {"set_hook": check_home}),
            ("gateway", "Jump host to reach the node through (SSH direct-tcpip)", {}),
            ("gatewayUser", "User on the gateway (default: username)", {}),
            ("credentials", "Name of saved SSH credentials (a Prefect block) that give "
                            "username, private key, password and known_hosts", {}),
        ):
            cls._register_attribute(Attribute(name, help_, type=S, flags=D, **kw))
        cls._register_attribute(Attribute(
            "password", "SSH password (never logged)", type=S, flags=Flags.Credential))
        cls._register_attribute(Attribute(
            "port", "SSH port", type=Types.Integer, default=22, range=(1, 65535), flags=D))
        cls._register_attribute(Attribute(
            "gatewayPort", "SSH port of the gateway", type=Types.Integer, default=22,
            range=(1, 65535), flags=D))
        cls._register_attribute(Attribute(
            "acceptUnknownHostKeys", "Trust a host key that is not in known_hosts "
            "(a changed key is always refused)", type=Types.Bool, default=False, flags=D))
        cls._register_attribute(Attribute(
            "connectTimeout", "Seconds to wait for the host to answer", type=Types.Double,
            default=10.0, range=(0.1, 3600), flags=D))
        cls._register_attribute(Attribute(
            "maxChannels", "Concurrent SSH channels (persistent shells) to the host; "
            "sshd allows 10 sessions by default and SFTP takes one", type=Types.Integer,
            default=8, range=(1, 64), flags=D))
        for name, help_ in (
            ("cleanHome", "Remove the node's nepi-prefect directory (all experiments and "
                          "builds) at deploy"),
            ("cleanExperiment", "Remove this experiment's directory on the host at release"),
            ("cleanProcesses", "At release, kill every process the experiment's "
                               "applications left on the host"),
        ):
            cls._register_attribute(Attribute(name, help_, type=Types.Bool, default=False, flags=D))

    def __init__(self, ec, guid):
        super().__init__(ec, guid)
        self._transport: Transport | None = None
        self._home: str | None = None
        self._pkg_manager: str | None = None
        self._is_root = False
        self._lock = threading.Lock()
        self._pkg_lock = threading.Lock()
        self._installed: set[str] = set()
        self._app_locks: dict[str, threading.Lock] = {}
        self._monitor: AppMonitor | None = None
        self._batcher: HostBatcher | None = None
        self._waiting: list[Callable[[], None]] = []
        self._host_failure: tuple[str, str] | None = None  # (kind, detail)
        self._facts: BackgroundFacts | None = None
        self._note: str | None = None  # this run's note of its processes here (lostruns)

    # -- where things live -----------------------------------------------------
    @property
    def transport(self) -> Transport:
        if self._transport is None:
            raise NodeError(f"LinuxNode {self.guid} is not deployed: no connection yet")
        return self._transport

    @property
    def is_localhost(self) -> bool:
        return (self.get("hostname") or "") in LOCALHOSTS

    @property
    def is_root(self) -> bool:
        return self._is_root

    @property
    def pkg_manager(self) -> str | None:
        """apt-get, dnf or yum, as found on the host."""
        return self._pkg_manager

    @property
    def node_home(self) -> str:
        if self._home is None:
            raise NodeError(f"LinuxNode {self.guid} is not deployed: its home is unknown")
        return f"{self._home.rstrip('/')}/.nepi-prefect"

    @property
    def exp_home(self) -> str:
        return f"{self.node_home}/exp/{self.ec.exp_id}"

    @property
    def exp_run_home(self) -> str:
        """This run's directory: the parent of every RM's run_home."""
        return f"{self.exp_home}/{self.ec.run_id}"

    def run_home(self, rm: ResourceManager) -> str:
        return f"{self.exp_run_home}/{rm.get_rtype()}-{rm.guid}"

    def app_home(self, digest: str) -> str:
        return f"{self.node_home}/apps/{digest}"

    def app_lock(self, digest: str) -> threading.Lock:
        """A lock per app_home, so one build serves the RMs that share it."""
        with self._lock:
            return self._app_locks.setdefault(digest, threading.Lock())

    @property
    def monitor(self) -> "AppMonitor":
        with self._lock:
            if self._monitor is None:
                self._monitor = AppMonitor(self, busy=self._launching)
            return self._monitor

    @property
    def batcher(self) -> HostBatcher:
        """Runs the short remote steps of the node's apps, one command per batch."""
        with self._lock:
            if self._batcher is None:
                self._batcher = HostBatcher(self.transport, f"{self.guid}",
                                            on_drained=self._drained)
            return self._batcher

    def _launching(self) -> bool:
        """Launches of the node's apps are queued or on the wire (the monitor holds)."""
        batcher = self._batcher
        return batcher is not None and batcher.pending(LAUNCH)

    def _drained(self, group: StepGroup | None) -> None:
        """A batcher group drained: after the launches, the monitor polls soon and the
        host's facts are gathered (the first time)."""
        if group is not LAUNCH:
            return
        monitor, facts = self._monitor, self._facts
        if monitor is not None:
            monitor.nudge()
        if facts is not None:
            facts.start()

    def when_ready(self, callback: Callable[[], None]) -> bool:
        """True if the node is READY (or FAILED) now; else False, and ``callback`` is
        scheduled on the dispatcher when it is (no polling by the waiting apps)."""
        with self._lock:
            if self.state >= ResourceState.READY:
                return True
            self._waiting.append(callback)
            return False

    def _wake_waiting(self) -> None:
        with self._lock:
            waiting, self._waiting = self._waiting, []
        for callback in waiting:
            self.ec.schedule("0s", callback)

    def host_lost(self, reason: str) -> None:
        """The monitor found the host gone for good: the node and every RM on it FAIL
        with ``reason`` (which names the node and the cause), on the dispatcher."""
        self._host_failure = ("lost", reason)
        lostruns.mark_lost(self._note)  # the next run on this host kills what is left
        self.ec.schedule("0s", functools.partial(self._lose, reason))

    def _lose(self, reason: str) -> None:
        """Its RMs, then the node, in this one task and before any is logged: the first
        critical failure aborts the experiment and schedules the releases, which must
        find every one of them FAILED already."""
        if self.state in (ResourceState.FAILED, ResourceState.RELEASED):
            return
        ending = (ResourceState.FINISHED, ResourceState.FAILED, ResourceState.STOPPED,
                  ResourceState.RELEASED)
        lost = [rm for rm in self.get_connected() if rm.state not in ending]
        for rm in lost:
            rm.failure = f"{rm.get_rtype()} {rm.guid}: {reason}"
        self.failure = reason
        for rm in lost + [self]:
            rm.fail()
        for rm in lost + [self]:
            rm.error(rm.failure)

    def host_report(self) -> dict:
        """How this host fared: reachable or why not, and how its RMs ended."""
        outcomes = [self.ec.outcome(rm) for rm in self.get_connected()]
        failed = outcomes.count("FAILED")
        if self._host_failure is not None:
            reason, detail = self._host_failure
        elif self.ready_time is None:
            reason, detail = "not deployed", "the node never became READY"
        elif failed:
            reason, detail = "command failed", f"{failed} of {len(outcomes)} RMs FAILED"
        else:
            reason, detail = None, None
        label = self._transport.label if self._transport is not None else self.get("hostname")
        return {"guid": self.guid, "host": label, "ok": reason is None, "reason": reason,
                "detail": detail, "rms": len(outcomes), "rms_failed": failed}

    # -- connection ---------------------------------------------------------------
    def _make_transport(self) -> Transport:
        values = {name: self.get(name) for name in LOGIN_ATTRIBUTES}
        return make_transport(values, self.guid, self.ec.register_secret)

    def do_deploy(self) -> None:
        self._transport = self._make_transport()
        # one round trip, built-ins only: where home is, root or not, the package
        # manager, and (unless cleanHome must run first) this run's directories
        home = shlex.quote(self.get("home")) if self.get("home") else '"$HOME"'
        probe = (f'h={home}; h="${{h:-/tmp}}"; echo "$h"; echo "$EUID"; '
                 f"command -v apt-get || command -v dnf || command -v yum || echo")
        # what lost (or, with cleanProcesses, crashed) runs left on this host: killed now
        stale = lostruns.leftovers(self._transport.label, bool(self.get("cleanProcesses")))
        if stale:
            probe += "; " + kill_script([home for note in stale for home in note.homes])
        if not self.get("cleanHome"):
            probe += f"; {self._mkdirs('${h%/}')}"
        try:
            self._transport.connect()
            # the batcher's and the monitor's shells open while the probe opens its own
            # (warming all three would make the probe wait for the slowest of them)
            self._transport.warm(2)
            result = self._transport.run(probe, timeout=max(30.0, self.get("connectTimeout")))
        except TransportError as exc:
            self._host_failure = (exc.kind, str(exc))
            self.failure = f"LinuxNode {self.guid}: host unreachable: {exc}"
            raise NodeError(self.failure) from None
        lines = result.stdout.splitlines() + ["", "", ""]
        self._home = lines[0].strip() or "/tmp"
        if home_problem(self._home):  # the host's $HOME: it is substituted into commands
            raise NodeError(f"LinuxNode {self.guid}: the home found on the host is not "
                            f"usable: {home_problem(self._home)}; set 'home'")
        self._is_root = lines[1].strip() == "0"
        self._pkg_manager = lines[2].strip().rsplit("/", 1)[-1] or None
        if self.get("home") is None:
            self._set_value("home", self._home)
        if stale:
            self.info(lostruns.settled(stale, lines))
        self._note = lostruns.remember(self._transport.label, self.ec.exp_id, self.ec.run_id,
                                       self.guid, self._homes())
        try:
            if self.get("cleanHome"):
                prep = (f"h={shlex.quote(self._home.rstrip('/'))}; "
                        f"{self._remove_tree(self.node_home)} && {self._mkdirs('$h')}")
                result = self._transport.run(prep)
            result.check(f"preparing {self.exp_run_home} on {self._transport.label}")
        except TransportError as exc:
            self._host_failure = ("command failed", str(exc))
            raise
        # The manifest's facts: one command over this session, off the deploy's path and
        # after the launches (see _drained), or at release if nothing launches here.
        self._facts = BackgroundFacts(self._transport, self.get_connected(), self.warning,
                                      start=False)
        self.info(f"connected to {self._transport.label}; home {self._home}")
        super().do_deploy()
        self._wake_waiting()

    def _homes(self) -> list[str]:
        return [self.run_home(rm) for rm in self.get_connected()]

    def _mkdirs(self, home: str) -> str:
        """mkdir of this run's directory and of the run_home of every RM on the node
        (``home`` may be a shell expansion), so that apps need no round trip at deploy."""
        base = f'"{home}/.nepi-prefect"'
        run = f"{base}/exp/{shlex.quote(self.ec.exp_id)}/{shlex.quote(self.ec.run_id)}"
        homes = " ".join(f"{run}/{shlex.quote(f'{rm.get_rtype()}-{rm.guid}')}"
                         for rm in self.get_connected())
        return f"mkdir -p {run} {base}/apps {homes}"

    def do_fail(self) -> None:
        super().do_fail()
        self._wake_waiting()  # the apps waiting for READY learn it never comes

    def facts(self) -> dict:
        """The host's environment as found at deploy (see ``resources/linux/facts.py``)."""
        return self._facts.result() if self._facts is not None else {}

    def _remove_tree(self, path: str) -> str:
        """A command that removes ``path``; a user who is not root tries sudo next,
        since a sudo app may have left root-owned directories that only root can empty."""
        rm = f"rm -rf {shlex.quote(path)}"
        return rm if self._is_root else f"{{ {rm} || sudo -n {rm}; }}"

    def install_packages(self, packages: list[str]) -> None:
        """Install ``packages`` with the host's package manager, once per node."""
        with self._pkg_lock:
            todo = [p for p in packages if p not in self._installed]
            if not todo:
                return
            quoted = " ".join(shlex.quote(p) for p in todo)
            sudo = "" if self._is_root else "sudo -n "
            if self._pkg_manager == "apt-get":
                cmd = (f"dpkg -s {quoted} >/dev/null 2>&1 || {{ {sudo}env DEBIAN_FRONTEND=noninteractive "
                       f"apt-get install -y -q {quoted} || {{ {sudo}apt-get update -q && {sudo}env "
                       f"DEBIAN_FRONTEND=noninteractive apt-get install -y -q {quoted}; }}; }}")
            elif self._pkg_manager in ("dnf", "yum"):
                cmd = f"rpm -q {quoted} >/dev/null 2>&1 || {sudo}{self._pkg_manager} install -y {quoted}"
            else:
                raise NodeError(f"LinuxNode {self.guid}: no apt-get, dnf or yum on the host "
                                f"to install {', '.join(todo)}")
            self.info(f"installing {', '.join(todo)}")
            self.transport.run(cmd, timeout=1800).check(f"installing {', '.join(todo)}")
            self._installed.update(todo)

    # -- attach: a run whose controller died ----------------------------------------------
    def reattach(self, record: dict) -> bool:
        """Log in again to the host of the run (``ExperimentController.attach``), with
        the home it used; an unreachable host raises (attach FAILS the node)."""
        node_home = record.get("node_home") or ""
        if not node_home.endswith("/.nepi-prefect"):
            return False  # never deployed: nothing of it on a host
        self._home = node_home[: -len("/.nepi-prefect")]
        self._transport = self._make_transport()
        # the dead controller's note: dropped at this release, once the host is clean
        self._note = lostruns.note_path(self._transport.label, self.ec.exp_id, self.ec.run_id,
                                        self.guid)
        try:
            self._transport.connect()
            result = self._transport.run('echo "$EUID"', timeout=max(30.0, self.get("connectTimeout")))
        except TransportError as exc:
            self._host_failure = (exc.kind, str(exc))
            self._transport.close()
            self._transport = None
            lostruns.mark_lost(self._note)  # the next run on the host kills what is left
            raise NodeError(f"host unreachable: {exc}") from None
        self._is_root = result.stdout.strip() == "0"
        self.info(f"re-attached to {self._transport.label}; home {self._home}")
        return True

    # -- release ----------------------------------------------------------------------
    def release_after(self) -> list[int]:
        """Every RM connected to the node releases before it."""
        return sorted(self.connections)

    def release_dependents(self) -> list[int]:
        """What runs on the node is released with it, so no process outlives it."""
        return sorted(self.connections)

    def do_release(self) -> None:
        try:
            if self._monitor is not None:
                self._monitor.stop()
            if self._batcher is not None:
                self._batcher.close()
            if self._facts is not None:
                if self._host_failure is not None and self._host_failure[0] == "lost":
                    self._facts.give_up("the host was lost before its facts were gathered")
                self._facts.result()  # before the transport closes under it
            if self._transport is not None and self._home is not None:
                self._clean_up()
                if self._host_failure is not None and self._host_failure[0] == "lost":
                    # the host is back: kill what the apps' releases could not reach
                    self.transport.run(kill_script(self._homes()), timeout=120).check(
                        f"killing the lost run's processes on {self.transport.label}")
                lostruns.forget(self._note)
        except Exception as exc:
            self.error(f"clean-up on release failed: {exc}")
        finally:
            if self._transport is not None:
                self._transport.close()
            super().do_release()

    def _clean_up(self) -> None:
        steps = []
        if self.get("cleanProcesses"):
            sudo = "" if self._is_root else "sudo -n "
            kill = kill_app('"$p"', '"${f%/pid}"', sudo, signal="KILL")
            steps.append(f"for f in {shlex.quote(self.exp_run_home)}/*/pid; do "
                         f'[ -f "$f" ] && read -r p < "$f" && {{ {kill}; }}; done; true')
        if self.get("cleanExperiment"):
            steps.append(self._remove_tree(self.exp_home))
        if steps:
            self.transport.run("; ".join(steps), timeout=120)
