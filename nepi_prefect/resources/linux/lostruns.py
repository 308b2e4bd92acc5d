"""What each run started on a host, noted locally until the run has cleaned the host.

A LinuxNode notes at deploy its host, the run_homes of its RMs and the
controller's pid in ``<dir>/<host>/<exp_id>.<run_id>.<guid>.json`` (``dir``:
``settings.lost_runs_dir()``), and drops the note at release once nothing of
the run is left there. A note that stays names a run that could not clean the
host: its node was lost (``"lost": true``), or its controller died (its pid is
gone). The next run that deploys a node on the same host kills, in its deploy
probe, what such a run left: a lost run's processes always, a dead
controller's when the node has ``cleanProcesses``. A run that lost the host
failed those processes already; otherwise a note whose controller still lives
belongs to a run in progress and is never acted on, so runs of other
controllers that share a home are safe.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass

from nepi_prefect import settings
from nepi_prefect.util.files import atomic_file
from nepi_prefect.util.procs import pid_alive


@dataclass
class Note:
    """A run that may have left processes on a host."""

    path: str
    run: str          # exp_id/run_id
    homes: list[str]
    lost: bool


def _host_dir(label: str) -> str:
    return os.path.join(settings.lost_runs_dir(), re.sub(r"[^A-Za-z0-9@.:_-]", "_", label))


def note_path(label: str, exp_id: str, run_id: str, guid: int) -> str:
    """Where node ``guid`` of run ``exp_id``/``run_id`` notes its processes on ``label``."""
    return os.path.join(_host_dir(label), f"{exp_id}.{run_id}.{guid}.json")


def remember(label: str, exp_id: str, run_id: str, guid: int, homes: list[str]) -> str | None:
    """Note that this run may start processes in ``homes`` on host ``label``; returns
    the note's path (None if it could not be written: nothing else depends on it)."""
    path = note_path(label, exp_id, run_id, guid)
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with atomic_file(path, "w") as out:
            json.dump({"run": f"{exp_id}/{run_id}", "pid": os.getpid(), "homes": homes,
                       "lost": False}, out)
    except OSError:
        return None
    return path


def mark_lost(path: str | None) -> None:
    """The node lost its host: the next run there kills what this one left."""
    if path is None:
        return
    try:
        with open(path) as f:
            data = json.load(f)
        data["lost"] = True
        with atomic_file(path, "w") as out:
            json.dump(data, out)
    except (OSError, ValueError):
        pass


def forget(path: str | None) -> None:
    """Nothing of the run is left on the host."""
    if path is not None:
        try:
            os.unlink(path)
        except OSError:
            pass


def leftovers(label: str, clean_processes: bool) -> list[Note]:
    """Runs whose processes on host ``label`` are to be killed now: the lost ones, and
    with ``clean_processes`` those whose controller died."""
    folder = _host_dir(label)
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return []
    found = []
    for name in names:
        path = os.path.join(folder, name)
        try:
            with open(path) as f:
                data = json.load(f)
        except (OSError, ValueError):
            continue
        pid = data.get("pid")
        if data.get("lost") or clean_processes and not (isinstance(pid, int) and pid_alive(pid)):
            found.append(Note(path, data.get("run", name), list(data.get("homes", [])),
                              bool(data.get("lost"))))
    return found


def settled(stale: list[Note], lines: list[str]) -> str:
    """The notes of ``stale`` runs whose kill ran (its output ``lines``) go; says what went."""
    killed = sum(int(line.split()[1]) for line in lines if line.startswith("K "))
    for note in stale:
        forget(note.path)
    runs = ", ".join(f"{n.run} ({'lost' if n.lost else 'controller died'})" for n in stale)
    return f"killed {killed} process(es) left on the host by earlier runs: {runs}"
