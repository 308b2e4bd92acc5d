"""AppMonitor: ONE watcher per node for the exits of all its applications.

An app's watcher (see appcommands) writes ``exitcode`` in its run_home when the
process ends. The monitor polls every watched run_home with one command per
period, using shell built-ins only (no process at all while nothing ended);
when something ended, the same command checks with one ``grep`` whether
anything the app started is left, and sends back the outputs of every app
that ended in that period in one archive (transport.bulk, three processes).
Each app gets its exit code and outputs on the EC's dispatcher.

A poll during a burst of launches on the node finds little (the apps launched
so far) and competes with the launches for the host's CPU (each poll forks,
and one that finds ends greps every process's environment and reads outputs):
measured at 20 hosts x 50 apps it doubled the hosts' CPU. So while the node's
batcher has launches queued or on the wire (``busy``) the monitor holds its
polls, up to ``MAX_HOLD`` seconds (so the early ends of a long stream of
launches are still seen), and polls ``FIRST_POLL`` after the burst drained
(:meth:`AppMonitor.nudge`).

If the host stops answering (the poll fails and no fresh connection is made
within ``NEPI_PREFECT_NODE_LOST_AFTER`` seconds), the node is told the host
is lost: it FAILS with every RM on it, so no wait waits forever.
"""

from __future__ import annotations

import functools
import shlex
import threading
import time
from typing import Any, Callable, Protocol

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
#: seconds a poll may be held while launches are on their way (see above)
MAX_HOLD = 1.0


class WatchedProcess(Protocol):
    """What a node's :class:`AppMonitor` watches (a LinuxApplication, say): a process
    whose ``pid`` is in ``run_home`` from its start and ``exitcode`` once it ended
    (``watcher``, if there, is the pid of who will write it)."""

    @property
    def run_home(self) -> str | None: ...

    def on_process_exited(self, exitcode: int | None, outputs: dict[str, bytes] | None = None,
                          lost: str | None = None) -> None:
        """The process ended (``exitcode`` None: without writing one), with its small
        outputs by name; or the host was ``lost`` (why). Called once, on the dispatcher."""


class AppMonitor:
    """Polls all running applications of one node with ONE command per period."""

    def __init__(self, node: Any, period: float = 0.2, min_period: float = 0.05,
                 busy: Callable[[], bool] | None = None):
        self.node = node  # a LinuxNode: transport, ec, debug(), get("connectTimeout")
        self._busy = busy or (lambda: False)  # launches on their way: hold the polls
        self._held_since: float | None = None
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

    def nudge(self) -> None:
        """The node's launches drained: poll FIRST_POLL from now."""
        with self._lock:
            self._delay = FIRST_POLL
        self._wake.set()

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
            if not apps or self._hold():
                continue
            try:
                if self._poll(apps):
                    self._delay = self.min_period
            except Exception as exc:  # connection trouble: the processes run on
                self.node.debug(f"status poll failed: {exc}")
                self._check_host(apps)

    def _hold(self) -> bool:
        """True to skip this poll: launches are on their way and the hold is young."""
        now = time.monotonic()
        if self._busy() and (self._held_since is None or now - self._held_since < MAX_HOLD):
            if self._held_since is None:
                self._held_since = now
            return True
        self._held_since = None
        return False

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
        result = self.node.transport.run(_poll_script(list(apps)),
                                         timeout=max(10.0, self.node.get("connectTimeout")))
        ended, emptied, blob = [], set(), None
        tagged: set[str] | None = None  # None: no /proc to look in
        lines = iter(result.stdout.splitlines())
        for line in lines:
            if line == "B":
                blob = next(lines, "")
                break
            if line == "S":  # grep's "/proc/<pid>/environ:TAG=<run_home>" records
                tagged = {record.partition(f":{TAG_VAR}=")[2]
                          for record in next(lines, "").split("\0")}
                continue
            kind, rc, d = (line.split(" ", 2) + ["", ""])[:3]
            if kind == "E":
                emptied.add(d)
            elif kind in ("F", "D") and d in apps:
                ended.append((apps[d], _int_or_none(rc) if kind == "F" else None))
        if not ended:
            return 0
        if tagged is not None:
            with self._lock:
                self._vacated.update(emptied - tagged)
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


def _poll_script(dirs: list[str]) -> str:
    """The status command of one poll (bash; no process unless something ended).

    Per run_home: ``F rc home`` (ended with code rc), ``D - home`` (died without
    one: its pid and its watcher are gone), nothing (still running); then ``E
    home`` if its process group is empty. Then, if some group is empty, ``S`` and
    one grep's list of the processes carrying those apps' tags (none left and an
    empty group: nothing the app started is left, so its release needs no kill;
    with the process gone nothing can start a new one). Then ``B`` and the
    stdout (and stderr if they failed) of the ended apps, as one archive.
    """
    alive = '{ kill -0 "$1" || [ -d "/proc/$1" ]; } 2>/dev/null'  # EPERM: alive too
    return (
        f"__alive() {{ {alive}; }}; "
        f'__ended() {{ [ -s "$1/exitcode" ] && read -r rc < "$1/exitcode" && echo "F $rc $1"; }}; '
        f"o=(); g=(); "
        f"for d in {' '.join(shlex.quote(d) for d in dirs)}; do p=-; "
        f'[ -f "$d/pid" ] && read -r p < "$d/pid"; '
        # whoever writes the exit code (the process's watcher, or the process in the
        # subshell form) writes it before it ends: so once it is seen gone, one more
        # look at the file is final
        f'if __ended "$d"; then :; '
        f'elif [ "$p" != - ] && __alive "$p"; then continue; '
        f'elif __ended "$d"; then :; '
        f'elif w=; [ -f "$d/watcher" ] && read -r w < "$d/watcher" && __alive "$w"; '
        f"then continue; "  # its exit code is on its way
        f'elif __ended "$d"; then :; '  # the watcher wrote it and left meanwhile
        f'else rc=-; echo "D - $d"; fi; '
        f'o+=("$d/stdout"); [ "$rc" = 0 ] || o+=("$d/stderr"); '
        f'if [ "$p" != - ] && ! kill -0 -- "-$p" 2>/dev/null; then echo "E - $d"; '
        f'g+=(-e "{TAG_VAR}=$d"); fi; done; '
        f'if [ ${{#g[@]}} -gt 0 ] && [ -d /proc/self ]; then echo S; '
        f'grep -HzxoF "${{g[@]}}" /proc/[0-9]*/environ 2>/dev/null; echo; fi; '
        f'if [ ${{#o[@]}} -gt 0 ]; then echo; echo B; '
        f'{bulk_read_snippet(chr(34) + "${o[@]}" + chr(34), OUTPUT_LIMIT)}; fi; true')


def _int_or_none(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None
