"""``nepi-prefect cleanup --netns``: remove what killed emulated-network runs left."""

from __future__ import annotations

import argparse

from nepi_prefect import settings
from nepi_prefect.resources.netns.run import cleanup_stale


def add_parser(sub: argparse._SubParsersAction) -> None:
    help_ = "remove leftovers of experiments that were killed (namespaces, links, daemons)"
    p = sub.add_parser("cleanup", help=help_, description=help_)
    p.add_argument("--netns", action="store_true",
                   help="emulated networks: runs whose process is gone (the only kind today)")
    p.add_argument("--all", action="store_true",
                   help="also runs whose process still lives (stop them first!)")
    p.set_defaults(func=cmd_cleanup)


def cmd_cleanup(args: argparse.Namespace) -> int:
    cleaned = cleanup_stale(everything=args.all)
    where = settings.netns_state_dir()
    if cleaned:
        print(f"removed the leftovers of {len(cleaned)} netns run(s): {', '.join(cleaned)}")
    else:
        print(f"nothing to clean up (state in {where})")
    return 0
