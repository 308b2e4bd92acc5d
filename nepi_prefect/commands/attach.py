"""``nepi-prefect attach RUN``: take over a run whose controller was killed.

Logs in to the run's hosts again (from ``RUN/run-state.json``), follows the
applications still running to their end (at most ``--timeout`` seconds; then
they are stopped and the run FAILS, saying so), collects their traces into the
run directory, releases them, writes ``summary.json`` and closes the run's
record (see ``ExperimentController.attach``). Exit 0 if the run COMPLETED.
"""

from __future__ import annotations

import argparse
import time

from nepi_prefect.commands.cleanup import run_dir_of
from nepi_prefect.execution.ec import ExperimentController
from nepi_prefect.execution.errors import ExperimentStateError
from nepi_prefect.execution.resource import ResourceState


def add_parser(sub: argparse._SubParsersAction) -> None:
    help_ = ("take over a run whose controller was killed: follow its applications to "
             "their end, collect their traces, release them, close its record")
    p = sub.add_parser("attach", help=help_, description=help_)
    p.add_argument("run", metavar="RUN",
                   help="a run directory (or EXP_ID/RUN_ID under the results root)")
    p.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                   help="follow the applications at most this long, then stop them "
                        "(default: until they end)")
    p.set_defaults(func=cmd_attach)


def cmd_attach(args: argparse.Namespace) -> int:
    run_dir = run_dir_of(args.run)
    try:
        ec = ExperimentController.attach(run_dir)
    except ExperimentStateError as exc:
        print(f"attach: {exc}")
        return 2
    try:
        running = [g for g in ec.end_guids() if ec.state(g) == ResourceState.STARTED]
        print(f"re-attached {len(running)} application(s) still running in {ec.run_dir}")
        started = time.monotonic()
        if not ec.wait_finished(ec.end_guids(), timeout=args.timeout):
            left = [g for g in ec.end_guids() if ec.state(g) == ResourceState.STARTED]
            print(f"{len(left)} application(s) still running after {args.timeout:g} s: "
                  f"stopping them")
            ec.abort(f"attach: {len(left)} application(s) still running after "
                     f"{args.timeout:g} s were stopped")
        else:
            print(f"followed them to their end in {time.monotonic() - started:.1f} s")
    finally:
        ec.shutdown()
    summary = ec.summary()
    for line in summary.get("lost", []):
        print(f"lost: {line}")
    print(f"experiment {summary['state']}" + (f": {summary['failure']}"
                                              if summary.get("failure") else ""))
    return 0 if summary["state"] == "COMPLETED" else 1
