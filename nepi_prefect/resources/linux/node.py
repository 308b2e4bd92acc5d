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
from typing import Protocol

from nepi_prefect.execution.attribute import Attribute, Flags, Types
from nepi_prefect.execution.resource import ResourceManager, clsinit_copy
from nepi_prefect.resources.linux.processes import kill_app
from nepi_prefect.transport.base import Transport, TransportError
from nepi_prefect.transport.credentials import resolve_credentials
from nepi_prefect.transport.local import LocalTransport
from nepi_prefect.transport.ssh import SSHConfig, SSHTransport

LOCALHOSTS = ("localhost",)


class NodeError(RuntimeError):
    """The node cannot be used (unreachable, refused host key, bad setup)."""


@clsinit_copy
class LinuxNode(ResourceManager):
    """A Linux host that runs applications."""

    _rtype = "LinuxNode"
    _help = "A Linux host reached over SSH; hostname 'localhost' runs locally without SSH."
    _platform = "linux"

    @classmethod
    def _register_attributes(cls) -> None:
        D, S = Flags.Design, Types.String
        for name, help_, kw in (
            ("hostname", "Host name or address; 'localhost' runs commands locally, without SSH", {}),
            ("username", "User to log in as (default: the current user)", {}),
            ("identity", "Path of the SSH private key", {}),
            ("knownHosts", "known_hosts file used to verify the host key",
             {"default": "~/.ssh/known_hosts"}),
            ("home", "Base directory on the host (default: the user's home)", {}),
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
                self._monitor = AppMonitor(self)
            return self._monitor

    # -- connection ---------------------------------------------------------------
    def _make_transport(self) -> Transport:
        if self.is_localhost:
            return LocalTransport()
        host = self.get("hostname")
        if not host:
            raise NodeError(f"LinuxNode {self.guid}: set 'hostname' (or 'localhost')")
        cfg = SSHConfig(
            host=host, port=self.get("port"), username=self.get("username"),
            key_filename=self.get("identity"), password=self.get("password"),
            known_hosts=self.get("knownHosts"), accept_unknown=self.get("acceptUnknownHostKeys"),
            connect_timeout=self.get("connectTimeout"), max_channels=self.get("maxChannels"),
            gateway=self.get("gateway"), gateway_user=self.get("gatewayUser"),
            gateway_port=self.get("gatewayPort"))
        if self.get("credentials"):
            self._apply_credentials(cfg, self.get("credentials"))
        return SSHTransport(cfg)

    def _apply_credentials(self, cfg: SSHConfig, name: str) -> None:
        """Fill what the saved credentials give and the attributes left unset."""
        creds = resolve_credentials(name)
        for secret in (creds.get("password"), creds.get("private_key")):
            if secret:
                self.ec._secrets.add(str(secret))
        cfg.username = cfg.username or creds.get("username")
        cfg.password = cfg.password or creds.get("password")
        if creds.get("private_key") and not cfg.key_filename:
            cfg.pkey = _load_pkey(creds["private_key"], name)
        cfg.known_hosts_text = creds.get("known_hosts")

    def do_deploy(self) -> None:
        self._transport = self._make_transport()
        try:
            self._transport.connect()
            probe = self._transport.run(
                'echo "$HOME"; id -u; command -v apt-get || command -v dnf || '
                'command -v yum || true', timeout=max(30.0, self.get("connectTimeout")))
        except TransportError as exc:
            self.failure = f"LinuxNode {self.guid}: host unreachable: {exc}"
            raise NodeError(self.failure) from None
        lines = probe.stdout.splitlines() + ["", "", ""]
        self._home = self.get("home") or lines[0].strip() or "/tmp"
        self._is_root = lines[1].strip() == "0"
        self._pkg_manager = lines[2].strip().rsplit("/", 1)[-1] or None
        if self.get("home") is None:
            self._set_value("home", self._home)
        prep = f"mkdir -p {shlex.quote(self.exp_run_home)} {shlex.quote(self.node_home)}/apps"
        if self.get("cleanHome"):
            prep = f"{self._remove_tree(self.node_home)} && {prep}"
        self._transport.run(prep).check(f"preparing {self.exp_run_home} on {self._transport.label}")
        self.info(f"connected to {self._transport.label}; home {self._home}")
        super().do_deploy()

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
            if self._transport is not None and self._home is not None:
                self._clean_up()
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


class WatchedProcess(Protocol):
    """What a node's :class:`AppMonitor` watches (a LinuxApplication, say).

    A process launched by a wrapper that writes ``pid`` in ``run_home`` at
    start and ``exitcode`` there when it ends.
    """

    @property
    def run_home(self) -> str | None: ...

    def on_process_exited(self, exitcode: int | None) -> None:
        """The process ended; ``exitcode`` is None if it died without writing one.
        Called once, on the EC's dispatcher."""


class AppMonitor:
    """Polls all running applications of one node with ONE command per period.

    An app's wrapper writes ``exitcode`` when its process ends; the poll reads
    those files with shell builtins only (no process per app) and hands each
    result to the app's :meth:`WatchedProcess.on_process_exited` on the EC's dispatcher.
    """

    def __init__(self, node: LinuxNode, period: float = 0.2):
        self.node = node
        self.period = period
        self._apps: dict[str, WatchedProcess] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def watch(self, app: WatchedProcess) -> None:
        with self._lock:
            self._apps[app.run_home] = app
            if self._thread is None or not self._thread.is_alive():
                self._stop.clear()
                self._thread = threading.Thread(
                    target=self._loop, name=f"nepi-monitor-{self.node.guid}", daemon=True)
                self._thread.start()

    def unwatch(self, app: WatchedProcess) -> None:
        with self._lock:
            if self._apps.get(app.run_home) is app:
                del self._apps[app.run_home]

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(5)

    def _loop(self) -> None:
        while not self._stop.wait(self.period):
            with self._lock:
                apps = dict(self._apps)
            if not apps:
                continue
            try:
                self._poll(apps)
            except Exception as exc:  # connection trouble: the processes run on; retry
                self.node.debug(f"status poll failed, retrying: {exc}")

    def _poll(self, apps: dict[str, WatchedProcess]) -> None:
        dirs = " ".join(shlex.quote(d) for d in apps)
        script = (f"for d in {dirs}; do "
                  f'if [ -f "$d/exitcode" ]; then read -r rc < "$d/exitcode"; echo "F $rc $d"; '
                  f'elif [ -f "$d/pid" ] && read -r p < "$d/pid" && kill -0 "$p" 2>/dev/null; then :; '
                  f'elif [ -f "$d/exitcode" ]; then read -r rc < "$d/exitcode"; echo "F $rc $d"; '
                  f'else echo "D - $d"; fi; done')
        result = self.node.transport.run(script, timeout=60)
        for line in result.stdout.splitlines():
            kind, rc, d = (line.split(" ", 2) + ["", ""])[:3]
            app = apps.get(d)
            if app is None or kind not in ("F", "D"):
                continue
            self.unwatch(app)
            code = _int_or_none(rc) if kind == "F" else None
            self.node.ec.schedule("0s", functools.partial(app.on_process_exited, code))


def _int_or_none(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


def _load_pkey(text: str, name: str):
    """A paramiko key from PEM/OpenSSH text; the error names the credentials, not the key."""
    import io

    import paramiko

    for kind in (paramiko.Ed25519Key, paramiko.RSAKey, paramiko.ECDSAKey):
        try:
            return kind.from_private_key(io.StringIO(text))
        except Exception:
            continue
    raise NodeError(f"credentials {name!r}: the private key could not be read "
                    f"(unsupported type or encrypted)")


