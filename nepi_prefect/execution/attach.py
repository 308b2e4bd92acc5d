"""Attach to a run whose controller died (SIGKILL, a crash): ``ExperimentController.attach``.

A new controller with the dead one's exp_id, run_id and run directory reads
the run's ``run-state.json`` (:mod:`.runstate`), registers the same RMs (guids,
names, attributes, connections), restores each one's recorded state and times,
and lets each take up its part through the public ``reattach(record)`` hook,
in the reverse of release order (a node before its apps): a LinuxNode logs in
again, a LinuxApplication still running is watched again by its node's monitor.
An RM that was STARTED and whose type cannot follow it FAILS, named. Every app
whose stdout, stderr and exit code no Collector of the run gathers gets one
from attach. The caller follows the run to its end (``wait_finished``); then
``shutdown()`` collects the traces into the run directory, releases everything
(nothing is left on the hosts), writes ``summary.json`` and closes the run's
record (a recorder's ``reopen`` continues the dead controller's record).
"""

from __future__ import annotations

import json
import os
from datetime import datetime
from typing import Any

from nepi_prefect.execution.errors import ExperimentStateError, InvalidInputError
from nepi_prefect.execution.resource import ResourceManager
from nepi_prefect.execution.runstate import FILE
from nepi_prefect.execution.states import STATE_TIME_ATTR, ResourceState
from nepi_prefect.util.procs import pid_alive

S = ResourceState
#: the traces attach collects for every app that has them (unless a Collector does)
TRACES = ("stdout", "stderr", "exitcode")


def read_run_state(run_dir: str) -> dict[str, Any]:
    """The run-state document of ``run_dir``; a clear error if there is none to attach to."""
    path = os.path.join(run_dir, FILE)
    try:
        with open(path) as f:
            state = json.load(f)
    except (OSError, ValueError) as exc:
        raise InvalidInputError(f"no readable {FILE} in {run_dir!r} ({exc}); attach needs "
                                f"the run directory of a run that was killed") from None
    pid = state.get("pid")
    if isinstance(pid, int) and pid != os.getpid() and pid_alive(pid):
        raise ExperimentStateError(f"the controller of run {run_dir!r} (pid {pid}) still runs; "
                                   f"attach is for a run whose controller died")
    if state.get("ecstate") == "TERMINATED":
        raise ExperimentStateError(f"run {run_dir!r} ended normally (its controller shut it "
                                   f"down); there is nothing to attach to")
    return state


def rebuild(ec: Any, state: dict[str, Any]) -> list[ResourceManager]:
    """Register in ``ec`` the RMs of ``state`` and take each up; returns them."""
    records = {r["guid"]: r for r in state.get("resources", [])}
    for guid, record in sorted(records.items()):
        ec.register_resource(record["rtype"], guid=guid, name=record.get("name"))
        rm = ec.get_resource(guid)
        for name, value in (record.get("attributes") or {}).items():
            rm.set(name, value)  # the values the run had (every RM is NEW still)
    for guid, record in records.items():
        for other in record.get("connections", []):
            if other > guid and other in records:
                ec.register_connection(guid, other)
    rms = [ec.get_resource(g) for g in records]
    failing = [rm for rm in reattach_order(rms) if take_up(rm, records[rm.guid])]
    for rm in failing:  # last: a critical one aborts the run, which releases everything
        if rm.failure:
            rm.error(rm.failure)
        rm.fail()
    return rms


def reattach_order(rms: list[ResourceManager]) -> list[ResourceManager]:
    """The reverse of release order: an RM before those released before it (a node
    before its apps), else by guid."""
    by_guid = {rm.guid: rm for rm in rms}
    first: dict[int, list[int]] = {g: [] for g in by_guid}  # guid -> RMs taken up before it
    for rm in rms:
        for guid in rm.release_after():  # released before rm: so taken up after it
            if guid in first:
                first[guid].append(rm.guid)
    out: list[ResourceManager] = []
    seen: set[int] = set()

    def visit(guid: int, path: frozenset[int]) -> None:
        if guid in seen or guid in path:
            return
        for other in sorted(first[guid]):
            visit(other, path | {guid})
        seen.add(guid)
        out.append(by_guid[guid])

    for guid in sorted(by_guid):
        visit(guid, frozenset())
    return out


def take_up(rm: ResourceManager, record: dict[str, Any]) -> bool:
    """Restore the recorded times and state, then the RM's own ``reattach``. True if the
    RM is to FAIL once all are taken up: it had failed, or it cannot be followed."""
    for name, stamp in (record.get("times") or {}).items():
        if name in S.__members__ and S[name] in STATE_TIME_ATTR:
            setattr(rm, STATE_TIME_ATTR[S[name]], datetime.fromisoformat(stamp))
    rm.failure = record.get("failure")
    recorded = S.__members__.get(record.get("state") or "", S.NEW)
    # a failed RM takes up the furthest state it reached first (a failed app's run_home
    # is still to be cleaned), and FAILS again at the end
    state = max([s for s in STATE_TIME_ATTR if s < S.FAILED
                 and getattr(rm, STATE_TIME_ATTR[s]) is not None], default=S.NEW) \
        if recorded == S.FAILED else recorded
    if state != S.NEW:
        rm.set_state(state, time=getattr(rm, STATE_TIME_ATTR.get(state, ""), None))
    try:
        follows = rm.reattach(record)
        why = "its type cannot follow a run it did not start"
        doomed = rm.state == S.STARTED and not follows
    except Exception as exc:  # a host that cannot be reached, an app never started
        why, doomed = str(exc), rm.state < S.STOPPED  # not ended: it never will now
    if recorded == S.FAILED:
        return True
    if doomed:
        rm.failure = f"{rm.get_rtype()} {rm.guid}: could not be re-attached: {why}"
    return doomed


def collect_traces(ec: Any, rms: list[ResourceManager]) -> None:
    """A Collector per trace for the apps no Collector of the run gathers it from, so
    the release copies it into ``<run_dir>/<rtype>-<guid>/``."""
    launched = [rm for rm in rms if rm.start_time is not None and not rm.releasing]
    for name in TRACES:
        have = [rm for rm in launched if name in {t.name for t in rm.get_traces()}
                and not _collected_by_run(rm, name)]
        if not have:
            continue
        guid = ec.register_resource("Collector", name=f"attach-{name}")
        ec.get_resource(guid).set("traceName", name)
        for rm in have:
            ec.register_connection(guid, rm.guid)
        ec.get_resource(guid).set_ready()


def _collected_by_run(rm: ResourceManager, name: str) -> bool:
    return any("Collector" in type(c)._rtype_chain() and c.get("traceName") == name
               for c in rm.get_connected())
