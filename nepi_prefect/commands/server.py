"""``nepi-prefect server start|stop|status|flush``: the local Prefect server."""

from __future__ import annotations

import argparse
from typing import Any

from rich.console import Console

from nepi_prefect import settings
from nepi_prefect.orchestration import journal, local_server, replay, server


def register(sub: Any) -> None:
    """Add the ``server`` command to the CLI's subparsers."""
    p = sub.add_parser("server", help="manage the local Prefect server that records experiments",
                       description="The local Prefect server (used when PREFECT_API_URL is unset): "
                                   "one per PREFECT_HOME, on loopback, running until stopped.")
    p.set_defaults(func=run)
    p.add_argument("action", choices=("start", "stop", "status", "flush"),
                   help="start it, stop it, show its state and UI address, or ship the "
                        "records left in the journal")


def run(args: argparse.Namespace) -> int:
    out, err = Console(), Console(stderr=True)
    return {"start": _start, "stop": _stop, "status": _status, "flush": _flush}[args.action](out, err)


def _external() -> str | None:
    return settings.prefect_api_url()


def _start(out: Console, err: Console) -> int:
    if _external():
        err.print(f"PREFECT_API_URL is set ({_external()}): experiments record there; "
                  f"no local server is started")
        return 2
    try:
        state = local_server.ensure()
    except local_server.ServerError as exc:
        err.print(f"[red]error[/red]: {exc}")
        return 1
    out.print(f"Prefect server running (pid {state.pid}); UI: {state.ui_url}")
    return 0


def _stop(out: Console, err: Console) -> int:
    state = local_server.stop()
    out.print(f"stopped the Prefect server (pid {state.pid}, port {state.port})"
              if state else "no local Prefect server is running")
    return 0


def _status(out: Console, err: Console) -> int:
    waiting = len(journal.pending())
    note = f"; {waiting} record(s) waiting in {settings.journal_dir()}" if waiting else ""
    if _external():
        url = _external()
        up = local_server.healthy(url)
        out.print(f"PREFECT_API_URL={url} ({'answering' if up else 'NOT answering'}); "
                  f"UI: {server.ui_url(url)}{note}")
        return 0 if up else 1
    state = local_server.running()
    if state is None:
        out.print(f"no local Prefect server is running (PREFECT_HOME={settings.prefect_home()})"
                  f"{note}")
        return 3
    up = local_server.healthy(state.api_url)
    out.print(f"Prefect server pid {state.pid} {'running' if up else 'starting'}; "
              f"UI: {state.ui_url}; API: {state.api_url}; log: {local_server.log_path()}{note}")
    return 0


def _flush(out: Console, err: Console) -> int:
    report = replay.flush()
    for name in report.shipped:
        crashed = " (ended Crashed: its process died)" if name in report.crashed else ""
        out.print(f"shipped {name}{crashed}")
    for path, why in report.failed:
        err.print(f"[red]not shipped[/red] {path}: {why}")
    if report.busy:
        out.print(f"{report.busy} record(s) still being written by running experiments")
    if not (report.shipped or report.failed):
        out.print("nothing to ship")
    return 1 if report.failed else 0
