"""The launch of a node's apps: one watcher per batch, one fork per app (and no exec
but for sudo or a command that names $$).

A burst of apps that end at once each gets its own exit code and output (bash
must not forget the status of a child that ended before the watcher waits for
it); each app leads its own process group (``pid`` is the group id stop and
release kill); the watcher leaves with the last app of its batch; a command is
run verbatim, whatever it holds. Locally (``bash -c``) and over SSH (a real sshd
on loopback; the shell there is ``bash -s``).
"""

from __future__ import annotations

import os
import subprocess
import threading

import pytest

from nepi_prefect.execution.resource import ResourceState as S
from tests.fixtures.sshd import node_attrs
from tests.helpers import add_rm, engine_ec, wait_until


@pytest.fixture(params=["local", pytest.param("ssh", marks=pytest.mark.ssh)])
def node_attributes(request, tmp_path):
    if request.param == "local":
        return {"hostname": "localhost", "home": str(tmp_path / "home")}
    return node_attrs(request.getfixturevalue("sshd"))


def test_a_burst_of_quick_apps_gets_every_exit_code_and_output(tmp_path, node_attributes):
    for ec in engine_ec(tmp_path, "burst"):
        node = add_rm(ec, "LinuxNode", **node_attributes)
        apps = [add_rm(ec, "LinuxApplication", node, critical=False,
                       command=f"echo out-{i}; echo err-{i} >&2; exit {i % 4}")
                for i in range(30)]
        ec.deploy()
        ec.wait_finished(apps, timeout=120)
        for i, app in enumerate(apps):
            assert ec.state(app) == (S.FINISHED if i % 4 == 0 else S.FAILED), ec.get_resource(app).failure
            assert ec.trace(app, "exitcode").strip() == str(i % 4)
            assert ec.trace(app, "stdout") == f"out-{i}\n"
            assert ec.trace(app, "stderr") == f"err-{i}\n"
        failure = ec.get_resource(apps[1]).failure
        assert failure.endswith("command exited with code 1"), failure


def test_each_app_leads_its_own_process_group_and_the_watcher_leaves_last(tmp_path):
    for ec in engine_ec(tmp_path, "groups"):
        node = add_rm(ec, "LinuxNode", hostname="localhost", home=str(tmp_path / "home"))
        # the app's own pid (its shell, a fork of the watcher) and its process group
        probe = "me=$BASHPID; read -r -a st < /proc/$me/stat; echo $me ${st[4]}"
        apps = [add_rm(ec, "LinuxApplication", node, command=f"{probe}; sleep 0.{i}")
                for i in range(1, 4)]
        ec.deploy()
        ec.wait_finished(apps, timeout=60)
        pids, watchers = set(), set()
        for app in apps:
            assert ec.state(app) == S.FINISHED
            pid, pgid = ec.trace(app, "stdout").split()
            assert pid == pgid == ec.trace(app, "pid").strip()
            pids.add(pid)
            with open(os.path.join(ec.get_resource(app).run_home, "watcher")) as f:
                watchers.add(f.read().strip())
        assert watchers and not watchers & pids  # the watcher is none of the apps
        for watcher in watchers:
            wait_until(lambda w=watcher: not os.path.exists(f"/proc/{w}"), 30,
                       f"the watcher {watcher} outlived its apps")


_ODD = "__NEPI_W\n__NEPI_E@TAG@\n'q' \"$HOME\" `x` $(y) \\ ;& @TAG@"


@pytest.mark.parametrize("command, stdout", [
    # heredoc words, quotes, substitutions, the batch's own placeholders: verbatim
    (f"cat <<'EOF'\n{_ODD}\nEOF", _ODD + "\n"),
    # longer than an environment string (exec refuses one over 128 KiB): the batch's
    # script then goes to the watcher in a heredoc
    (f": {'x' * 150_000}; echo long-ok", "long-ok\n"),
], ids=["odd", "long"])
def test_a_command_runs_verbatim_whatever_it_holds(tmp_path, node_attributes, command, stdout):
    for ec in engine_ec(tmp_path, "verbatim"):
        node = add_rm(ec, "LinuxNode", **node_attributes)
        app = add_rm(ec, "LinuxApplication", node, command=command)
        ec.deploy()
        ec.wait_finished([app], timeout=60)
        assert ec.state(app) == S.FINISHED, ec.get_resource(app).failure
        assert ec.trace(app, "stdout") == stdout


class _Watched:
    """A process that is not an RM (the monitor's ``WatchedProcess`` protocol)."""

    def __init__(self, run_home: str):
        self.run_home = run_home
        self.codes: list[int | None] = []
        self.done = threading.Event()

    def on_process_exited(self, exitcode, outputs=None, lost=None) -> None:
        self.codes.append(exitcode)
        self.done.set()


def test_an_ended_process_waits_for_its_watcher_to_write_the_exit_code(tmp_path):
    """Between the watcher reaping a process and writing its exit code, the process is
    gone and the file not there yet: while the watcher lives, that is not a death."""
    for ec in engine_ec(tmp_path, "watcher"):
        node = add_rm(ec, "LinuxNode", hostname="localhost", home=str(tmp_path / "home"))
        ec.deploy()
        ec.wait_deployed([node], timeout=60)
        home = tmp_path / "app"
        home.mkdir()
        (home / "pid").write_text("999999999\n")  # no such process: it has ended
        watcher = subprocess.Popen(["sleep", "60"])
        try:
            (home / "watcher").write_text(f"{watcher.pid}\n")
            app = _Watched(str(home))
            ec.get_resource(node).monitor.watch(app)
            # several polls go by (every 0.2 s at most): none may call it dead
            assert not app.done.wait(2.0), f"reported {app.codes} while its watcher lives"
            (home / "exitcode").write_text("3\n")
            assert app.done.wait(30) and app.codes == [3]
            # a watcher gone without writing it: the process died without an exit code
            other = tmp_path / "other"
            other.mkdir()
            (other / "pid").write_text("999999999\n")
            (other / "watcher").write_text("999999998\n")
            lost = _Watched(str(other))
            ec.get_resource(node).monitor.watch(lost)
            assert lost.done.wait(30) and lost.codes == [None]
        finally:
            watcher.kill()
            watcher.wait()


def test_run_home_holds_the_command_and_the_watcher_again_after_a_restart(tmp_path):
    """The app's child writes ``command`` and ``watcher`` (the watcher only forks):
    both are there, right, and fresh when a stopped app starts again."""
    for ec in engine_ec(tmp_path, "runhome"):
        node = add_rm(ec, "LinuxNode", hostname="localhost", home=str(tmp_path / "home"))
        app = add_rm(ec, "LinuxApplication", node, command="echo 'a b'; sleep 60")
        ec.deploy()
        ec.wait_started([app], timeout=60)
        home = ec.get_resource(app).run_home
        # STARTED comes with the fork; the child writes both before the command runs
        wait_until(lambda: _read(home, "stdout") == "a b", 30, "the command never ran")
        first = _read(home, "watcher")
        assert _read(home, "command") == "echo 'a b'; sleep 60\n"
        assert first.isdigit() and first != _read(home, "pid")
        ec.stop(app)
        assert ec.state(app) == S.STOPPED
        ec.start(app)
        ec.wait_started([app], timeout=60)
        wait_until(lambda: _read(home, "watcher") not in ("", first), 30,
                   "the restart's watcher never wrote run_home/watcher")
        assert _read(home, "command") == "echo 'a b'; sleep 60\n"


def _read(home: str, name: str) -> str:
    try:
        with open(os.path.join(home, name)) as f:
            return f.read().strip() if name != "command" else f.read()
    except FileNotFoundError:
        return ""


# What a command sees of its shell. Each app's command runs in a forked subshell of
# its batch's watcher that sources ``command`` (no exec); a command that names $$
# runs as ``bash ./command`` of its own. Both must look alike to the command.
_PROBE = ("echo \"0=$0 #=$# flags=$- SHLVL=$SHLVL\"; compgen -v __nepi; compgen -A function; "
          "trap -p; sleep 0.2 & read -r -a st < /proc/$!/stat; "
          "[ \"${st[4]}\" = \"$BASHPID\" ] && echo same-group; wait; "
          "kill -HUP $BASHPID; echo survived-hup; "
          "bash -c '[ \"$NEPI_PREFECT_APP\" = \"$PWD\" ] && echo tagged; echo \"FOO=$FOO\"'; "
          "me=$BASHPID; tr '\\0' ' ' < /proc/$me/cmdline > cmdline.txt")


def test_a_sourced_command_sees_what_bash_command_would(tmp_path, node_attributes):
    for ec in engine_ec(tmp_path, "sourced"):
        node = add_rm(ec, "LinuxNode", **node_attributes)
        sourced = add_rm(ec, "LinuxApplication", node, command=_PROBE, env="FOO='two words'")
        execd = add_rm(ec, "LinuxApplication", node, command=_PROBE + "; : $$",
                       env="FOO='two words'")
        ec.deploy()
        ec.wait_finished([sourced, execd], timeout=60)
        outs = []
        for app in (sourced, execd):
            assert ec.state(app) == S.FINISHED, ec.get_resource(app).failure
            outs.append(ec.trace(app, "stdout"))
        assert outs[0] == outs[1]
        lines = outs[0].splitlines()
        assert lines[0].startswith("0=./command #=0 flags=hB "), lines[0]
        assert "__nepi" not in outs[0]  # none of the watcher's variables or functions
        assert lines[-4:] == ["same-group", "survived-hup", "tagged", "FOO=two words"]
        assert ec.trace(sourced, "stderr") == ec.trace(execd, "stderr") == ""
        # the first one did not exec: its process is a fork of the watcher
        # (the sshd of these tests runs on this machine: run_home is readable here)
        cmdlines = [_read(ec.get_resource(app).run_home, "cmdline.txt")
                    for app in (sourced, execd)]
        assert "./command" not in cmdlines[0] and "./command" in cmdlines[1], cmdlines


@pytest.mark.parametrize("command, stdin, code, stdout", [
    ("echo before; exit 3; echo after", None, 3, "before\n"),
    ("exec echo via-exec; echo not-here", None, 0, "via-exec\n"),
    ("cat; echo done", "in-1\nin-2\n", 0, "in-1\nin-2\ndone\n"),
    ("trap 'echo bye' EXIT; echo hi", None, 0, "hi\nbye\n"),
    ("f() { return 4; }; f || echo rc=$?; sleep 0.1 & wait $!; echo waited", None, 0,
     "rc=4\nwaited\n"),
], ids=["exit", "exec", "stdin", "trap", "functions-jobs"])
def test_a_command_keeps_its_shell_semantics(tmp_path, node_attributes, command, stdin,
                                             code, stdout):
    for ec in engine_ec(tmp_path, "semantics"):
        node = add_rm(ec, "LinuxNode", **node_attributes)
        extra = {"stdin": stdin} if stdin else {}
        app = add_rm(ec, "LinuxApplication", node, command=command, critical=False, **extra)
        ec.deploy()
        ec.wait_finished([app], timeout=60)
        assert ec.trace(app, "exitcode").strip() == str(code)
        assert ec.state(app) == (S.FINISHED if code == 0 else S.FAILED)
        assert ec.trace(app, "stdout") == stdout


def test_dollar_dollar_is_the_apps_own_pid(tmp_path, node_attributes):
    """A command that names $$ runs as a bash of its own: $$ is its pid (the ``pid``
    trace), not the watcher's, and differs from one app of a batch to the next."""
    for ec in engine_ec(tmp_path, "dollars"):
        node = add_rm(ec, "LinuxNode", **node_attributes)
        apps = [add_rm(ec, "LinuxApplication", node, command="echo $$ ${$} $BASHPID")
                for _ in range(3)]
        ec.deploy()
        ec.wait_finished(apps, timeout=60)
        for app in apps:
            assert ec.state(app) == S.FINISHED, ec.get_resource(app).failure
            pid = ec.trace(app, "pid").strip()
            assert ec.trace(app, "stdout").split() == [pid, pid, pid]
