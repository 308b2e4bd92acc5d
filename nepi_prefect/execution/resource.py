"""Resource managers (RMs): the objects that drive one resource each.

An RM subclass sets ``_rtype``, registers its attributes and traces in the
``_register_attributes`` / ``_register_traces`` classmethods, and is
decorated with :func:`clsinit_copy`. It overrides ``deploy``/``start``/
``stop``/``release`` (NEPI's 2013 style) or ``do_deploy``/``do_start``/...
(NEPI 3 style) and lets the base class move the state. While it waits for a
neighbour it reschedules itself: ``self.ec.schedule(reschedule_delay, self.deploy)``.
"""

from __future__ import annotations

import functools
import logging
import threading
import traceback
from datetime import datetime
from typing import Any, Callable, Iterable

from nepi_prefect.execution.attribute import Attribute, Flags, Types
from nepi_prefect.execution.conditions import Condition, as_guids
from nepi_prefect.execution.errors import InvalidInputError, listing
from nepi_prefect.execution.experiment import Experiment
from nepi_prefect.execution.factory import ResourceFactory, populate_factory
from nepi_prefect.execution.rtype import ResourceType, clsinit, clsinit_copy
from nepi_prefect.execution.states import (
    STATE_TIME_ATTR,
    STATES,
    ResourceAction,
    ResourceAction2str,
    ResourceState,
    ResourceState2str,
)
from nepi_prefect.execution.trace import TraceAttr
from nepi_prefect.util.timefuncs import tnow

__all__ = ["ResourceManager", "ResourceFactory", "ResourceState", "ResourceAction",
           "ResourceState2str", "ResourceAction2str", "STATE_TIME_ATTR", "clsinit",
           "clsinit_copy", "failtrap", "populate_factory", "reschedule_delay", "Attribute",
           "Flags", "Types", "TraceAttr"]
S = ResourceState

# The members as module globals: an enum member read off its class costs ten
# times more (Python 3.11), and these are read on every state change.
NEW, DISCOVERED, PROVISIONED, READY, STARTED, STOPPED, FINISHED, FAILED, RELEASED = ResourceState

#: how long an RM waits before it checks again for a neighbour
reschedule_delay = "0.5s"


def failtrap(func: Callable) -> Callable:
    """Mark the RM FAILED when ``func`` raises, then re-raise (NEPI 3 compatibility)."""

    @functools.wraps(func)
    def wrapped(self, *args, **kwargs):
        try:
            return func(self, *args, **kwargs)
        except Exception:
            self.error(traceback.format_exc())
            self.fail()
            raise

    return wrapped


def _stamp(state: ResourceState) -> property:
    attr = STATE_TIME_ATTR[state]
    return property(lambda self: getattr(self, attr), doc=f"When the RM became {state.name}.")


@clsinit
class ResourceManager(ResourceType):
    """Base class of every resource manager.

    :param ec: the experiment controller that owns the RM
    :param guid: the RM's id in that experiment
    """

    @classmethod
    def _register_attributes(cls) -> None:
        cls._register_attribute(Attribute(
            "critical",
            "When a critical resource fails, the whole experiment fails and is released.",
            type=Types.Bool, default=True, flags=Flags.Design))

    # -- instance ----------------------------------------------------------
    def __init__(self, ec: Experiment, guid: int):
        self._guid = guid
        self._ec = ec
        self._connections: set[int] = set()
        self._conditions: dict[int, list[Condition]] = {}
        self._values: dict[str, Any] = {}
        self._enabled_traces = {t.name for t in self._traces.values() if t.enabled}
        self.deployment_group: Any = None
        self._releasing = False
        #: local paths of traces collected for this RM, by trace name (set by a Collector)
        self.collected: dict[str, str] = {}
        #: measured figures (e.g. ping's rtt_avg_ms), filled by measurement RMs
        self._metrics: dict[str, float] = {}
        #: why the RM FAILED, in one line: set by the RM itself, or by the EC from the
        #: exception an action raised or the condition that can never hold
        self.failure: str | None = None
        self._rm_state = NEW
        for attr in STATE_TIME_ATTR.values():  # _discover_time ... _release_time
            setattr(self, attr, None)
        self._state_lock = threading.RLock()
        self._logger = logging.getLogger(f"nepi_prefect.resources.{self._rtype}")

    @property
    def guid(self) -> int:
        return self._guid

    #: set by the EC's registry when register_resource was given a name
    _name: str | None = None

    @property
    def name(self) -> str:
        """The resource's human name: the one given at registration, else ``<rtype>-<guid>``."""
        return self._name or f"{self._rtype}-{self._guid}"

    @property
    def ec(self) -> Experiment:
        return self._ec

    @property
    def connections(self) -> set[int]:
        return self._connections

    @property
    def conditions(self) -> dict[int, list[Condition]]:
        """Conditions by action: ``(group, state, time)`` triples (NEPI's shape),
        each with its delay in seconds as ``.delay``."""
        return self._conditions

    # The state. ``_state`` is a property so that NEPI RMs which assign
    # ``self._state = ...`` directly still stamp the time and notify the EC.
    @property
    def _state(self) -> int:
        return self._rm_state

    @_state.setter
    def _state(self, state: int) -> None:
        self.set_state(state)

    @property
    def state(self) -> int:
        return self._rm_state

    @property
    def recorded_state(self) -> ResourceState:
        """The state last set. Unlike :attr:`state`, which an RM may override to
        refresh itself (NEPI RMs do), reading it never does any work."""
        return self._rm_state

    @property
    def releasing(self) -> bool:
        """Whether a release of this RM was asked for (it may not be RELEASED yet)."""
        return self._releasing

    def begin_release(self) -> bool:
        """Mark the RM as releasing; False if it already was, or is RELEASED."""
        with self._state_lock:
            if self._releasing or self._rm_state == RELEASED:
                return False
            self._releasing = True
            return True

    # When the RM reached each state (None until it does): NEPI's read-only stamps.
    discover_time = _stamp(S.DISCOVERED)
    provision_time = _stamp(S.PROVISIONED)
    ready_time = _stamp(S.READY)
    start_time = _stamp(S.STARTED)
    stop_time = _stamp(S.STOPPED)
    finish_time = _stamp(S.FINISHED)
    failed_time = _stamp(S.FAILED)
    release_time = _stamp(S.RELEASED)

    def state_time(self, state: int) -> datetime | None:
        """When the RM reached ``state``, or a later state if it skipped it."""
        stamp = getattr(self, STATE_TIME_ATTR.get(state, ""), None)
        if stamp is not None:
            return stamp
        later = [getattr(self, STATE_TIME_ATTR[s]) for s in STATE_TIME_ATTR
                 if s > state and s != FAILED]
        later = [t for t in later if t is not None]
        return min(later) if later else None

    def set_state(self, state: int, state_time_attr: str | None = None,
                  time: datetime | None = None) -> None:
        """Move to ``state`` and stamp its time; the EC is told at once."""
        if state not in ResourceState2str:
            raise InvalidInputError(
                f"unknown state {state!r}; valid: {listing(ResourceState2str.values())}")
        with self._state_lock:
            if self._rm_state == RELEASED and state != RELEASED:
                return  # nothing moves a released RM again
            attr = state_time_attr or STATE_TIME_ATTR.get(state)
            if attr:
                setattr(self, attr, time or tnow())
            self._rm_state = STATES[state]
        self._ec.on_state_changed(self)

    def set_discovered(self, time=None): self.set_state(DISCOVERED, time=time)
    def set_provisioned(self, time=None): self.set_state(PROVISIONED, time=time)
    def set_ready(self, time=None): self.set_state(READY, time=time)
    def set_started(self, time=None): self.set_state(STARTED, time=time)
    def set_stopped(self, time=None): self.set_state(STOPPED, time=time)
    def set_finished(self, time=None): self.set_state(FINISHED, time=time)
    def set_failed(self, time=None): self.set_state(FAILED, time=time)
    def set_released(self, time=None): self.set_state(RELEASED, time=time)

    # -- attributes ----------------------------------------------------------
    def get(self, name: str) -> Any:
        attr = self.get_attribute(name)
        return self._values.get(name, attr.default)

    def set(self, name: str, value: Any) -> Any:
        """Validate and set an attribute; Design attributes only before deployment."""
        attr = self.get_attribute(name)
        if attr.has_flag(Flags.Design) and self.is_deployed:
            raise InvalidInputError(
                f"{self._rtype} {self._guid}: {name!r} is a Design attribute and cannot "
                f"change after deployment (state {ResourceState2str[self._rm_state]})")
        return self._set_value(attr, value)

    def _set_value(self, attr: Attribute | str, value: Any) -> Any:
        """Validate and store a value, whatever the state (for the RM's own use)."""
        if isinstance(attr, str):
            attr = self.get_attribute(attr)
        value = attr.validate(value)
        if attr.set_hook:
            value = attr.set_hook(self._values.get(attr.name, attr.default), value)
        self._values[attr.name] = value
        if attr.is_secret and value not in (None, ""):
            self._ec.register_secret(value)
        return value

    @property
    def is_deployed(self) -> bool:
        """Whether a deploy took this RM in (its Design attributes are frozen)."""
        return self.deployment_group is not None or self._rm_state > NEW

    def attribute_values(self, only_set: bool = True) -> dict[str, Any]:
        """Attribute values by name: those set explicitly, or all of them."""
        if only_set:
            return dict(self._values)
        return {name: self._values.get(name, a.default) for name, a in self._attributes.items()}

    def get_metrics(self) -> dict[str, float]:
        """Figures this RM measured (empty unless a measurement RM filled them)."""
        return dict(self._metrics)

    def facts(self) -> dict[str, Any]:
        """Facts about the environment this RM ran in, for the run's manifest.

        Empty by default. An RM type adds its own by overriding this (a node
        returns its host's kernel, interfaces, sysctls and tool versions).
        """
        return {}

    # -- traces ----------------------------------------------------------------
    @property
    def enabled_traces(self) -> set[str]:
        return set(self._enabled_traces)

    def enable_trace(self, name: str) -> None:
        self.get_trace(name)
        self._enabled_traces.add(name)

    def trace_enabled(self, name: str) -> bool:
        self.get_trace(name)
        return name in self._enabled_traces

    def trace(self, name: str, attr: str = TraceAttr.ALL, block: int = 512,
              offset: int = 0) -> Any:
        """Read a trace; the base RM has none to read."""
        return None

    # -- connections -----------------------------------------------------------
    def register_connection(self, guid: int) -> None:
        if not self.valid_connection(guid):
            other = self._ec.get_resource(guid)
            raise InvalidInputError(
                f"{self._rtype} {self._guid} cannot be connected to "
                f"{other.get_rtype()} {guid}")
        self.do_connect(guid)
        self._connections.add(guid)

    def unregister_connection(self, guid: int) -> None:
        if guid in self._connections:
            self.do_disconnect(guid)
            self._connections.discard(guid)

    def valid_connection(self, guid: int) -> bool:
        """Whether this RM may be connected to ``guid``; subclasses restrict it."""
        return True

    def do_connect(self, guid: int) -> None:
        pass

    def do_disconnect(self, guid: int) -> None:
        pass

    def get_connected(self, rtype: str | type | None = None) -> list["ResourceManager"]:
        """Connected RMs, optionally only those of ``rtype`` or a subtype of it."""
        if isinstance(rtype, type):
            rtype = rtype.get_rtype()
        found = []
        for guid in sorted(self._connections):
            rm = self._ec.get_resource(guid)
            if rtype is None or rtype in type(rm)._rtype_chain():
                found.append(rm)
        return found

    # -- conditions --------------------------------------------------------------
    def register_condition(self, action: int, group: int | Iterable[int], state: int,
                           time: str | None = None) -> None:
        """Gate ``action`` on every RM of ``group`` having reached ``state`` (+ ``time``)."""
        self.add_condition(action, Condition(group, state, time))  # the delay is parsed here

    def add_condition(self, action: int, condition: Condition) -> None:
        """Gate ``action`` on ``condition`` (already checked and parsed)."""
        if action not in ResourceAction2str or isinstance(action, bool):
            raise InvalidInputError(
                f"unknown action {action!r}; valid: {listing(ResourceAction2str.values())}")
        self._conditions.setdefault(ResourceAction(action), []).append(condition)

    def unregister_condition(self, group: int | Iterable[int], action: int | None = None) -> None:
        """Take the guids of ``group`` out of every condition (of ``action`` only, if
        given); the rest of each condition's group still counts, as in NEPI. A
        condition left with no guid is dropped."""
        drop = set(as_guids(group))
        for act, conds in list(self._conditions.items()):
            if action is not None and act != action:
                continue
            kept = [c.without(drop) for c in map(Condition.of, conds)]
            kept = [c for c in kept if c.group]
            if kept:
                self._conditions[act] = kept
            else:
                del self._conditions[act]

    def start_with_conditions(self) -> None:
        self._ec.start_with_conditions(self._guid)

    def stop_with_conditions(self) -> None:
        self._ec.stop_with_conditions(self._guid)

    def set_with_conditions(self, name: str, value: Any, group, state: int,
                            time: str | None = None) -> None:
        self._ec.set_with_conditions(name, value, self._guid, group, state, time)

    # -- actions (override these, or the do_* hooks) ---------------------------------
    def discover(self) -> None:
        self.do_discover()

    def provision(self) -> None:
        self.do_provision()

    def deploy(self) -> None:
        if self._rm_state in (FAILED, RELEASED):
            return
        self.do_deploy()

    def start(self) -> None:
        if self._rm_state not in (READY, STOPPED):
            self.error(f"cannot start from state {ResourceState2str[self._rm_state]}")
            return
        self.do_start()

    def stop(self) -> None:
        if self._rm_state != STARTED:
            self.debug(f"nothing to stop in state {ResourceState2str[self._rm_state]}")
            return
        self.do_stop()

    def release(self) -> None:
        self.do_release()

    def fail(self) -> None:
        self.do_fail()

    def finish(self) -> None:
        self.set_finished()

    def do_discover(self) -> None:
        self.set_discovered()

    def do_provision(self) -> None:
        self.set_provisioned()

    def do_deploy(self) -> None:
        if self._rm_state < DISCOVERED:
            self.discover()
        if self._rm_state < PROVISIONED:
            self.provision()
        if self._rm_state < READY:
            self.set_ready()

    def do_start(self) -> None:
        self.set_started()

    def do_stop(self) -> None:
        self.set_stopped()

    def do_release(self) -> None:
        self.set_released()

    def do_fail(self) -> None:
        self.set_failed()

    def host_report(self) -> dict[str, Any] | None:
        """How the host this RM stands for fared (reachable or why not), for the
        run's per-host accounting in the summary; None for RMs that are no host."""
        return None

    def release_after(self) -> list[int]:
        """Guids released before this RM when both are released (a node after its apps)."""
        return []

    def release_dependents(self) -> list[int]:
        """Guids that cannot outlive this RM: releasing it releases them too."""
        return []

    # -- logging -------------------------------------------------------------------
    @property
    def logger(self) -> logging.Logger:
        return self._logger

    def log_message(self, msg: str) -> str:
        return f"guid {self._guid} - {self._rtype} - {msg}"

    def _log(self, level: int, msg: str, out: str | None = None, err: str | None = None) -> None:
        text = self.log_message(msg)
        if out:
            text += f" - stdout: {out}"
        if err:
            text += f" - stderr: {err}"
        self._ec.log_for(self, level, text)

    def debug(self, msg, out=None, err=None): self._log(logging.DEBUG, msg, out, err)
    def info(self, msg, out=None, err=None): self._log(logging.INFO, msg, out, err)
    def warning(self, msg, out=None, err=None): self._log(logging.WARNING, msg, out, err)
    warn = warning
    def error(self, msg, out=None, err=None): self._log(logging.ERROR, msg, out, err)

    def __repr__(self) -> str:
        return f"<{self._rtype} guid={self._guid} {ResourceState2str.get(self._rm_state)}>"
