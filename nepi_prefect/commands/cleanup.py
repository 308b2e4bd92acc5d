"""``nepi-prefect cleanup``: remove what killed runs left.

``cleanup RUN`` kills the processes a crashed run left on its Linux hosts (found
from ``RUN/run-state.json`` and the pid files on the hosts); ``cleanup --netns``
removes the namespaces, links and daemons of killed emulated-network runs.
"""

from __future__ import annotations

import argparse
import json
import os

from nepi_prefect import settings
from nepi_prefect.execution.runstate import FILE as RUN_STATE
from nepi_prefect.resources.linux.leftovers import kill_leftovers
from nepi_prefect.resources.netns.run import cleanup_stale
from nepi_prefect.util.procs import pid_alive


def add_parser(sub: argparse._SubParsersAction) -> None:
    help_ = "remove leftovers of experiments that were killed (processes, namespaces, links)"
    p = sub.add_parser("cleanup", help=help_, description=help_)
    p.add_argument("run", nargs="?", metavar="RUN",
                   help="a run directory (or EXP_ID/RUN_ID under the results root): kill "
                        "what its applications left running on its hosts")
    p.add_argument("--netns", action="store_true",
                   help="emulated networks: runs whose process is gone")
    p.add_argument("--all", action="store_true",
                   help="also runs whose process still lives (stop them first!)")
    p.set_defaults(func=cmd_cleanup)


def cmd_cleanup(args: argparse.Namespace) -> int:
    if args.run:
        return _cleanup_run(args.run, force=args.all)
    cleaned = cleanup_stale(everything=args.all)
    where = settings.netns_state_dir()
    if cleaned:
        print(f"removed the leftovers of {len(cleaned)} netns run(s): {', '.join(cleaned)}")
    else:
        print(f"nothing to clean up (state in {where})")
    return 0


def run_dir_of(run: str) -> str:
    """A run directory, or EXP_ID/RUN_ID under the results root."""
    return run if os.path.isdir(run) else os.path.join(settings.results_root(), run)


def _cleanup_run(run: str, force: bool) -> int:
    run_dir = run_dir_of(run)
    path = os.path.join(run_dir, RUN_STATE)
    try:
        with open(path) as f:
            state = json.load(f)
    except (OSError, ValueError) as exc:
        print(f"cleanup: no readable {RUN_STATE} for run {run!r} ({path}): {exc}")
        return 2
    pid = state.get("pid")
    if not force and isinstance(pid, int) and pid_alive(pid):
        print(f"cleanup: the controller of run {run!r} (pid {pid}) still runs; "
              f"stop it first, or pass --all")
        return 2
    failed = 0
    for host in kill_leftovers(state):
        if host.error:
            failed += 1
            print(f"LinuxNode {host.guid} ({host.host}): not cleaned: {host.error}")
            continue
        total = sum(host.killed.values())
        print(f"LinuxNode {host.guid} ({host.host}): killed {total} process(es) of "
              f"{sum(1 for n in host.killed.values() if n)} of {len(host.killed)} app(s)")
    return 1 if failed else 0

