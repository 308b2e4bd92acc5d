"""LinuxApplication: a command run on a LinuxNode, detached from the SSH session.

Deploy prepares the app_home (packages, sources, code, build, install: done
once per node for the same inputs) and the run_home. Start writes the user's
command to ``command`` in run_home and runs it there (sourced by a fork of the
watcher, in the shell ``bash ./command`` would give it), batched with the node's
other launches under one watcher process that writes ``pid`` and, when it
ends, ``exitcode`` (see :mod:`.appcommands`). It runs in
its own process group, survives a dropped connection and carries a tag (see
:mod:`.processes`, which stop and release use to kill all of it). The node's
monitor notices the exit and calls :meth:`LinuxApplication.on_process_exited`.

Subclasses override :meth:`build_command` and :meth:`on_finished`, and may
give ``depends`` a default.
"""

from __future__ import annotations

import functools
import re
import shlex
import threading
import time
from typing import Any

from nepi_prefect.execution.attribute import Attribute, Flags, Types
from nepi_prefect.execution.resource import (
    ResourceManager,
    ResourceState,
    clsinit_copy,
)
from nepi_prefect.execution.trace import Trace, TraceAttr
from nepi_prefect.resources.linux.appcommands import LAUNCH, kill_step, launch_step
from nepi_prefect.resources.linux.apphome import (
    ApplicationError,
    app_digest,
    needs_app_home,
    prepare_app_home,
    upload_run_files,
)
from nepi_prefect.resources.linux.hostops import KILL_GRACE, Step
from nepi_prefect.resources.linux.node import LinuxNode
from nepi_prefect.resources.linux.shellsafe import check_packages, substitute_paths
from nepi_prefect.transport.base import TransportError

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_DEPLOY_TRACES = ("deploy_stdout", "deploy_stderr", "deploy_exitcode")
#: how long a start waits for an app's ``_ready_when`` text before it counts as STARTED anyway
READY_WAIT = 10.0
#: how often it looks (one short command on the node's open shell)
READY_POLL = "50ms"


@clsinit_copy
class LinuxApplication(ResourceManager):
    """A command run on a Linux host."""

    _rtype = "LinuxApplication"
    _help = "Runs a command on a LinuxNode, detached from the SSH session; traces its output."
    _platform = "linux"
    _finishes_by_itself = True
    _connects_to, _connects_at_most = ("LinuxNode", "Collector"), {"LinuxNode": 1}  # one node
    _shell_word_attributes = ("env",)  # an unbalanced quote is refused at set
    _run_state_fields = ("run_home", "pid")  # the run-state file records where the app ran
    #: whether on_finished needs the whole stdout: else a big one is not read at the end
    _parses_stdout = False
    #: (trace, text): STARTED once the running command wrote ``text`` to ``trace`` (a
    #: capture that captures), not at its launch: what starts on its STARTED then finds
    #: it ready. None: STARTED when launched.
    _ready_when: tuple[str, str] | None = None

    @classmethod
    def _register_attributes(cls) -> None:
        D, S = Flags.Design, Types.String
        for name, help_ in (
            ("command", "Shell command to run (${RUN_HOME}, ${APP_HOME}, ${NODE_HOME} and "
                        "${EXP_HOME} are substituted)"),
            ("env", "Environment: space-separated NAME=value pairs"),
            ("depends", "Packages to install with the host's package manager (space-separated)"),
            ("sources", "Local paths or URLs (space-separated), put in ${APP_HOME}"),
            ("files", "Local paths (space-separated), uploaded to ${RUN_HOME}"),
            ("code", "Text stored as the file ${APP_HOME}/code"),
            ("build", "Shell commands run in ${RUN_HOME} at deploy (once per node; what they "
                      "leave there is copied to later runs)"),
            ("install", "Shell commands run in ${RUN_HOME} at deploy, after build"),
            ("stdin", "A local file, or text, given to the process as standard input"),
            ("tearDown", "Shell command run in ${RUN_HOME} at release"),
        ):
            cls._register_attribute(Attribute(name, help_, type=S, flags=D))
        cls._register_attribute(Attribute(
            "sudo", "Run the command (and package installs) with sudo", type=Types.Bool,
            default=False, flags=D))

    @classmethod
    def _register_traces(cls) -> None:
        for name, help_ in (
            ("stdout", "Standard output of the command"),
            ("stderr", "Standard error of the command"),
            ("exitcode", "Exit code of the command"),
            ("pid", "Process id (and process group) of the command"),
            ("deploy_stdout", "Output of build and install"),
            ("deploy_stderr", "Errors of build and install"),
            ("deploy_exitcode", "Exit code of build and install"),
        ):
            cls._register_trace(Trace(name, help_))

    def __init__(self, ec, guid):
        super().__init__(ec, guid)
        self._node: LinuxNode | None = None  # set at deploy: connections are fixed by then
        self._run_home: str | None = None
        self._app_home: str | None = None
        self._pid: int | None = None
        self._final_stdout: str | None = None
        # set when no launch is on its way: a release waits for it, so that the
        # kill (which reads run_home/pid on the host) comes after the launch
        self._launch_done = threading.Event()
        self._launch_done.set()
        self._launch_sent = False

    def _set_value(self, attr, value):
        """Package names are refused at set (subclasses redeclare ``depends``)."""
        if (attr if isinstance(attr, str) else attr.name) == "depends" and isinstance(value, str):
            check_packages(value)
        return super()._set_value(attr, value)

    # -- neighbours and places -----------------------------------------------------
    @property
    def node(self) -> LinuxNode | None:
        if self._node is None:  # looked up until deploy found it (asked per step, per trace)
            nodes = self.get_connected(LinuxNode)
            return nodes[0] if nodes else None
        return self._node

    @property
    def run_home(self) -> str | None:
        return self._run_home

    @property
    def app_home(self) -> str | None:
        return self._app_home

    @property
    def pid(self) -> int | None:
        return self._pid

    def release_after(self) -> list[int]:
        """Connected collectors release (and pull traces) before the app cleans up."""
        return [rm.guid for rm in self.get_connected() if "Collector" in type(rm)._rtype_chain()]

    def build_command(self) -> str | None:
        """The shell command to run; subclasses build theirs from attributes."""
        return self.get("command")

    def on_finished(self, exitcode: int | None, stdout: str) -> None:
        """Called when the process ends, before the state moves (parse results here)."""

    def replace_paths(self, text: str | None) -> str | None:
        """Substitute ${RUN_HOME}, ${APP_HOME}, ${NODE_HOME} and ${EXP_HOME} in ``text``
        (as text: see :mod:`.shellsafe` for why that is safe)."""
        if not text:
            return text
        node = self.node
        paths = {"RUN_HOME": self._run_home, "APP_HOME": self._app_home,
                 "NODE_HOME": node.node_home, "EXP_HOME": node.exp_home}
        try:
            return substitute_paths(text, paths, f"{self._rtype} {self.guid}")
        except ValueError as exc:
            raise ApplicationError(str(exc)) from None

    # -- deploy ------------------------------------------------------------------------
    def do_deploy(self) -> None:
        node = self.node
        if node is None:
            raise ApplicationError(f"{self._rtype} {self.guid} is not connected to a LinuxNode")
        if not node.when_ready(self.deploy):
            return  # deploy() is called again when the node is READY or FAILED
        if node.state == ResourceState.FAILED:
            raise ApplicationError(f"{self._rtype} {self.guid}: its node LinuxNode "
                                   f"{node.guid} FAILED: {node.failure or 'see its log'}")
        self._node = node
        self._run_home = node.run_home(self)
        self._app_home = node.app_home(app_digest(self.get))
        if not self._needs_host_work():
            # the usual case: nothing to do on the host; the node made the run_home
            # at its deploy, and the launch step makes sure of both directories
            super().do_deploy()
            return
        dirs = " ".join(shlex.quote(d) for d in (self._run_home, self._app_home))
        depends = (self.get("depends") or "").split()
        if depends:
            node.install_packages(depends)
        node.transport.run(f"mkdir -p {dirs}").check(f"creating {self._run_home}")
        if needs_app_home(self.get):
            prepare_app_home(self, node)
        upload_run_files(self, node)
        super().do_deploy()

    def _needs_host_work(self) -> bool:
        """Packages, sources, builds or uploads: deployed step by step, not batched."""
        return needs_app_home(self.get) or any(
            self.get(n) for n in ("depends", "files", "stdin"))

    def _schedule(self, then, rc: int | None, out: str) -> None:
        """A batched step ended (on the batcher's thread): go on on the dispatcher."""
        self.ec.schedule("0s", functools.partial(then, rc, out))

    # -- start, finish, stop ----------------------------------------------------------------
    def do_start(self) -> None:
        command = self.replace_paths(self.build_command())
        if not command:
            raise ApplicationError(f"{self._rtype} {self.guid} has no command to run")
        sudo = bool(self.get("sudo")) and not self.node.is_root
        launch = launch_step(self._run_home, self._app_home, command, self._env_pairs(),
                             stdin=bool(self.get("stdin")), sudo=sudo)
        self._launch_done.clear()
        self._launch_sent = True
        self.node.batcher.submit(Step(launch, self._launch_step_done, group=LAUNCH))

    def _launch_step_done(self, rc: int | None, out: str) -> None:
        self._launch_done.set()
        self._schedule(self._launched, rc, out)

    @staticmethod
    def _launched_pid(rc: int | None, out: str) -> int | None:
        """The pid a launch step printed last, or None if the launch failed."""
        lines = out.split() if rc == 0 else []
        return int(lines[-1]) if lines and lines[-1].isdigit() else None

    def _launched(self, rc: int | None, out: str) -> None:
        pid = self._launched_pid(rc, out)
        if pid is None:
            raise ApplicationError(f"{self._rtype} {self.guid}: launching failed: "
                                   f"{out.strip()[-500:]}")
        if self._ready_when is None:
            self._running(pid)
        else:
            self._await_ready(pid, time.monotonic() + READY_WAIT)

    def _running(self, pid: int) -> None:
        """STARTED, and watched by the node's monitor until it ends."""
        self._pid = pid
        self.debug(f"started, pid {self._pid}")
        super().do_start()
        self.node.monitor.watch(self)

    def _await_ready(self, pid: int, deadline: float) -> None:
        """STARTED once ``_ready_when`` holds, after ``deadline`` anyway, or at once if the
        process ended (the monitor then sees it exited and fails it with its stderr)."""
        if self.state not in (ResourceState.READY, ResourceState.STOPPED):
            return  # released (killed) while it was getting ready
        try:
            status = self._ready_status(pid)
        except TransportError as exc:  # the host is going: its monitor will say so
            self.debug(f"could not see whether it is ready: {exc}")
            status = "ended"
        if status == "waiting" and time.monotonic() < deadline:
            self.ec.schedule(READY_POLL, functools.partial(self._await_ready, pid, deadline))
            return
        if status == "waiting":
            trace, text = self._ready_when
            self.warning(f"its {trace} did not say {text!r} within {READY_WAIT:g} s; "
                         f"counted as STARTED anyway")
        self._running(pid)

    def _ready_status(self, pid: int) -> str:
        """ready, waiting (still running, not ready yet) or ended."""
        trace, text = self._ready_when
        path = shlex.quote(self.trace_path(trace))
        result = self.node.transport.run(
            f"grep -qsF {shlex.quote(text)} {path} && echo ready || "
            f"{{ [ -d /proc/{pid} ] && echo waiting || echo ended; }}", timeout=30)
        return result.stdout.strip() or "ended"

    def _env_pairs(self) -> list[tuple[str, str]]:
        node = self.node
        pairs = [("RUN_HOME", self._run_home), ("APP_HOME", self._app_home or ""),
                 ("NODE_HOME", node.node_home), ("EXP_HOME", node.exp_home)]
        # split first: a path substituted into a value never becomes shell words
        for item in shlex.split(self.get("env") or ""):
            name, sep, value = item.partition("=")
            if not sep or not _ENV_NAME.match(name):
                raise ApplicationError(f"{self._rtype} {self.guid}: env entry {item!r} is not "
                                       f"NAME=value")
            pairs.append((name, self.replace_paths(value)))
        return pairs

    def on_process_exited(self, exitcode: int | None, outputs: dict[str, bytes] | None = None,
                          lost: str | None = None) -> None:
        """The node's monitor saw the process end (``WatchedProcess``), with its
        outputs read in bulk, or lost the host: parse, then FINISHED or FAILED."""
        if self.state != ResourceState.STARTED:
            return  # stopped or released meanwhile
        if lost:
            self.failure = f"{self._rtype} {self.guid}: {lost}"
            self.error(self.failure)
            self.fail()
            return
        outputs = outputs or {}
        if "stdout" in outputs:  # small: the monitor read it with the exit code
            self._final_stdout = outputs["stdout"].decode(errors="replace")
        elif self._parses_stdout:
            self._final_stdout = self._read_text("stdout") or ""
        # else a big stdout nobody parses stays on the host until someone asks for it
        self.on_finished(exitcode, self._final_stdout or "")
        if exitcode == 0:
            self.set_finished()
            return
        if exitcode is None:
            self.failure = (f"{self._rtype} {self.guid}: the process ended without an exit "
                            f"code (killed?)")
        else:
            self.failure = f"{self._rtype} {self.guid}: command exited with code {exitcode}"
        err = (outputs["stderr"].decode(errors="replace") if "stderr" in outputs
               else self._read_tail("stderr", 2000)).strip()[-500:]
        self.error(self.failure, err=err or None)
        self.fail()

    def do_stop(self) -> None:
        node = self.node
        node.monitor.unwatch(self)
        if self._pid is not None:
            self._kill(node, graceful=True)
        super().do_stop()

    def reattach(self, record: dict[str, Any]) -> bool:
        """Take up the app of a run whose controller died (``ExperimentController.attach``):
        a running one is watched again; the release kills what any of them left."""
        self._run_home, self._pid = record.get("run_home"), record.get("pid")
        node = self.node
        if self.state < ResourceState.STARTED and not self._run_home:
            return False  # never deployed
        if node is None or node._transport is None:
            raise ApplicationError(f"its node cannot be reached ({node and node.failure})")
        self._launch_sent = True  # a launch may have been on its way: release kills
        self._launch_done.set()
        if self.state < ResourceState.STARTED:
            raise ApplicationError("it had not started when its controller died "
                                   "(attach follows what runs, it starts nothing)")
        if self.state == ResourceState.STARTED:
            node.monitor.watch(self)
        return True

    def _kill(self, node: LinuxNode, graceful: bool) -> None:
        """Kill the app's session, process tree and tagged processes (TERM, a grace,
        then KILL; see :mod:`.processes`), in a batch with the node's other kills.
        The pid comes from run_home/pid, so a kill right after the launch finds it."""
        step = kill_step(self._run_home, self._sudo(node), graceful)
        rc, out = node.batcher.run(step, timeout=KILL_GRACE + 30)
        if rc is None:
            raise ApplicationError(f"{self._rtype} {self.guid}: kill failed: {out}")

    def _sudo(self, node: LinuxNode) -> bool:
        return bool(self.get("sudo")) and not node.is_root

    # -- release ------------------------------------------------------------------------------
    def do_release(self) -> None:
        node = self.node
        try:
            if node is not None and node._transport is not None and self._run_home:
                node.monitor.unwatch(self)
                self._launch_done.wait(120)
                # an app that ended and left nothing needs no kill; sudo apps of a user
                # who is not root always get one (their environments are not readable)
                left_nothing = (self.state != ResourceState.STARTED and not self._sudo(node)
                                and node.monitor.vacated(self._run_home))
                if self._launch_sent and not left_nothing:
                    self._kill(node, self.state == ResourceState.STARTED)
                teardown = self.replace_paths(self.get("tearDown"))
                if teardown:
                    node.transport.run(f"cd {shlex.quote(self._run_home)} && {teardown}\n",
                                       timeout=120)
        except Exception as exc:
            self.error(f"clean-up on release failed: {exc}")
        finally:
            super().do_release()

    # -- traces ----------------------------------------------------------------------------------
    def trace_path(self, name: str) -> str | None:
        """Where trace ``name`` lives on the host (None before deploy)."""
        self.get_trace(name)
        if name in _DEPLOY_TRACES:
            return f"{self._app_home}/{name}" if self._app_home else None
        return f"{self._run_home}/{name}" if self._run_home else None

    def _read_tail(self, name: str, size: int) -> str:
        """The last ``size`` bytes of a trace (a failure message needs no more)."""
        path = self.trace_path(name)
        if path is None:
            return ""
        transport = self.node.transport
        data = transport.read(path, max(0, (transport.size(path) or 0) - size), size)
        return "" if data is None else data.decode(errors="replace")

    def _read_text(self, name: str) -> str | None:
        path = self.trace_path(name)
        if path is None:
            return None
        data = self.node.transport.read(path)
        return None if data is None else data.decode(errors="replace")

    def trace(self, name: str, attr: str = TraceAttr.ALL, block: int = 512,
              offset: int = 0) -> Any:
        path = self.trace_path(name)
        if path is None:
            return None
        if attr == TraceAttr.PATH:
            return path
        transport = self.node.transport
        if attr == TraceAttr.SIZE:
            return transport.size(path) or 0
        if attr == TraceAttr.STREAM:
            data = transport.read(path, offset * block, block)
            return "" if data is None else data.decode(errors="replace")
        if name == "stdout" and self._final_stdout is not None:
            return self._final_stdout
        return self._read_text(name) or ""


ResourceManager  # re-exported names stay importable for subclasses
