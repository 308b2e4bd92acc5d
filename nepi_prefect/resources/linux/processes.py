"""Shell snippets that find, and kill, every process an application started on its host.

The process group of the app (its process leads it, see appcommands) is not
enough: a child may open its own session (``setsid``), and a daemon that forks
twice is handed to init, out of the app's process tree. So the processes of an
app are, when it is killed: its session and process group (those the pid
leads), every descendant of those, and every process whose environment
carries the app's tag (``NEPI_PREFECT_APP=<run_home>``, exported at the launch
and inherited through ``setsid`` and double forks). Zombies are left to their
parents.
"""

from __future__ import annotations


#: exported at the launch: ``NEPI_PREFECT_APP=<run_home>`` marks all that the app starts
TAG_VAR = "NEPI_PREFECT_APP"


def app_pids(pid: str, run_home: str, sudo: str = "") -> str:
    """A shell command listing the live processes of the app whose process is ``pid``.

    ``pid`` and ``run_home`` are shell words (a number, a quoted path, ``"$p"``).
    Reading other users' environments needs ``sudo`` when the app ran with it.
    """
    tree = ("ps -e -o pid= -o ppid= -o sid= -o pgid= -o stat= 2>/dev/null | awk -v r=" + pid + " '"
            "$5 !~ /^Z/ { up[$1] = $2; if ($1 == r || $3 == r || $4 == r) k[$1] = 1 } "
            "END { do { n = 0; for (c in up) if ((up[c] in k) && !(c in k)) { k[c] = 1; n++ } } "
            "while (n); for (c in k) print c }'")
    tagged = (f"{sudo}grep -lzxF \"{TAG_VAR}=\"{run_home} /proc/[0-9]*/environ 2>/dev/null "
              f"| cut -d/ -f3")
    return f"{{ {tree}; {tagged}; }} | sort -un"


def kill_app(pid: str, run_home: str, sudo: str = "", signal: str = "TERM",
             grace_ticks: int = 30) -> str:
    """A shell command that kills every process of the app (see the module's docstring).

    ``signal`` first, then up to ``grace_ticks`` tenths of a second for them to end,
    then SIGKILL until none is left. ``signal="KILL"`` skips the grace.
    """
    # A function, so the listing is written once: the wait and the KILL loop list again.
    # The group kills are all that a host without ps and /proc still gets.
    listing = f"_nepi_pids() {{ {app_pids(pid, run_home, sudo)}; }}; "
    first = "" if signal == "KILL" else (
        f"{sudo}kill -{signal} -- -{pid} 2>/dev/null; "
        f"p=$(_nepi_pids); [ -n \"$p\" ] && {sudo}kill -{signal} $p 2>/dev/null; i=0; "
        f"while [ $i -lt {grace_ticks} ] && [ -n \"$(_nepi_pids)\" ]; do sleep 0.1; i=$((i+1)); done; ")
    # KILL again while something is left: a process may fork between the listing and the kill.
    return (listing + first + f"{sudo}kill -KILL -- -{pid} 2>/dev/null; "
            "for j in 1 2 3 4 5; do p=$(_nepi_pids); [ -z \"$p\" ] && break; "
            f"{sudo}kill -KILL $p 2>/dev/null; sleep 0.1; done; true")
