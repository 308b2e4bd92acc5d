"""Continue the Prefect record of a run whose controller died (``attach``).

The dead controller's journal is an orphan without a close record. The
process that attaches adopts it before anything ships it as Crashed (holding
its lock keeps the background shipper of :mod:`.replay` away) and goes on
writing into it: what attach does lands in the same flow run, and its close
record sets that flow run's final state. The dead controller's task runs
left unfinished end Crashed. If the journal was shipped already (its flow
run closed Crashed by a flush), the flow run is found on the server by the
run's parameters and a new journal continues it: the final state replaces
Crashed. Neither: None (the caller opens a new record).
"""

from __future__ import annotations

import os
import socket
import uuid
from datetime import datetime, timezone
from typing import Any

from nepi_prefect.orchestration import journal as journals
from nepi_prefect.orchestration import server
from nepi_prefect.orchestration.api import PrefectAPI
from nepi_prefect.orchestration.delivery import Delivery, Target
from nepi_prefect.orchestration.events import crashed

TAKEN_OVER = "its controller died; attach took the run over"


def continued(exp_id: str, run_id: str, target: Target) -> Delivery | None:
    """A Delivery that continues the record of run ``exp_id``/``run_id``, or None."""
    adopted = _orphan(exp_id, run_id)
    if adopted is not None:
        journal, contents = adopted
        found = Target.from_header(contents.header)
        if found.api_url == target.api_url:  # credentials are never journaled: ours
            found.api_key, found.auth_string = target.api_key, target.auth_string
        delivery = Delivery(journal, found, contents)
        _end_unfinished(delivery, contents)
        return delivery
    flow_run = _shipped(exp_id, run_id, target)
    if flow_run is None:
        return None
    header = {**target.header(), "flow_run_name": flow_run["name"], "pid": os.getpid(),
              "host": socket.gethostname()}
    journal = journals.Journal.create(uuid.uuid4().hex, header)
    ids = {"flow_run_id": flow_run["id"], "flow_id": flow_run.get("flow_id")}
    journal.write({"k": "flow", **ids})
    journal.sync()
    return Delivery(journal, Target.from_header(header),
                    journals.Contents(header=header, flow=ids))


def _orphan(exp_id: str, run_id: str) -> tuple[journals.Journal, journals.Contents] | None:
    for path in journals.pending():
        contents = journals.read(path)
        if contents is None or not _same_run(contents.header.get("parameters"), exp_id, run_id):
            continue
        adopted = journals.Journal.adopt(path)
        if adopted is not None and adopted[1].closing is None:
            return adopted
        if adopted is not None:   # closed by its own controller: not ours to continue
            adopted[0].release()
    return None


def _same_run(parameters: Any, exp_id: str, run_id: str) -> bool:
    return isinstance(parameters, dict) and parameters.get("exp_id") == exp_id \
        and parameters.get("run_id") == run_id


def _end_unfinished(delivery: Delivery, contents: journals.Contents) -> None:
    """The dead controller's task runs that never ended: Crashed, as replay does."""
    last: dict[str, dict[str, Any]] = {}
    for _, event in contents.events:
        last[event["resource"]["prefect.resource.id"]] = event
    now = datetime.now(timezone.utc)
    for event in last.values():
        ended = crashed(event, now, TAKEN_OVER)
        if ended is not None:
            delivery.add_event(ended)


def _shipped(exp_id: str, run_id: str, target: Target) -> dict[str, Any] | None:
    """The run's flow run on the server (newest), found by its tag and parameters."""
    api = PrefectAPI(target.api_url or server.api_url(), api_key=target.api_key,
                     auth_string=target.auth_string)
    try:
        runs = api.flow_runs_tagged(exp_id)
    finally:
        api.close()
    return next((r for r in runs if _same_run(r.get("parameters"), exp_id, run_id)), None)
