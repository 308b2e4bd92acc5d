"""What the engine tells a recorder about an experiment run.

The engine describes each RM action (deploy, start, stop, release) as an
:class:`ActionRun` and reports every change of it to a :class:`Recorder`.
The Prefect bridge (``nepi_prefect.orchestration``) is the default recorder:
an experiment is a flow run, an action run is a task run. The engine itself
imports nothing of Prefect; it finds the default recorder by name, among the
entry points of the group ``nepi_prefect.recorders`` (see :func:`default_recorder`).

Recorder calls come from dispatcher threads and must not block: a recorder
queues what it is told and ships it in the background. Only :meth:`Recorder.close`
may block, until the record is complete.
"""

from __future__ import annotations

import enum
import logging
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from nepi_prefect import settings
from nepi_prefect.execution.errors import InvalidInputError, listing
from nepi_prefect.execution.experiment import Experiment
from nepi_prefect.execution.states import ActionKind


class RunState(str, enum.Enum):
    """Where an action run stands. Mirrors Prefect's state types."""

    PENDING = "PENDING"      # planned, waiting on its conditions or group barrier
    SCHEDULED = "SCHEDULED"  # conditions hold; runs at ``scheduled_for``
    RUNNING = "RUNNING"      # the RM is working towards the target state
    COMPLETED = "COMPLETED"  # the RM reached the target state
    FAILED = "FAILED"        # the RM FAILED
    CANCELLED = "CANCELLED"  # never ran: the RM failed or was released first

    @property
    def is_final(self) -> bool:
        return self in (RunState.COMPLETED, RunState.FAILED, RunState.CANCELLED)


@dataclass(eq=False)
class ActionRun:
    """One action of one RM, as a unit the recorder can show (a task run)."""

    kind: ActionKind          # deploy, start, stop, release or barrier (a str)
    guid: int
    rtype: str
    upstream: list["ActionRun"] = field(default_factory=list)
    id: uuid.UUID = field(default_factory=uuid.uuid4)
    state: RunState = RunState.PENDING
    created_at: datetime = field(default_factory=datetime.now)
    scheduled_for: datetime | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    message: str = ""
    #: "condition" or "barrier" for each upstream run, by upstream id
    edge_kinds: dict[uuid.UUID, str] = field(default_factory=dict)
    #: the RM's human name (e.g. ``client``); empty for a barrier
    resource_name: str = ""

    @property
    def name(self) -> str:
        """``<action>-<resource name>``, e.g. ``start-client`` (``start-LinuxApplication-3``
        for an RM registered without a name; ``barrier-group-1`` for a barrier)."""
        return f"{self.kind}-{self.resource_name or f'{self.rtype}-{self.guid}'}"

    def __repr__(self) -> str:
        return f"ActionRun({self.name}, {self.state.value})"


@dataclass(frozen=True, slots=True)
class ResourceChange:
    """An RM reached a new state: what a recorder may show or announce of it."""

    guid: int
    name: str
    rtype: str
    state: str                     # the state's name: STARTED, FAILED, ...
    at: datetime
    #: the run the RM was working on (its state change is logged there), if any
    run_id: uuid.UUID | None = None
    failure: str | None = None     # why, when FAILED
    #: what it measured and the local paths of its collected traces (once RELEASED)
    metrics: dict[str, Any] = field(default_factory=dict)
    traces: dict[str, str] = field(default_factory=dict)


class Recorder:
    """Receives the life of an experiment run. The base class records nothing."""

    #: log records below this level are not passed to :meth:`log`
    log_level: int = logging.INFO

    def open(self, ec: Experiment) -> None:
        """The experiment run begins (the EC was created)."""

    def reopen(self, ec: Experiment) -> None:
        """``ec`` takes over a run whose controller died (``ExperimentController.attach``):
        continue that run's record. The base opens a new one."""
        self.open(ec)

    def action_changed(self, run: ActionRun) -> None:
        """``run`` was created or changed state; read ``run.state``."""

    def log(self, run: ActionRun | None, level: int, message: str) -> None:
        """An RM (``run`` is its current action) or the EC (``run`` is None) logged."""

    def resource_changed(self, change: ResourceChange) -> None:
        """An RM changed state (called before the action runs it ends are closed)."""

    def close(self, ec: Experiment, summary: dict[str, Any]) -> None:
        """The experiment run ended (shutdown). Block until the record is complete."""

    def abandon(self, ec: Experiment, reason: str) -> None:
        """The process is exiting without ``shutdown()``; close the record as well as possible."""


#: the entry-point group where packages declare recorders, by name
RECORDER_GROUP = "nepi_prefect.recorders"
RECORDER_ENV = settings.RECORDER_ENV  # kept for callers that named it here


def recorder_names() -> list[str]:
    """The recorders that can be chosen by name: ``none`` and the entry points."""
    return sorted({"none", *(ep.name for ep in entry_points(group=RECORDER_GROUP))})


def default_recorder(choice: str | None = None) -> Recorder:
    """A new instance of the recorder named ``choice`` (default: ``$NEPI_PREFECT_RECORDER``).

    A name is ``none`` (record nothing) or an entry point of the group
    ``nepi_prefect.recorders`` (``prefect`` is the Prefect bridge). A
    third-party recorder may also be named explicitly as ``module:Class``.
    """
    choice = (choice or settings.recorder_choice()).strip()
    if choice.lower() == "none":
        return Recorder()
    found = {ep.name: ep for ep in entry_points(group=RECORDER_GROUP)}
    entry = found.get(choice) or found.get(choice.lower())
    if entry is None and ":" in choice:
        entry = EntryPoint(name=choice, value=choice, group=RECORDER_GROUP)
    if entry is None:
        raise InvalidInputError(
            f"{RECORDER_ENV}={choice!r}: no such recorder; valid: {listing(recorder_names())} "
            f"or module:Class (is the package installed? pip install -e . declares the "
            f"{RECORDER_GROUP} entry points)")
    rclass = entry.load()
    if not (isinstance(rclass, type) and issubclass(rclass, Recorder)):
        raise InvalidInputError(f"{RECORDER_ENV}={choice!r} names {rclass!r}, not a Recorder class")
    return rclass()
