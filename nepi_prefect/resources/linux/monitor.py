"""AppMonitor: ONE watcher per node for the exits of all its applications.

An app's wrapper writes ``exitcode`` in its run_home when the process ends.
The monitor polls every watched run_home with one command per period, using
shell built-ins only (no process per app); the same command sends back the
outputs of every app that ended in that period, in one archive
(transport.bulk). Each app gets its exit code and outputs on the EC's dispatcher.

If the host stops answering (the poll fails and no fresh connection is made
within ``NEPI_PREFECT_NODE_LOST_AFTER`` seconds), the node is told the host
is lost: it FAILS with every RM on it, so no wait waits forever.
"""

from __future__ import annotations

import functools
import shlex
import threading
import time
from typing import Any, Protocol

from nepi_prefect import settings
from nepi_prefect.resources.linux.processes import TAG_VAR
from nepi_prefect.transport.base import TransportError
from nepi_prefect.transport.bulk import bulk_read_snippet, parse_bulk

#: the outputs read in bulk when a process ends, if at most OUTPUT_LIMIT bytes
#: (a bigger one is read by the app itself, over SFTP)
OUTPUTS = ("stdout", "stderr")
OUTPUT_LIMIT = 1 << 20
#: seconds from a launch to the first poll that looks for its end
FIRST_POLL = 0.02


class WatchedProcess(Protocol):
    """What a node's :class:`AppMonitor` watches (a LinuxApplication, say): a process
    whose wrapper writes ``pid`` in ``run_home`` at start and ``exitcode`` when it ends."""

    @property
    def run_home(self) -> str | None: ...

    def on_process_exited(self, exitcode: int | None, outputs: dict[str, bytes] | None = None,
                          lost: str | None = None) -> None:
        """The process ended (``exitcode`` None: without writing one), with its small
        outputs by name; or the host was ``lost`` (why). Called once, on the dispatcher."""


class AppMonitor:
    """Polls all running applications of one node with ONE command per period."""

    def __init__(self, node: Any, period: float = 0.2, min_period: float = 0.05):
        self.node = node  # a LinuxNode: transport, ec, debug(), get("connectTimeout")
        self.period = period
        # right after a launch or an exit the next exits are likely near: poll
        # every min_period, then back off to period while nothing happens
        self.min_period = min(min_period, period)
        self._delay = self.min_period
        self._vacated: set[str] = set()  # run_homes whose session has no process left
        self._apps: dict[str, WatchedProcess] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()  # a new app: restart the wait at FIRST_POLL
        self._thread: threading.Thread | None = None

    def watch(self, app: WatchedProcess) -> None:
        with self._lock:
            self._apps[app.run_home] = app
            self._vacated.discard(app.run_home)
            # a quick command has ended by the first poll: make it soon (once per
            # burst of launches, so a stream of them cannot postpone every poll)
            if self._delay > FIRST_POLL:
                self._delay = FIRST_POLL
                self._wake.set()
            if self._thread is None or not self._thread.is_alive():
                self._stop.clear()
                self._thread = threading.Thread(
                    target=self._loop, name=f"nepi-monitor-{self.node.guid}", daemon=True)
                self._thread.start()

    def unwatch(self, app: WatchedProcess) -> None:
        with self._lock:
            if self._apps.get(app.run_home) is app:
                del self._apps[app.run_home]

    def vacated(self, run_home: str) -> bool:
        """True if the process of ``run_home`` ended and left no process in its session."""
        with self._lock:
            return run_home in self._vacated

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(5)

    def _loop(self) -> None:
        while not self._stop.is_set():
            if self._wake.wait(self._delay):
                self._wake.clear()
                continue  # wait again, FIRST_POLL from now
            with self._lock:
                apps = dict(self._apps)
                self._delay = min(self.period, self._delay * 1.5)
            if not apps:
                continue
            try:
                if self._poll(apps):
                    self._delay = self.min_period
            except Exception as exc:  # connection trouble: the processes run on
                self.node.debug(f"status poll failed: {exc}")
                self._check_host(apps)

    def _check_host(self, apps: dict[str, WatchedProcess]) -> None:
        """After a failed poll: reconnect, retrying for ``settings.node_lost_after()``
        seconds; if the host has not answered by then, it is lost (the node fails)."""
        transport = self.node.transport
        after = settings.node_lost_after()
        deadline = time.monotonic() + after
        while True:
            try:
                transport.close()
                transport.connect()
                return
            except TransportError as exc:
                last = exc
            if self._stop.is_set():
                return  # released meanwhile: nobody waits for these apps any more
            if time.monotonic() >= deadline:
                break
            self._stop.wait(min(1.0, max(0.05, deadline - time.monotonic())))
        reason = (f"LinuxNode {self.node.guid}: host {transport.label} lost: {last} "
                  f"(no new connection within {after:g} s)")
        self.node.host_lost(reason)
        for app in apps.values():
            self._hand_over(app, None, None, reason)

    def _poll(self, apps: dict[str, WatchedProcess]) -> int:
        """One status command for every app; returns how many ended."""
        dirs = " ".join(shlex.quote(d) for d in apps)
        # F: ended with a code, D: died without one. For those, in the same command:
        # S, then one ps of the members left in their sessions and one grep of the
        # processes carrying their tag (with the wrapper gone nothing can start a
        # new one, so if none is left their release needs no kill);
        # B, then their stdout (and stderr if they failed) in one archive
        script = (f"s=; o=(); g=(); for d in {dirs}; do p=-; "
                  f'[ -f "$d/pid" ] && read -r p < "$d/pid"; '
                  f'if [ -s "$d/exitcode" ]; then read -r rc < "$d/exitcode"; echo "F $rc $p $d"; '
                  f'elif [ "$p" != - ] && kill -0 "$p" 2>/dev/null; then continue; '
                  f'elif [ -s "$d/exitcode" ]; then read -r rc < "$d/exitcode"; echo "F $rc $p $d"; '
                  f'else rc=-; echo "D - $p $d"; fi; [ "$p" != - ] && s="$s,$p"; '
                  f'o+=("$d/stdout"); [ "$rc" = 0 ] || o+=("$d/stderr"); '
                  f'g+=(-e "{TAG_VAR}=$d"); done; '
                  f'if [ -n "$s" ] && command -v ps >/dev/null && [ -d /proc/self ]; then echo S; '
                  f'ps -o pid=,sid= --sid "${{s#,}}" 2>/dev/null; '
                  f'grep -HzxoF "${{g[@]}}" /proc/[0-9]*/environ 2>/dev/null | tr "\\0" "\\n" '
                  f"| sed -n 's|^/proc/\\([0-9]*\\)/environ:{TAG_VAR}=\\(.*\\)|T \\1 \\2|p'; fi; "
                  f'if [ ${{#o[@]}} -gt 0 ]; then echo; echo B; '
                  f'{bulk_read_snippet(chr(34) + "${o[@]}" + chr(34), OUTPUT_LIMIT)}; fi; true')
        timeout = max(10.0, self.node.get("connectTimeout"))
        result = self.node.transport.run(script, timeout=timeout)
        ended, sids, members, tagged, blob = [], {}, None, set(), None
        lines = iter(result.stdout.splitlines())
        for line in lines:
            if line == "B":
                blob = next(lines, "")
                break
            if line == "S":
                members = set()
            elif members is not None and line.startswith("T "):  # "T pid run_home": tagged
                _, pid, home = line.split(" ", 2)
                if pid != sids.get(home):  # the wrapper itself is only writing its exit code
                    tagged.add(home)
            elif members is not None:  # "pid sid" of a process still in a session
                pid, _, sid = line.strip().partition(" ")
                if pid != sid.strip():
                    members.add(sid.strip())
            else:
                kind, rc, pid, d = (line.split(" ", 3) + ["", "", ""])[:4]
                app = apps.get(d)
                if app is not None and kind in ("F", "D"):
                    ended.append((app, _int_or_none(rc) if kind == "F" else None))
                    sids[d] = pid
        if not ended:
            return 0
        if members is not None:
            with self._lock:
                self._vacated.update(d for d, sid in sids.items()
                                     if sid not in members and d not in tagged)
        paths = [f"{app.run_home}/{name}" for app, rc in ended for name in OUTPUTS
                 if name == "stdout" or rc != 0]
        blobs = parse_bulk(blob or "", paths) if blob is not None else None
        for app, rc in ended:
            outputs = None if blobs is None else {
                name: blobs[f"{app.run_home}/{name}"] for name in OUTPUTS
                if f"{app.run_home}/{name}" in blobs}
            self._hand_over(app, rc, outputs, None)
        return len(ended)

    def _hand_over(self, app: WatchedProcess, rc: int | None,
                   outputs: dict[str, bytes] | None, lost: str | None) -> None:
        with self._lock:
            if self._apps.get(app.run_home) is not app:
                return  # unwatched meanwhile (stopped, released)
            del self._apps[app.run_home]
        self.node.ec.schedule("0s", functools.partial(app.on_process_exited, rc, outputs, lost))


def _int_or_none(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None
