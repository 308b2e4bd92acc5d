"""The ``nepi-prefect`` command: run, validate, sweep and inspect experiments.

Exit codes: 0 success; 1 the experiment failed; 2 refused before it started (bad
arguments, an invalid description or ``--set``); 3 the experiment succeeded but its
Prefect record is not on the server yet (it waits in the journal).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Sequence

from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from nepi_prefect import settings
from nepi_prefect.commands import runlog
from nepi_prefect.commands.results import finish_rerun, summary_table
from nepi_prefect.commands.results import register as register_results
from nepi_prefect.execution.attribute import flag_names
from nepi_prefect.execution.errors import InvalidInputError, UnknownResourceTypeError, listing
from nepi_prefect.execution.resource import ResourceFactory
from nepi_prefect.commands import attach as attach_command
from nepi_prefect.commands import cleanup as cleanup_command
from nepi_prefect.commands import server as server_command
from nepi_prefect.orchestration import logins  # noqa: F401  (saved SSH logins are Prefect blocks)

out = Console()
err = Console(stderr=True)


def _consoles() -> None:
    """Fresh consoles for this invocation; piped output is wide enough to grep."""
    global out, err
    out = Console(width=None if sys.stdout.isatty() else 200)
    err = Console(stderr=True, width=None if sys.stderr.isatty() else 200)


EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNRECORDED = 0, 1, 2, 3


class UsageError(Exception):
    """Bad arguments: printed and exit code 2."""


# -- helpers ------------------------------------------------------------------------------------
def results_root(arg: str | None = None) -> str:
    """Where runs are kept: ``--results``, ``$NEPI_PREFECT_RESULTS`` or ``~/.nepi-prefect/experiments``."""
    return settings.results_root(arg)


def make_recorder(kind: str | None, attach: str = "auto") -> Any:
    """The recorder named on the command line (None: the engine's configured default)."""
    if kind is None:
        from nepi_prefect.execution.recording import default_recorder
        recorder = default_recorder()
    elif kind == "none":
        from nepi_prefect.execution.recording import Recorder
        recorder = Recorder()
    else:
        from nepi_prefect.orchestration.recorder import PrefectRecorder
        recorder = PrefectRecorder(attach=attach)
    if hasattr(recorder, "notify"):   # say what the end of the run waits for
        recorder.notify = lambda text: err.print(Text(text, style="yellow"))
    return recorder


def _existing_file(path: str) -> str:
    if not os.path.isfile(path):
        raise UsageError(f"{path}: no such file")
    return path


def parse_param(text: str) -> tuple[str, list[str]]:
    """``"ping.interval=0.2,0.5"`` -> ``("ping.interval", ["0.2", "0.5"])``."""
    from nepi_prefect.spec.io import parse_assignment
    try:
        name, attr, values = parse_assignment(text)
    except InvalidInputError as exc:
        raise UsageError(f"--param {exc}".replace("NAME.ATTR=VALUE", "NAME.ATTR=V1,V2,...")) from None
    items = [v.strip() for v in values.split(",")]
    if not all(items):
        raise UsageError(f"--param {text!r}: expected comma-separated values, e.g. ping.count=1,5")
    return f"{name}.{attr}", items


# -- run ----------------------------------------------------------------------------------------------
def _progress(ec: Any, elapsed: float, counts: dict[str, int]) -> Table:
    table = Table(title=f"{ec.exp_id} — {elapsed:5.1f}s", title_justify="left")
    for state in counts:
        table.add_column(state, justify="right")
    table.add_row(*[str(n) for n in counts.values()])
    return table


def print_hosts(summary: dict[str, Any]) -> None:
    """Per-host accounting: how many hosts did their part, and why the others failed."""
    hosts = summary.get("hosts") or []
    if not hosts:
        return
    bad = [h for h in hosts if not h["ok"]]
    out.print(f"hosts: {len(hosts) - len(bad)} ok, {len(bad)} failed")
    for h in bad:
        err.print(f"[red]host {h['host']}[/red] (guid {h['guid']}): {h['reason']}: "
                  f"{h['detail']}", markup=True, highlight=False)


def cmd_run(args: argparse.Namespace) -> int:
    from nepi_prefect.spec.io import apply_overrides, read_description

    desc = apply_overrides(read_description(_existing_file(args.description)), args.set,
                           source=args.description)
    return run_description(desc, args.description, args)


def run_description(desc: Any, source: str, args: argparse.Namespace,
                    extra: dict[str, Any] | None = None) -> int:
    """Run ``desc`` with live progress, print its summary; ``extra`` fields go into
    the run's summary (``rerun`` links the new run to the old one)."""
    from nepi_prefect.spec.io import build_experiment
    from nepi_prefect.spec.run import ended_well, run_experiment, state_counts

    memory = runlog.log_to_memory()
    ec = build_experiment(desc, source=source, recorder=make_recorder(args.recorder),
                          local_dir=results_root(args.results))
    log_file = os.path.join(ec.run_dir, "run.log")
    runlog.log_to_file(memory, log_file)
    live = Live(console=out, refresh_per_second=4, transient=not out.is_terminal)
    linked = []
    with live:
        def tick(ec_: Any, elapsed: float) -> None:
            link = getattr(getattr(ec_.recorder, "outcome", None), "ui_link", None)
            if link and not linked:
                linked.append(link)
                live.console.print(f"flow run: {link}", highlight=False)
            if elapsed >= 0:
                live.update(_progress(ec_, elapsed, state_counts(ec_)))
        summary = run_experiment(ec, timeout=args.timeout, on_tick=tick)
    summary = finish_rerun(summary, extra or {})
    link = getattr(getattr(ec.recorder, "outcome", None), "ui_link", None)
    if link and not linked:   # the server came up only while the run was closing
        out.print(f"flow run: {link}", highlight=False)
    out.print(summary_table(summary))
    out.print(f"results: {summary['run_dir']} (log: {log_file})")
    print_hosts(summary)
    for res in summary["resources"]:
        if res.get("failure"):
            err.print(f"[red]{res.get('name') or res['guid']}[/red] ({res['rtype']} {res['guid']}) "
                      f"failed: {res['failure']}", markup=True, highlight=False)
    if not ended_well(summary):
        for line in summary.get("lost") or ():
            err.print(Text(f"lost: {line}", style="red"))
        err.print(f"[red]experiment {summary.get('state')}[/red]: "
                  f"{summary.get('failure') or 'not every result was written'}")
        return EXIT_FAILED
    if not runlog.record_delivered(ec.recorder, err):
        return EXIT_UNRECORDED
    return EXIT_OK


# -- validate, types, describe -------------------------------------------------------------------------
def cmd_validate(args: argparse.Namespace) -> int:
    from nepi_prefect.spec.io import (apply_overrides, parse_document, read_description,
                                      read_sweep, sweep_points)
    path = _existing_file(args.description)
    data = parse_document(Path(path).read_text(), path)
    if isinstance(data, dict) and "experiment" in data:  # a sweep file
        sweep, desc = read_sweep(path)
        desc = apply_overrides(desc, args.set, source=path)
        out.print(f"[green]valid sweep[/green]: {args.description}: {len(sweep_points(sweep))} points "
                  f"x {sweep.repeat} runs over {', '.join(sweep.grid) or 'explicit points'}")
        return EXIT_OK
    desc = apply_overrides(read_description(_existing_file(args.description)), args.set,
                           source=args.description)
    out.print(f"[green]valid[/green]: {args.description}: {len(desc.resources)} resources, "
              f"{len(desc.connections)} connections, {len(desc.conditions)} conditions")
    return EXIT_OK


def cmd_types(args: argparse.Namespace) -> int:
    table = Table(title="resource types", title_justify="left")
    table.add_column("rtype")
    table.add_column("platform")
    table.add_column("help")
    for name, rclass in sorted(ResourceFactory.resource_types().items()):
        table.add_row(name, rclass.get_platform(), rclass.get_help().splitlines()[0]
                      if rclass.get_help() else "")
    out.print(table)
    return EXIT_OK


def _limits(attr: Any) -> str:
    if attr.allowed:
        return "one of " + ", ".join(map(str, attr.allowed))
    if attr.range:
        low, high = attr.range
        if low is not None and high is not None:
            return f"{low}..{high}"
        return f">= {low}" if low is not None else f"<= {high}"
    return ""


def cmd_describe(args: argparse.Namespace) -> int:
    try:
        rclass = ResourceFactory.get_resource_type(args.rtype)
    except UnknownResourceTypeError:
        raise UsageError(f"unknown resource type {args.rtype!r}; known types: "
                         f"{listing(ResourceFactory.resource_types())}") from None
    out.print(f"[bold]{args.rtype}[/bold]: {rclass.get_help()}")
    if rclass.connects_to() is not None:
        limits = "".join(f" (at most {n} {r})" for r, n in rclass.connection_limits().items())
        out.print(f"connects to: {', '.join(rclass.connects_to())}{limits}")
    attrs = Table(title="attributes", title_justify="left")
    for col in ("name", "type", "default", "flags", "values", "help"):
        attrs.add_column(col)
    for attr in sorted(rclass.get_attributes(), key=lambda a: a.name):
        default = "" if attr.default is None or attr.is_secret else repr(attr.default)
        attrs.add_row(attr.name, attr.type, default, ",".join(flag_names(attr.flags)),
                      _limits(attr), attr.help)
    out.print(attrs)
    traces = Table(title="traces", title_justify="left")
    traces.add_column("name")
    traces.add_column("enabled by default")
    traces.add_column("help")
    for trace in rclass.get_traces():
        traces.add_row(trace.name, "yes" if trace.enabled else "", trace.help)
    out.print(traces)
    return EXIT_OK


# -- sweep ------------------------------------------------------------------------------------------------
def cmd_sweep(args: argparse.Namespace) -> int:
    from nepi_prefect.commands.sweep import load_sweep, run_sweep, stop_rule

    path = _existing_file(args.description)
    desc, grid, points, repeat, conc = load_sweep(path, dict(parse_param(p) for p in args.param))
    if not grid and not points:
        raise UsageError("nothing to sweep: give --param NAME.ATTR=V1,V2,... or a sweep file")
    try:
        rule = stop_rule(args)
    except ValueError as exc:
        raise UsageError(str(exc).replace("\n", " ")) from None
    if args.work_pool and args.deployment:
        raise UsageError("give --work-pool or --deployment, not both")
    # Prefect's flows record into the same API as the experiments: the local server
    # unless PREFECT_API_URL is set (never a per-process ephemeral one).
    from nepi_prefect.orchestration import local_server, server
    if not settings.prefect_api_url() and local_server.running() is None:
        err.print(f"starting the local Prefect server (log: {local_server.log_path()})")
    # Before Prefect is first imported (by run_sweep), or its flows would run on a
    # temporary ephemeral API that the record cannot reach.
    server.use_api()
    return run_sweep(args, desc, grid, points, args.repeat or repeat,
                     args.max_concurrency or conc, rule, out, err)


def cmd_campaigns(args: argparse.Namespace) -> int:
    from nepi_prefect.commands.sweep import cmd_campaigns as campaigns
    return campaigns(args, out)


# -- parser ---------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nepi-prefect",
                                     description="Run NEPI-style network experiments on Prefect.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, func: Any, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.set_defaults(func=func)
        return p

    def common(p: argparse.ArgumentParser, overrides: bool = True) -> None:
        p.add_argument("description", metavar="DESCRIPTION", help="experiment file (YAML or JSON)")
        if overrides:
            p.add_argument("--set", action="append", default=[], metavar="NAME.ATTR=VALUE",
                           help="override an attribute (repeatable)")

    p = add("run", cmd_run, "run one experiment, recorded in Prefect")
    common(p)
    p.add_argument("--recorder", choices=("prefect", "none"), default=None,
                   help="record the run as a Prefect flow run, or not at all "
                        "(default: $NEPI_PREFECT_RECORDER, else prefect)")
    p.add_argument("--timeout", help='fail the experiment after this long, e.g. "5m"')
    p.add_argument("--results", metavar="DIR", help="results directory")

    add("types", cmd_types, "list the resource types")
    p = add("describe", cmd_describe, "show a resource type's attributes and traces")
    p.add_argument("rtype", metavar="RTYPE")

    common(add("validate", cmd_validate, "check a description or a sweep file without running it"))
    p = add("sweep", cmd_sweep, "run an experiment over a grid of parameters as a campaign "
                                "(resumes; child flow runs, or runs on a work pool)")
    common(p, overrides=False)
    p.add_argument("--param", action="append", default=[], metavar="NAME.ATTR=V1,V2,...",
                   help="values of one parameter (repeatable; the grid is their product)")
    p.add_argument("--repeat", type=_positive, metavar="N", help="runs per point (default 1)")
    p.add_argument("--max-concurrency", type=_positive, metavar="K",
                   help="experiments at once (default 4)")
    p.add_argument("--timeout", help="per-run timeout")
    p.add_argument("--results", metavar="DIR", help="results directory")
    from nepi_prefect.commands.sweep import add_sweep_options
    add_sweep_options(p, _positive)

    p = add("campaigns", cmd_campaigns, "list campaigns and their progress (done, failed, to do)")
    p.add_argument("--results", metavar="DIR", help="results directory")

    register_results(add, run_description)
    server_command.register(sub)

    cleanup_command.add_parser(sub)
    attach_command.add_parser(sub)
    return parser


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``nepi-prefect`` console script."""
    from nepi_prefect.spec.validate import DescriptionError

    _consoles()
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UsageError as exc:
        err.print(f"[red]error[/red]: {exc}")
        return EXIT_USAGE
    except DescriptionError as exc:
        err.print(Text(f"error: {exc}", style="red"))
        return EXIT_USAGE
    except InvalidInputError as exc:
        err.print(Text(f"error: {exc}", style="red"))
        return EXIT_USAGE
    except KeyboardInterrupt:
        err.print("interrupted")
        return 130
    finally:
        runlog.detach()


if __name__ == "__main__":
    sys.exit(main())
