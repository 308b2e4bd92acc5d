"""One emulated network run: its name prefix, what it created, and clean-up.

Every namespace, root-namespace interface and daemon a run creates is named
with the run's prefix (``nx`` + 5 random characters, so interface names stay
within Linux's 15) and written, *before* it is created, to a state file
``<state dir>/<prefix>.json`` that also holds the owning process id. Release
removes each thing and finally the file. If the process dies without
releasing (SIGKILL), the file stays: the next run, or ``nepi-prefect cleanup
--netns``, removes everything listed in files whose process is gone.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import string
import subprocess
import threading
import weakref
from dataclasses import dataclass, field
from typing import Any, Iterable

from nepi_prefect import settings
from nepi_prefect.transport.netns import NETNS_DIR
from nepi_prefect.util.procs import pid_alive


class NetnsError(RuntimeError):
    """An emulated network could not be built (bad input, no privileges, tc refused)."""


def sh(argv: list[str], what: str, stdin: str | None = None, check: bool = True) -> str:
    """Run a command of iproute2; on failure raise NetnsError naming ``what``."""
    proc = subprocess.run(argv, input=stdin, capture_output=True, text=True)
    if check and proc.returncode != 0:
        err = (proc.stderr or proc.stdout).strip().replace("\n", "; ")[-400:]
        raise NetnsError(f"{what} failed: {err or f'exit code {proc.returncode}'}")
    return proc.stdout


def ip_batch(lines: Iterable[str], what: str, netns: str | None = None, tool: str = "ip") -> None:
    """Run many ``ip`` (or ``tc``) commands in one process, inside ``netns`` if given."""
    lines = [ln for ln in lines if ln]
    if lines:
        argv = [tool, *(["-n", netns] if netns else []), "-batch", "-"]
        sh(argv, what, stdin="\n".join(lines) + "\n")


@dataclass
class NetnsRun:
    """What one experiment run created; persisted in its state file."""

    prefix: str
    path: str
    namespaces: list[str] = field(default_factory=list)
    links: list[str] = field(default_factory=list)
    pids: list[int] = field(default_factory=list)  # daemons, for the record
    files: list[str] = field(default_factory=list)
    label: str = ""
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)
    #: addresses in use, by (link guid, end guid): no address twice in one run
    addresses: dict[tuple[int, int], list] = field(default_factory=dict, repr=False)
    #: the unique-local IPv6 /48 of management links (sshd), chosen on first use
    ula: str | None = None

    # -- the record ----------------------------------------------------------------------
    def _save(self) -> None:
        data = {"pid": os.getpid(), "label": self.label, "namespaces": self.namespaces,
                "links": self.links, "pids": self.pids, "files": self.files}
        tmp = f"{self.path}.tmp"
        with open(tmp, "w") as f:
            json.dump(data, f)
        os.replace(tmp, self.path)

    def record(self, kind: str, value: Any) -> None:
        """Write ``value`` to the record (before creating it, so a crash leaves a trace)."""
        with self.lock:
            getattr(self, kind).append(value)
            self._save()

    def forget(self, kind: str, value: Any) -> None:
        """Drop ``value`` from the record; with the last namespace and link gone the
        run's files go too, and the state file."""
        with self.lock:
            items = getattr(self, kind)
            if value in items:
                items.remove(value)
            if self.namespaces or self.links:
                self._save()
                return
            for path in self.files:
                subprocess.run(["rm", "-rf", "--", path], capture_output=True)
            self.files.clear()
            self.pids.clear()  # daemons lived in the namespaces, and died with them
            _remove(self.path)

    # -- namespaces ---------------------------------------------------------------------------
    def name(self, suffix: str) -> str:
        return f"{self.prefix}-{suffix}"

    def add_namespace(self, suffix: str) -> str:
        """Create namespace ``<prefix>-<suffix>`` with lo up."""
        ns = self.name(suffix)
        self.record("namespaces", ns)
        try:
            sh(["ip", "netns", "add", ns], f"creating network namespace {ns}")
        except NetnsError as exc:
            self.forget("namespaces", ns)
            raise _privilege_hint(exc) from None
        ip_batch(["link set lo up"], f"setting up {ns}", netns=ns)
        return ns

    def remove_namespace(self, ns: str) -> None:
        """Kill what still runs in ``ns``, then delete it (and so its interfaces)."""
        kill_namespace_processes(ns)
        sh(["ip", "netns", "del", ns], f"deleting {ns}", check=False)
        self.forget("namespaces", ns)

    def remove_link(self, dev: str) -> None:
        """Delete a root-namespace interface this run made."""
        sh(["ip", "link", "del", dev], f"deleting {dev}", check=False)
        self.forget("links", dev)


def namespace_pids(ns: str) -> list[int]:
    """Processes whose network namespace is ``ns`` (what ``ip netns pids`` prints,
    read from /proc here: a teardown of fifty hosts should not start fifty programs)."""
    try:
        target = os.stat(f"{NETNS_DIR}/{ns}")
    except OSError:
        return []
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                st = os.stat(f"/proc/{entry}/ns/net")
            except OSError:
                continue  # gone, or not ours to look at
            if (st.st_ino, st.st_dev) == (target.st_ino, target.st_dev):
                found.append(int(entry))
    return found


def kill_namespace_processes(ns: str) -> None:
    for pid in namespace_pids(ns):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _privilege_hint(exc: NetnsError) -> NetnsError:
    text = str(exc)
    if os.geteuid() != 0 or "ermission" in text or "not permitted" in text:
        return NetnsError(f"{text}. Emulated networks need root (CAP_SYS_ADMIN and "
                          f"CAP_NET_ADMIN) to create network namespaces: run as root or "
                          f"under sudo")
    return exc


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


# -- one run per experiment controller -----------------------------------------------------------
_RUNS: "weakref.WeakKeyDictionary[Any, NetnsRun]" = weakref.WeakKeyDictionary()
_RUNS_LOCK = threading.Lock()
_ALPHABET = string.ascii_lowercase + string.digits


def run_of(ec: Any) -> NetnsRun:
    """The run of ``ec``, made (with its state file) on first use.

    Making one first removes what dead runs left, then checks the privileges.
    """
    with _RUNS_LOCK:
        run = _RUNS.get(ec)
        if run is not None:
            return run
        state = settings.netns_state_dir()
        try:
            os.makedirs(state, exist_ok=True)
        except OSError as exc:
            raise _privilege_hint(NetnsError(f"cannot create the state directory {state}: "
                                             f"{exc.strerror}")) from None
        cleanup_stale(state)
        while True:
            prefix = "nx" + "".join(secrets.choice(_ALPHABET) for _ in range(5))
            path = os.path.join(state, f"{prefix}.json")
            if not os.path.exists(path):
                break
        run = NetnsRun(prefix, path, label=f"{ec.exp_id}/{ec.run_id}")
        _RUNS[ec] = run
        return run


def known_run(ec: Any) -> NetnsRun | None:
    return _RUNS.get(ec)


# -- clean-up of runs whose process died -----------------------------------------------------------
def cleanup_stale(state_dir: str | None = None, everything: bool = False) -> list[str]:
    """Remove what runs whose process is gone created (all runs if ``everything``);
    returns the prefixes cleaned."""
    state_dir = state_dir or settings.netns_state_dir()
    try:
        names = sorted(os.listdir(state_dir))
    except FileNotFoundError:
        return []
    cleaned = []
    for name in names:
        if not name.endswith(".json"):
            continue
        path = os.path.join(state_dir, name)
        try:
            with open(path) as f:
                data = json.load(f)
        except (OSError, ValueError):
            continue
        pid = int(data.get("pid", 0))
        if not everything and pid != os.getpid() and pid_alive(pid):
            continue
        if pid == os.getpid() and not everything:
            continue
        remove_recorded(data)
        _remove(path)
        cleaned.append(name[:-5])
    return cleaned


def remove_recorded(data: dict) -> None:
    """Remove the namespaces (killing what runs in them: the daemons live there, so
    no pid that may have been reused is killed), root interfaces and files a record lists."""
    for ns in data.get("namespaces", []):
        kill_namespace_processes(ns)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    for dev in data.get("links", []):
        subprocess.run(["ip", "link", "del", dev], capture_output=True)
    for path in data.get("files", []):
        subprocess.run(["rm", "-rf", "--", path], capture_output=True)
