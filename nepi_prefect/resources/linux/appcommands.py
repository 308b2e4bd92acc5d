"""The shell a LinuxApplication sends to its host: launch, kill, build.

**Launch.** The starts of a node's apps go out in batches (:mod:`.hostops`),
and every batch of launches runs inside ONE *watcher*, a ``bash -s`` the
batch starts (see :func:`_launch_batch` for why that shape). Per app, the
watcher forks once and writes ``pid``; the child writes ``command`` and
``watcher`` (off the watcher's serial path, which the batch waits for: under
load the watcher is one task among many) and ``exec``s ``bash
./command`` with its outputs in run_home: one fork and one exec per app, where
a wrapper per app (``setsid sh wrapper.sh``, then ``bash``) cost three execs
and two forks. ``set -m`` (around the fork only) gives each app its own
process group (so ``pid`` is its process group id, and stop and release kill
the group, the tree and what carries the app's tag, see :mod:`.processes`).
Once the batch's apps are launched the watcher prints its end line, so the
batch returns at once, and then waits for them (``wait -n -p``, bash >= 5.1),
writing each ``exitcode`` as it ends. The watcher ignores SIGHUP (as ``nohup``
would) and so do the apps: a dropped connection does not end the run.
``watcher`` in run_home holds its pid: while it lives, an app that ended has
its exit code on the way. On an older bash (no ``wait -p``) each app gets a
forked subshell that waits for it instead.
"""

from __future__ import annotations

import shlex

from nepi_prefect.resources.linux.hostops import StepGroup
from nepi_prefect.resources.linux.processes import TAG_VAR, kill_app

#: the watcher's script, around the batch's steps (which call ``__nepi_run``)
_WATCHER_START = (
    "unset __nepi_ws; trap '' HUP; declare -A __nepi_h; __nepi_w=$$; __nepi_nw=; "
    "(( BASH_VERSINFO[0] > 5 || (BASH_VERSINFO[0] == 5 && BASH_VERSINFO[1] >= 1) )) "
    "&& __nepi_nw=1\n"
    # __nepi_run STDIN SUDO COMMAND NAME=value...: in the current directory (the
    # run_home), one fork, then exec; prints the pid. The child writes ``command``
    # and ``watcher`` itself: the watcher forks the batch's apps one after another,
    # so what it does per app is what a batch of launches waits for
    "__nepi_run() { local i=$1 s=$2 c=$3; shift 3\n"
    # job control only for the fork (its own process group): left on, bash would
    # forget the status of a job that ended before ``wait -n`` asks for it
    "set -m; if [ -n \"$__nepi_nw\" ]; then\n"
    "{ printf '%s\\n' \"$c\" > command; echo $__nepi_w > watcher; export \"$@\"; "
    "exec $s bash ./command < \"$i\" > stdout 2> stderr; } &\n"
    "else\n"
    "{ printf '%s\\n' \"$c\" > command; echo $__nepi_w > watcher; export \"$@\"; "
    "$s bash ./command < \"$i\" > stdout 2> stderr; echo $? > exitcode; } &\n"
    "fi; set +m\n"
    "__nepi_h[$!]=$PWD; echo $! > pid; echo $!; }")
_WATCHER_END = (
    # everything is launched: let the batch return (no write after the end line:
    # sed is gone), then write each exit code
    "echo __NEPI_E@TAG@; exec >/dev/null 2>&1\n"
    "while (( ${#__nepi_h[@]} )); do wait -n -p __nepi_p; __nepi_rc=$?; "
    "[ -n \"$__nepi_p\" ] || break; echo $__nepi_rc > \"${__nepi_h[$__nepi_p]}/exitcode\"; "
    "unset \"__nepi_h[$__nepi_p]\"; done")
#: above this, the script goes in a heredoc instead of the environment (an exec
#: refuses a string over 128 KiB), which bash reads one byte per read(2)
_ENV_MAX = 100_000


def _launch_batch(steps: str, tag: str) -> str:
    """The command that runs a batch of launch steps in one watcher.

    The watcher is a bash of its own, ``-s``: in a subshell of ``bash -c`` (the
    local transport's shell), bash forgets the status of a child that ended before
    ``wait -n`` asks for it. Its script comes in its environment and is ``eval``'d
    (bash reads a script from a pipe one byte per read(2): 20,000 reads for 50
    launches). The batch reads the watcher's output up to its end line, not to EOF:
    each app holds the pipe until it execs.
    """
    script = f"{_WATCHER_START}\n{steps}\n{_WATCHER_END.replace('@TAG@', tag)}"
    until_end = f"sed -n '/^__NEPI_E{tag}$/q;p'"
    if len(script) <= _ENV_MAX:
        return (f"{{ __nepi_ws={shlex.quote(script)} bash --noprofile --norc -s "
                f"<<< 'eval \"$__nepi_ws\"' 2>&1 & }} | {until_end}")
    return (f"{{ bash --noprofile --norc -s <<'__NEPI_W{tag}' 2>&1 & }} | {until_end}\n"
            f"{script}\n__NEPI_W{tag}")


#: the steps of one batch of launches share one watcher
LAUNCH = StepGroup(_launch_batch)


def launch_step(run_home: str, app_home: str, command: str, env: list[tuple[str, str]],
                stdin: bool, sudo: bool) -> str:
    """The launch of one app, a step of a :data:`LAUNCH` batch; its last line is the pid.

    Built-ins only (the directories exist already, the node made them), but the
    app's own fork and exec. ``env`` is (NAME, value) pairs; the app's tag is added.
    """
    home, app = shlex.quote(run_home), shlex.quote(app_home)
    pairs = " ".join(shlex.quote(f"{k}={v}") for k, v in [(TAG_VAR, run_home), *env])
    return (f"{{ [ -d {home} ] && [ -d {app} ] || mkdir -p {home} {app}; }} && cd {home} && "
            f"{{ [ ! -e exitcode ] && [ ! -e pid ] || rm -f exitcode pid watcher; }} && "
            f"__nepi_run {'stdin' if stdin else '/dev/null'} "
            f"{shlex.quote('sudo -n -E' if sudo else '')} {shlex.quote(command)} {pairs}")


def kill_step(run_home: str, sudo: bool, graceful: bool) -> str:
    """Kill the app whose pid is in run_home/pid (a kill right after the launch finds
    it there): its group, tree and tagged processes, TERM and a grace, or KILL."""
    home = shlex.quote(run_home)
    kill = kill_app('"$__p"', home, "sudo -n " if sudo else "",
                    signal="TERM" if graceful else "KILL")
    return f'__p=; read -r __p < {home}/pid 2>/dev/null; [ -z "$__p" ] || {{ {kill}; }}; true'


def build_script(run_home: str, app_home: str, steps: list[str], kept: str) -> str:
    """Run build and install (``steps``) in run_home, outputs and exit code in
    app_home; on success keep what they left in run_home in ``kept``."""
    home, run = shlex.quote(app_home), shlex.quote(run_home)
    kept = shlex.quote(kept)
    body = " && ".join(f"( {s}\n)" for s in steps) or "true"
    return (f"cd {run} && {{ {body}; }} > {home}/deploy_stdout 2> {home}/deploy_stderr; "
            f"rc=$?; echo $rc > {home}/deploy_exitcode; [ $rc = 0 ] && "
            f"{{ rm -rf {kept} && mkdir {kept} && cp -a {run}/. {kept}/ "
            f"&& touch {home}/.nepi-ready || rc=$?; }}; exit $rc")


def fetch_command(app_home: str, urls: list[str]) -> str:
    """Download ``urls`` into app_home (curl, else wget)."""
    fetches = []
    for url in urls:
        name = shlex.quote(url.rstrip("/").rsplit("/", 1)[-1] or "source")
        fetches.append(f"(curl -fsSL -o {name} {shlex.quote(url)} || "
                       f"wget -q -O {name} {shlex.quote(url)})")
    return f"cd {shlex.quote(app_home)} && " + " && ".join(fetches)
