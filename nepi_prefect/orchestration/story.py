"""What a resource's task-run logs tell: its state changes, its failure, its metrics
and the tail of its output (from the traces collected on release)."""

from __future__ import annotations

import logging
import os
from typing import Callable

from nepi_prefect.execution.recording import ResourceChange

#: characters of each output kept in the logs: enough for an error message, never a dump
TAIL = 2000
#: the traces whose tail is logged, when the RM collected them
OUTPUTS = ("stdout", "stderr")


def story(change: ResourceChange, redact: Callable[[str], str]) -> list[tuple[int, str]]:
    """The log lines (level, text) for ``change``, secrets masked."""
    if change.state == "FAILED":
        lines = [(logging.ERROR, f"{change.name} FAILED: {change.failure or 'no reason given'}")]
    else:
        lines = [(logging.INFO, f"{change.name} is {change.state}")]
    if change.state == "RELEASED":
        if change.metrics:
            shown = ", ".join(f"{k}={v}" for k, v in sorted(change.metrics.items()))
            lines.append((logging.INFO, f"{change.name} measured: {shown}"))
        for trace in OUTPUTS:
            tail = read_tail(change.traces.get(trace))
            if tail:
                lines.append((logging.INFO, f"{change.name} {trace} (its last {len(tail)} "
                                            f"characters; all of it in {change.traces[trace]}):\n"
                                            f"{tail}"))
    return [(level, redact(text)) for level, text in lines]


def read_tail(path: str | None, limit: int = TAIL) -> str:
    """The last ``limit`` characters of a text file, from a line start ("" if none)."""
    if not path:
        return ""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 4 * limit))
            text = fh.read().decode(errors="replace")
    except OSError:
        return ""
    if len(text) > limit:
        text = text[-limit:]
        text = text.partition("\n")[2] or text   # do not start mid-line
    return text.rstrip()
