"""What a crashed run left running on its Linux hosts: found from its run-state file
(``execution/runstate.py``: each node's host and login, each app's run_home) and the
pid file every app's launch writes in its run_home, then killed with everything the
app started (its session, process tree and tagged processes: see :mod:`.processes`).

Used by ``nepi-prefect cleanup RUN``. Knows no Prefect: saved credentials are
resolved through the transport's registry, as a node does.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from typing import Any

from nepi_prefect.resources.linux import lostruns
from nepi_prefect.resources.linux.login import make_transport
from nepi_prefect.resources.linux.processes import app_pids, kill_app
from nepi_prefect.transport.base import Transport, TransportError


@dataclass
class HostLeftovers:
    """What ``kill_leftovers`` did on one node's host."""

    guid: int
    host: str
    killed: dict[str, int] = field(default_factory=dict)  # run_home -> processes killed
    error: str | None = None
    label: str = ""  # the transport's user@host:port


def kill_leftovers(state: dict[str, Any]) -> list[HostLeftovers]:
    """Kill, host by host, every process the apps of the run described by ``state``
    (a run-state document) left; one SSH login and one command per host."""
    rms = {rm["guid"]: rm for rm in state.get("resources", [])}
    done = []
    for node in rms.values():
        if node.get("rtype") != "LinuxNode":
            continue
        homes = [rms[g]["run_home"] for g in node.get("connections", [])
                 if g in rms and rms[g].get("run_home")]
        if homes:
            done.append(_clean_host(node, homes))
            if done[-1].error is None:  # the host is clean: the next run there has no more to do
                lostruns.forget(lostruns.note_path(done[-1].label, state.get("exp_id", ""),
                                                   state.get("run_id", ""), node["guid"]))
    return done


def _clean_host(node: dict[str, Any], homes: list[str]) -> HostLeftovers:
    host = f"{node.get('hostname')}:{node.get('port', 22)}"
    out = HostLeftovers(node["guid"], host)
    try:
        transport = _transport(node)
    except Exception as exc:  # credentials that cannot be read, say
        out.error = str(exc)
        return out
    out.label = transport.label
    try:
        transport.connect()
        result = transport.run(kill_script(homes), timeout=180)
    except TransportError as exc:
        out.error = str(exc)
        return out
    finally:
        transport.close()
    for line in result.stdout.splitlines():
        if line.startswith("K "):
            _, count, home = line.split(" ", 2)
            out.killed[home] = int(count)
    return out


def kill_script(homes: list[str]) -> str:
    """For each run_home: the number of live processes of its app ("K n home"), then
    the kill. A user who is not root kills with sudo (a sudo app's processes)."""
    steps = ['s=; [ "$(id -u)" = 0 ] || s="sudo -n "']
    for home in homes:
        h = shlex.quote(home)
        steps.append(
            f'p=; read -r p < {h}/pid 2>/dev/null; if [ -n "$p" ]; then '
            f'n=$({app_pids(chr(34) + "$p" + chr(34), h, "${s}")} | wc -l); '
            f'echo "K $n "{h}; {{ {kill_app(chr(34) + "$p" + chr(34), h, "${s}", signal="KILL")}; }}; '
            f'else echo "K 0 "{h}; fi')
    return "\n".join(steps) + "\ntrue"


def _transport(node: dict[str, Any]) -> Transport:
    """A connection like the node's own (its login attributes, from the run-state file)."""
    return make_transport(node, node["guid"])
