"""From engine action runs to Prefect task-run events and log records.

Prefect's client-side task engine records a task run by emitting one
``prefect.task-run.<State>`` event per state change; the server's task-run
recorder turns those into task runs and states. We emit the very same events,
built as plain dicts (no pydantic on the hot path) with the payload of
``prefect.utilities.engine.emit_task_run_state_change_event`` and the
``flow-run`` related resource that Prefect's events worker would take from
the run context.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from nepi_prefect.execution.recording import ActionRun, ResourceChange, RunState

#: RunState -> (Prefect state type, Prefect state name)
STATES: dict[RunState, tuple[str, str]] = {
    RunState.PENDING: ("PENDING", "Pending"),
    RunState.SCHEDULED: ("SCHEDULED", "Scheduled"),
    RunState.RUNNING: ("RUNNING", "Running"),
    RunState.COMPLETED: ("COMPLETED", "Completed"),
    RunState.FAILED: ("FAILED", "Failed"),
    RunState.CANCELLED: ("CANCELLED", "Cancelled"),
}


@dataclass(frozen=True, slots=True)
class Snapshot:
    """An :class:`ActionRun` as it was when the engine reported it."""

    id: uuid.UUID
    name: str
    kind: str
    rtype: str
    state: RunState
    upstream: tuple[uuid.UUID, ...]
    created_at: datetime
    scheduled_for: datetime | None
    started_at: datetime | None
    ended_at: datetime | None
    message: str
    at: datetime            # when the engine reported it (UTC)
    resource: str = ""      # the RM's human name (empty for a barrier)

    @classmethod
    def of(cls, run: ActionRun) -> "Snapshot":
        return cls(run.id, run.name, run.kind, run.rtype, run.state,
                   tuple(up.id for up in run.upstream), run.created_at, run.scheduled_for,
                   run.started_at, run.ended_at, run.message, datetime.now(timezone.utc),
                   run.resource_name)

    @property
    def tags(self) -> list[str]:
        """What a task run can be filtered by in the UI: its action, rtype and resource."""
        tags = [f"action:{self.kind}", f"rtype:{self.rtype}"]
        return tags + [f"resource:{self.resource}"] if self.resource else tags


def utc(moment: datetime | None) -> datetime | None:
    """The engine stamps naive local times; Prefect wants aware UTC ones."""
    if moment is None:
        return None
    return moment.astimezone(timezone.utc)


def iso(moment: datetime | None) -> str | None:
    return None if moment is None else utc(moment).isoformat()


class TaskRunEvents:
    """Builds the state-change events of the task runs of one flow run."""

    def __init__(self, tags: list[str]):
        self.tags = sorted(tags)
        #: last (state type, state name, message, details, timestamp) per task run
        self._last: dict[uuid.UUID, tuple[str, str, str, dict[str, Any], datetime]] = {}

    def event(self, snap: Snapshot) -> dict[str, Any]:
        """The ``prefect.task-run.<State>`` event for this change of ``snap``; its
        ``related`` resources (the flow run) are added when it is shipped."""
        state_type, state_name = STATES[snap.state]
        when = self._timestamp(snap)
        details: dict[str, Any] = {}
        if snap.state == RunState.SCHEDULED and snap.scheduled_for is not None:
            details["scheduled_time"] = iso(snap.scheduled_for)
        previous = self._last.get(snap.id)
        self._last[snap.id] = (state_type, state_name, snap.message, details, when)
        message = snap.message if snap.state.is_final else ""
        return {
            "id": str(uuid.uuid4()),
            "occurred": when.isoformat(),
            "event": f"prefect.task-run.{state_name}",
            "resource": {
                "prefect.resource.id": f"prefect.task-run.{snap.id}",
                "prefect.resource.name": snap.name,
                "prefect.run-count": "1" if snap.started_at else "0",
                "prefect.state-message": message,
                "prefect.state-name": state_name,
                "prefect.state-timestamp": when.isoformat(),
                "prefect.state-type": state_type,
                "prefect.orchestration": "client",
            },
            "payload": {
                "intended": {"from": previous[0] if previous else None, "to": state_type},
                "initial_state": _state_payload(*previous[:4]) if previous else None,
                "validated_state": {**_state_payload(state_type, state_name, message, details),
                                    "data": None},
                "task_run": self._task_run(snap),
            },
        }

    def _timestamp(self, snap: Snapshot) -> datetime:
        """The state's time: the engine's own stamp where it has one, kept increasing
        per task run so the server (which keeps the newest state) never goes back."""
        stamp = {RunState.PENDING: snap.created_at, RunState.RUNNING: snap.started_at}.get(
            snap.state, snap.ended_at if snap.state.is_final else None)
        when = utc(stamp) or snap.at
        previous = self._last.get(snap.id)
        if previous is not None and when <= previous[4]:
            when = previous[4] + _TICK
        return when

    def _task_run(self, snap: Snapshot) -> dict[str, Any]:
        task_run: dict[str, Any] = {
            "name": snap.name,
            "task_key": f"nepi-{snap.kind}-{snap.rtype}",
            # the server upserts task runs by (flow run, task_key, dynamic_key)
            "dynamic_key": str(snap.id),
            "empirical_policy": {"max_retries": 0, "retry_delay_seconds": 0.0},
            "tags": sorted({*self.tags, *snap.tags}),
            "labels": {},
            "task_inputs": {"wait_for": [{"input_type": "task_run", "id": str(up)}
                                         for up in snap.upstream]} if snap.upstream else {},
            "run_count": 1 if snap.started_at else 0,
            "flow_run_run_count": 1,
            "expected_start_time": iso(snap.scheduled_for or snap.created_at),
            "total_run_time": 0.0,
        }
        if snap.scheduled_for is not None:
            task_run["next_scheduled_start_time"] = iso(snap.scheduled_for)
        if snap.started_at is not None:
            task_run["start_time"] = iso(snap.started_at)
            end = snap.ended_at or snap.at
            task_run["total_run_time"] = max(0.0, (utc(end) - utc(snap.started_at)).total_seconds())
        if snap.ended_at is not None and snap.state.is_final:
            task_run["end_time"] = iso(snap.ended_at)
        return task_run


_TICK = timedelta(microseconds=1)


def _state_payload(state_type: str, name: str, message: str,
                   details: dict[str, Any]) -> dict[str, Any]:
    return {"type": state_type, "name": name, "message": message, "state_details": details}


def related(flow_run_id: uuid.UUID, flow_id: uuid.UUID | None,
            tags: list[str]) -> list[dict[str, str]]:
    """The resources an event of this flow run's task runs relates to, as Prefect's
    events worker would take them from the run context."""
    found = [{"prefect.resource.id": f"prefect.flow-run.{flow_run_id}",
              "prefect.resource.role": "flow-run"}]
    if flow_id is not None:
        found.append({"prefect.resource.id": f"prefect.flow.{flow_id}",
                      "prefect.resource.role": "flow"})
    return found + [{"prefect.resource.id": f"prefect.tag.{tag}", "prefect.resource.role": "tag"}
                    for tag in sorted(tags)]


def crashed(last: dict[str, Any], when: datetime, message: str) -> dict[str, Any] | None:
    """The event that ends a task run left unfinished (its last event ``last``) as
    Crashed; None if it had ended."""
    resource = last["resource"]
    if not last["event"].startswith("prefect.task-run.") or \
            resource["prefect.state-type"] not in ("PENDING", "SCHEDULED", "RUNNING"):
        return None
    stamp = max(when, datetime.fromisoformat(resource["prefect.state-timestamp"]) + _TICK)
    previous = last["payload"]["validated_state"]
    task_run = {**last["payload"]["task_run"], "end_time": stamp.isoformat()}
    return {
        **last,
        "id": str(uuid.uuid4()),
        "occurred": stamp.isoformat(),
        "event": "prefect.task-run.Crashed",
        "resource": {**resource, "prefect.state-message": message,
                     "prefect.state-name": "Crashed", "prefect.state-type": "CRASHED",
                     "prefect.state-timestamp": stamp.isoformat()},
        "payload": {
            "intended": {"from": previous["type"], "to": "CRASHED"},
            "initial_state": {k: v for k, v in previous.items() if k != "data"},
            "validated_state": {**_state_payload("CRASHED", "Crashed", message, {}),
                                "data": None},
            "task_run": task_run,
        },
    }


def log_record(task_run_id: uuid.UUID | None, logger: str,
               level: int, message: str, at: datetime) -> dict[str, Any]:
    """A Prefect log record (``LogCreate``) as JSON, but its ``flow_run_id`` (added
    when it is shipped)."""
    record = {"name": logger, "level": level, "message": message,
              "timestamp": at.isoformat()}
    if task_run_id is not None:
        record["task_run_id"] = str(task_run_id)
    return record


# -- nepi's own events, for Prefect automations ------------------------------------------------
def resource_id(exp_id: str, run_id: str, guid: int) -> str:
    """The Prefect resource id of one RM of one run: ``nepi.resource.<exp>.<run>.<guid>``."""
    return f"nepi.resource.{exp_id}.{run_id}.{guid}"


def resource_event(change: ResourceChange, exp_id: str, run_id: str) -> dict[str, Any]:
    """``nepi.resource.<state>`` (e.g. ``nepi.resource.failed``) for an RM's state change;
    the experiment, the run and the task run are its related resources."""
    payload: dict[str, Any] = {"state": change.state, "resource": change.name,
                               "rtype": change.rtype, "guid": change.guid}
    if change.failure:
        payload["failure"] = change.failure
    return _nepi_event(f"nepi.resource.{change.state.lower()}", change, exp_id, run_id,
                       {"prefect.resource.id": resource_id(exp_id, run_id, change.guid)},
                       payload)


def metric_events(change: ResourceChange, exp_id: str, run_id: str) -> list[dict[str, Any]]:
    """One ``nepi.metric`` per numeric metric of the RM: its name and value in the
    payload and the resource's labels; the RM, experiment and run are related."""
    rm = resource_id(exp_id, run_id, change.guid)
    return [_nepi_event("nepi.metric", change, exp_id, run_id,
                        {"prefect.resource.id": f"{rm}.metric.{name}", "nepi.metric": name,
                         "nepi.value": str(value)},
                        {"metric": name, "value": value, "resource": change.name,
                         "rtype": change.rtype, "guid": change.guid},
                        [{"prefect.resource.id": rm, "prefect.resource.role": "nepi-resource",
                          "prefect.resource.name": change.name}])
            for name, value in sorted(change.metrics.items())
            if isinstance(value, (int, float)) and not isinstance(value, bool)]


def _nepi_event(name: str, change: ResourceChange, exp_id: str, run_id: str,
                resource: dict[str, str], payload: dict[str, Any],
                extra: list[dict[str, str]] | None = None) -> dict[str, Any]:
    related = [*(extra or []),
               {"prefect.resource.id": f"nepi.experiment.{exp_id}",
                "prefect.resource.role": "nepi-experiment", "prefect.resource.name": exp_id},
               {"prefect.resource.id": f"nepi.run.{exp_id}.{run_id}",
                "prefect.resource.role": "nepi-run", "prefect.resource.name": run_id}]
    if change.run_id is not None:
        related.append({"prefect.resource.id": f"prefect.task-run.{change.run_id}",
                        "prefect.resource.role": "task-run"})
    return {
        "id": str(uuid.uuid4()),
        "occurred": (utc(change.at) or datetime.now(timezone.utc)).isoformat(),
        "event": name,
        "resource": {"prefect.resource.name": change.name, "nepi.rtype": change.rtype,
                     "nepi.guid": str(change.guid), "nepi.experiment": exp_id, **resource},
        "related": related,
        "payload": payload,
    }
