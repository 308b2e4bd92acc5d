"""The shell a LinuxApplication sends to its host: launch, kill, build.

**Launch.** The starts of a node's apps go out in batches (:mod:`.hostops`),
and every batch of launches runs inside ONE *watcher*, a bash the batch starts
(see :func:`_launch_batch` for why that shape). Per app, the watcher forks once
and writes ``pid``; the child writes ``command`` and ``watcher`` (off the
watcher's serial path, which the batch waits for: under load the watcher is one
task among many), redirects its inputs and outputs to run_home and *sources*
``./command``: one fork and no exec per app (an exec of a fresh bash is ~2 ms of
host CPU, a fork of the watcher ~0.5 ms). Before it sources the command the child
drops what is the watcher's (its variables, functions and job control) and sets
``$0`` to ``./command``, so the command sees the shell ``bash ./command`` would
give it, but for ``$$`` and ``$PPID`` (the watcher's pid and parent in a forked
subshell): a command whose text names either, and a ``sudo`` app, still ``exec``
``bash ./command`` (``sudo -n -E bash ./command``). ``set -m`` (around the fork
only) gives each app its own process group (so ``pid`` is its process group id,
and stop and release kill the group, the tree and what carries the app's tag,
see :mod:`.processes`). Once the batch's apps are launched the watcher prints
its end line, so the batch returns at once, and then waits for them (``wait -n
-p``, bash >= 5.1), writing each ``exitcode`` as it ends. The watcher ignores
SIGHUP (as ``nohup`` would) and so do the apps: a dropped connection does not
end the run. ``watcher`` in run_home holds its pid: while it lives, an app that
ended has its exit code on the way. On an older bash (no ``wait -p``) each app
gets a forked subshell that runs ``bash ./command``, waits for it and writes its
exit code instead.
"""

from __future__ import annotations

import shlex

from nepi_prefect.resources.linux.hostops import StepGroup
from nepi_prefect.resources.linux.processes import TAG_VAR, kill_app

#: what a batch's watcher defines before its steps (which call ``__nepi_pre``, fork
#: ``eval "$__nepi_b"`` and call ``__nepi_post``)
_WATCHER_START = (
    "unset __nepi_ws; trap '' HUP; declare -A __nepi_h; __nepi_w=$$; __nepi_nw=; "
    "(( BASH_VERSINFO[0] > 5 || (BASH_VERSINFO[0] == 5 && BASH_VERSINFO[1] >= 1) )) "
    "&& __nepi_nw=1\n"
    # __nepi_pre STDIN EXEC COMMAND NAME=value...: the app's launch in globals, and
    # job control on for the fork only (its own process group): left on, bash would
    # forget the status of a job that ended before ``wait -n`` asks for it
    "__nepi_pre() { __nepi_i=$1 __nepi_s=$2 __nepi_c=$3; shift 3; __nepi_e=(\"$@\"); "
    "set -m; }\n"
    "__nepi_post() { set +m; __nepi_h[$!]=$PWD; echo $! > pid; echo $!; }\n"
    # the child (run by eval at the top level, not in a function): it writes
    # ``command`` and ``watcher`` itself, off the watcher's serial path
    "__nepi_b='printf \"%s\\n\" \"$__nepi_c\" > command; echo $__nepi_w > watcher; "
    "exec < \"$__nepi_i\" > stdout 2> stderr || exit 126; '\n"
    "if [ -n \"$__nepi_nw\" ]; then __nepi_b+='"
    # an exec when asked (sudo, a command that names $$): ``bash ./command``
    "[ -z \"$__nepi_s\" ] || { export \"${__nepi_e[@]}\"; exec $__nepi_s ./command; }; "
    # else the command, sourced in this forked subshell: nothing of the watcher left
    # (its variables, functions, job control), $0 as under ``bash ./command`` (and
    # SHLVL: the exec builtin takes one off, the new bash adds it back)
    "set +m; __nepi_x=(\"${__nepi_e[@]}\"); unset -f __nepi_pre __nepi_post; "
    "unset -v __nepi_i __nepi_s __nepi_c __nepi_w __nepi_nw __nepi_h __nepi_e __nepi_b; "
    "export \"${__nepi_x[@]}\"; unset -v __nepi_x; BASH_ARGV0=./command; . ./command'\n"
    # an older bash (no ``wait -p``): a subshell that waits and writes the exit code
    "else __nepi_b+='export \"${__nepi_e[@]}\"; ${__nepi_s:-bash} ./command; "
    "echo $? > exitcode'; fi")
_WATCHER_END = (
    # everything is launched: let the batch return (no write after the end line:
    # sed is gone), then write each exit code
    "echo __NEPI_E@TAG@; exec >/dev/null 2>&1\n"
    "while (( ${#__nepi_h[@]} )); do wait -n -p __nepi_p; __nepi_rc=$?; "
    "[ -n \"$__nepi_p\" ] || break; echo $__nepi_rc > \"${__nepi_h[$__nepi_p]}/exitcode\"; "
    "unset \"__nepi_h[$__nepi_p]\"; done")
#: a command that names ``$$`` (or ``$PPID``) runs as ``bash ./command`` of its own:
#: in a forked subshell ``$$`` would be the watcher's pid, shared by a batch of apps
_NEEDS_EXEC = ("$$", "${$}", "PPID")
#: above this, the script goes in a heredoc instead of the environment (an exec
#: refuses a string over 128 KiB), which bash reads one byte per read(2)
_ENV_MAX = 100_000


def _launch_batch(steps: str, tag: str) -> str:
    """The command that runs a batch of launch steps in one watcher.

    The watcher is a bash of its own: in a subshell of ``bash -c`` (the local
    transport's shell), bash forgets the status of a child that ended before
    ``wait -n`` asks for it. Its script comes in its environment and is ``eval``'d
    (bash reads a script from a pipe one byte per read(2): 20,000 reads for 50
    launches). It runs as a script file (``/dev/fd/3``), not ``-s`` or ``-c``: its
    apps are its forks, and ``$-`` is then ``hB`` there as under ``bash ./command``.
    The batch reads the watcher's output up to its end line, not to EOF: each app
    holds the pipe until it redirects its outputs.
    """
    script = f"{_WATCHER_START}\n{steps}\n{_WATCHER_END.replace('@TAG@', tag)}"
    until_end = f"sed -n '/^__NEPI_E{tag}$/q;p'"
    if len(script) <= _ENV_MAX:
        return (f"{{ __nepi_ws={shlex.quote(script)} bash --noprofile --norc /dev/fd/3 "
                f"3<<< 'eval \"$__nepi_ws\"' 2>&1 & }} | {until_end}")
    return (f"{{ bash --noprofile --norc /dev/fd/3 3<<'__NEPI_W{tag}' 2>&1 & }} | {until_end}\n"
            f"{script}\n__NEPI_W{tag}")


#: the steps of one batch of launches share one watcher
LAUNCH = StepGroup(_launch_batch)


def launch_step(run_home: str, app_home: str, command: str, env: list[tuple[str, str]],
                stdin: bool, sudo: bool) -> str:
    """The launch of one app, a step of a :data:`LAUNCH` batch; its last line is the pid.

    Built-ins only (the directories exist already, the node made them), and the
    app's own fork; an exec only for ``sudo`` or a command that names ``$$``.
    ``env`` is (NAME, value) pairs; the app's tag is added.
    """
    home, app = shlex.quote(run_home), shlex.quote(app_home)
    pairs = " ".join(shlex.quote(f"{k}={v}") for k, v in [(TAG_VAR, run_home), *env])
    run = ("sudo -n -E bash" if sudo
           else "bash" if any(word in command for word in _NEEDS_EXEC) else "")
    return (f"{{ [ -d {home} ] && [ -d {app} ] || mkdir -p {home} {app}; }} && cd {home} && "
            f"{{ [ ! -e exitcode ] && [ ! -e pid ] || rm -f exitcode pid watcher; }} && "
            f"__nepi_pre {'stdin' if stdin else '/dev/null'} {shlex.quote(run)} "
            f"{shlex.quote(command)} {pairs} && "
            f"{{ {{ eval \"$__nepi_b\"; }} & __nepi_post; }}")


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
