"""Resource managers (RMs): the objects that drive one resource each.

An RM subclass sets ``_rtype``, registers its attributes and traces in the
``_register_attributes`` / ``_register_traces`` classmethods, and is
decorated with :func:`clsinit_copy`. It overrides ``deploy``/``start``/
``stop``/``release`` (NEPI's 2013 style) or ``do_deploy``/``do_start``/...
(NEPI 3 style) and lets the base class move the state. While it waits for a
neighbour it reschedules itself: ``self.ec.schedule(reschedule_delay, self.deploy)``.
"""

from __future__ import annotations

import copy
import functools
import importlib.metadata
import logging
import threading
import traceback
from datetime import datetime
from typing import TYPE_CHECKING, Any, Callable, Iterable

from nepi_prefect.execution.attribute import Attribute, Flags, Types
from nepi_prefect.execution.errors import (
    InvalidInputError,
    UnknownAttributeError,
    UnknownResourceTypeError,
    UnknownTraceError,
    listing,
)
from nepi_prefect.execution.trace import Trace, TraceAttr
from nepi_prefect.util.timefuncs import tnow

if TYPE_CHECKING:
    from nepi_prefect.execution.ec import ExperimentController

#: how long an RM waits before it checks again for a neighbour
reschedule_delay = "0.5s"


class ResourceAction:
    """Actions a condition can gate."""

    DEPLOY = 0
    START = 1
    STOP = 2


ResourceAction2str = {0: "DEPLOY", 1: "START", 2: "STOP"}


class ResourceState:
    """Life cycle states, ordered: a larger number is further along."""

    NEW = 0
    DISCOVERED = 1
    PROVISIONED = 2
    READY = 3
    STARTED = 4
    STOPPED = 5
    FINISHED = 6
    FAILED = 7
    RELEASED = 8


ResourceState2str = {
    ResourceState.NEW: "NEW",
    ResourceState.DISCOVERED: "DISCOVERED",
    ResourceState.PROVISIONED: "PROVISIONED",
    ResourceState.READY: "READY",
    ResourceState.STARTED: "STARTED",
    ResourceState.STOPPED: "STOPPED",
    ResourceState.FINISHED: "FINISHED",
    ResourceState.FAILED: "FAILED",
    ResourceState.RELEASED: "RELEASED",
}

#: the time stamp attribute each state sets
STATE_TIME_ATTR = {
    ResourceState.DISCOVERED: "_discover_time",
    ResourceState.PROVISIONED: "_provision_time",
    ResourceState.READY: "_ready_time",
    ResourceState.STARTED: "_start_time",
    ResourceState.STOPPED: "_stop_time",
    ResourceState.FINISHED: "_finish_time",
    ResourceState.FAILED: "_failed_time",
    ResourceState.RELEASED: "_release_time",
}


def clsinit(cls):
    """Class decorator: give ``cls`` fresh attribute and trace templates."""
    cls._clsinit()
    return cls


def clsinit_copy(cls):
    """Class decorator: inherit the parent's attributes and traces, then add ``cls``'s."""
    cls._clsinit_copy()
    return cls


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


@clsinit
class ResourceManager:
    """Base class of every resource manager.

    :param ec: the experiment controller that owns the RM
    :param guid: the RM's id in that experiment
    """

    _rtype = "Resource"
    _help = "The base resource manager."
    _platform = ""
    _backend = ""
    _attributes: dict[str, Attribute] = {}
    _traces: dict[str, Trace] = {}
    #: True for RMs that reach FINISHED on their own (applications); False for
    #: those that stay up until stopped or released (nodes, captures, collectors)
    _finishes_by_itself = False

    # -- class templates -------------------------------------------------
    @classmethod
    def _register_attribute(cls, attr: Attribute) -> None:
        cls._attributes[attr.name] = attr

    @classmethod
    def _remove_attribute(cls, name: str) -> None:
        cls._attributes.pop(name, None)

    @classmethod
    def _register_trace(cls, trace: Trace) -> None:
        cls._traces[trace.name] = trace

    @classmethod
    def _remove_trace(cls, name: str) -> None:
        cls._traces.pop(name, None)

    @classmethod
    def _register_attributes(cls) -> None:
        cls._register_attribute(Attribute(
            "critical",
            "When a critical resource fails, the whole experiment fails and is released.",
            type=Types.Bool, default=True, flags=Flags.Design))

    @classmethod
    def _register_traces(cls) -> None:
        pass

    @classmethod
    def _clsinit(cls) -> None:
        cls._attributes = {}
        cls._register_attributes()
        cls._traces = {}
        cls._register_traces()

    @classmethod
    def _clsinit_copy(cls) -> None:
        cls._attributes = {n: copy.copy(a) for n, a in cls._attributes.items()}
        cls._register_attributes()
        cls._traces = {n: copy.copy(t) for n, t in cls._traces.items()}
        cls._register_traces()

    @classmethod
    def get_rtype(cls) -> str:
        return cls._rtype

    @classmethod
    def get_help(cls) -> str:
        return cls._help or (cls.__doc__ or "").strip()

    @classmethod
    def get_platform(cls) -> str:
        return cls._platform or cls._backend

    get_backend = get_platform

    @classmethod
    def finishes_by_itself(cls) -> bool:
        """Whether an experiment waiting for its end should wait for this RM."""
        return cls._finishes_by_itself

    @classmethod
    def get_attributes(cls) -> list[Attribute]:
        """The attribute definitions of this type (values live on instances)."""
        return list(cls._attributes.values())

    @classmethod
    def get_attribute(cls, name: str) -> Attribute:
        try:
            return cls._attributes[name]
        except KeyError:
            raise UnknownAttributeError(
                f"{cls._rtype} has no attribute {name!r}; its attributes are: "
                f"{listing(cls._attributes)}") from None

    @classmethod
    def get_traces(cls) -> list[Trace]:
        return list(cls._traces.values())

    @classmethod
    @functools.cache  # per class; get_connected() asks on every poll of a waiting RM
    def _rtype_chain(cls) -> frozenset[str]:
        """This type's rtype and those of its RM base classes."""
        return frozenset(k._rtype for k in cls.__mro__ if isinstance(k, type)
                         and issubclass(k, ResourceManager))

    # -- instance ----------------------------------------------------------
    def __init__(self, ec: "ExperimentController", guid: int):
        self._guid = guid
        self._ec = ec
        self._connections: set[int] = set()
        self._conditions: dict[int, list[tuple[list[int], int, str | None]]] = {}
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
        self._rm_state = ResourceState.NEW
        self._discover_time: datetime | None = None
        self._provision_time: datetime | None = None
        self._ready_time: datetime | None = None
        self._start_time: datetime | None = None
        self._stop_time: datetime | None = None
        self._finish_time: datetime | None = None
        self._failed_time: datetime | None = None
        self._release_time: datetime | None = None
        self._state_lock = threading.RLock()
        self._logger = logging.getLogger(f"nepi_prefect.resources.{self._rtype}")

    @property
    def guid(self) -> int:
        return self._guid

    @property
    def ec(self) -> "ExperimentController":
        return self._ec

    @property
    def connections(self) -> set[int]:
        return self._connections

    @property
    def conditions(self) -> dict[int, list[tuple[list[int], int, str | None]]]:
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
    def discover_time(self) -> datetime | None: return self._discover_time
    @property
    def provision_time(self) -> datetime | None: return self._provision_time
    @property
    def ready_time(self) -> datetime | None: return self._ready_time
    @property
    def start_time(self) -> datetime | None: return self._start_time
    @property
    def stop_time(self) -> datetime | None: return self._stop_time
    @property
    def finish_time(self) -> datetime | None: return self._finish_time
    @property
    def failed_time(self) -> datetime | None: return self._failed_time
    @property
    def release_time(self) -> datetime | None: return self._release_time

    def state_time(self, state: int) -> datetime | None:
        """When the RM reached ``state``, or a later state if it skipped it."""
        stamp = getattr(self, STATE_TIME_ATTR.get(state, ""), None)
        if stamp is not None:
            return stamp
        later = [getattr(self, STATE_TIME_ATTR[s]) for s in STATE_TIME_ATTR
                 if s > state and s != ResourceState.FAILED]
        later = [t for t in later if t is not None]
        return min(later) if later else None

    def set_state(self, state: int, state_time_attr: str | None = None,
                  time: datetime | None = None) -> None:
        """Move to ``state`` and stamp its time; the EC is told at once."""
        if state not in ResourceState2str:
            raise InvalidInputError(
                f"unknown state {state!r}; valid: {listing(ResourceState2str.values())}")
        with self._state_lock:
            if self._rm_state == ResourceState.RELEASED and state != ResourceState.RELEASED:
                return  # nothing moves a released RM again
            attr = state_time_attr or STATE_TIME_ATTR.get(state)
            if attr:
                setattr(self, attr, time or tnow())
            self._rm_state = state
        self._ec._state_changed(self)

    def set_discovered(self, time=None): self.set_state(ResourceState.DISCOVERED, time=time)
    def set_provisioned(self, time=None): self.set_state(ResourceState.PROVISIONED, time=time)
    def set_ready(self, time=None): self.set_state(ResourceState.READY, time=time)
    def set_started(self, time=None): self.set_state(ResourceState.STARTED, time=time)
    def set_stopped(self, time=None): self.set_state(ResourceState.STOPPED, time=time)
    def set_finished(self, time=None): self.set_state(ResourceState.FINISHED, time=time)
    def set_failed(self, time=None): self.set_state(ResourceState.FAILED, time=time)
    def set_released(self, time=None): self.set_state(ResourceState.RELEASED, time=time)

    # -- attributes ----------------------------------------------------------
    def has_attribute(self, name: str) -> bool:
        return name in self._attributes

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
            self._ec._secrets.add(str(value))
        return value

    @property
    def is_deployed(self) -> bool:
        """Whether a deploy took this RM in (its Design attributes are frozen)."""
        return self.deployment_group is not None or self._rm_state > ResourceState.NEW

    def attribute_values(self, only_set: bool = True) -> dict[str, Any]:
        """Attribute values by name: those set explicitly, or all of them."""
        if only_set:
            return dict(self._values)
        return {name: self._values.get(name, a.default) for name, a in self._attributes.items()}

    def get_metrics(self) -> dict[str, float]:
        """Figures this RM measured (empty unless a measurement RM filled them)."""
        return dict(self._metrics)

    # -- traces ----------------------------------------------------------------
    def get_trace(self, name: str) -> Trace:
        try:
            return self._traces[name]
        except KeyError:
            raise UnknownTraceError(
                f"{self._rtype} has no trace {name!r}; its traces are: {listing(self._traces)}"
            ) from None

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
        group = [group] if isinstance(group, int) else list(group)
        self._conditions.setdefault(action, []).append((group, state, time))

    def unregister_condition(self, group: int | Iterable[int], action: int | None = None) -> None:
        """Drop the conditions on ``group`` (for ``action`` only, if given)."""
        group = {group} if isinstance(group, int) else set(group)
        for act, conds in list(self._conditions.items()):
            if action is not None and act != action:
                continue
            kept = [c for c in conds if not set(c[0]) & group]
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
        if self._rm_state in (ResourceState.FAILED, ResourceState.RELEASED):
            return
        self.do_deploy()

    def start(self) -> None:
        if self._rm_state not in (ResourceState.READY, ResourceState.STOPPED):
            self.error(f"cannot start from state {ResourceState2str[self._rm_state]}")
            return
        self.do_start()

    def stop(self) -> None:
        if self._rm_state != ResourceState.STARTED:
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
        if self._rm_state < ResourceState.DISCOVERED:
            self.discover()
        if self._rm_state < ResourceState.PROVISIONED:
            self.provision()
        if self._rm_state < ResourceState.READY:
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
        self._ec._log_for(self, level, text)

    def debug(self, msg, out=None, err=None): self._log(logging.DEBUG, msg, out, err)
    def info(self, msg, out=None, err=None): self._log(logging.INFO, msg, out, err)
    def warning(self, msg, out=None, err=None): self._log(logging.WARNING, msg, out, err)
    warn = warning
    def error(self, msg, out=None, err=None): self._log(logging.ERROR, msg, out, err)

    def __repr__(self) -> str:
        return f"<{self._rtype} guid={self._guid} {ResourceState2str.get(self._rm_state)}>"


class ResourceFactory:
    """The registry of resource types, by rtype name.

    Types come from the entry-point group ``nepi_prefect.resources`` (the
    built-ins are declared there too) and from :meth:`register_type`.
    Entry points are loaded lazily, the first time a type is looked up.
    """

    ENTRY_POINT_GROUP = "nepi_prefect.resources"
    _resource_types: dict[str, type[ResourceManager]] = {}
    _entry_points: dict[str, importlib.metadata.EntryPoint] | None = None
    _lock = threading.Lock()

    @classmethod
    def register_type(cls, rclass: type[ResourceManager]) -> None:
        cls._resource_types[rclass.get_rtype()] = rclass

    @classmethod
    def _discovered(cls) -> dict[str, importlib.metadata.EntryPoint]:
        if cls._entry_points is None:
            with cls._lock:
                if cls._entry_points is None:
                    eps = importlib.metadata.entry_points(group=cls.ENTRY_POINT_GROUP)
                    cls._entry_points = {ep.name: ep for ep in eps}
        return cls._entry_points

    @classmethod
    def _load(cls, rtype: str) -> type[ResourceManager] | None:
        ep = cls._discovered().get(rtype)
        if ep is None:
            return None
        try:
            rclass = ep.load()
        except Exception as exc:  # a broken plugin must not break the others
            logging.getLogger("nepi_prefect").warning(
                "resource type %s (%s) could not be loaded: %s", rtype, ep.value, exc)
            return None
        cls._resource_types.setdefault(rtype, rclass)
        return rclass

    @classmethod
    def get_resource_type(cls, rtype: str) -> type[ResourceManager]:
        rclass = cls._resource_types.get(rtype) or cls._load(rtype)
        if rclass is None:
            raise UnknownResourceTypeError(
                f"unknown resource type {rtype!r}; known types: {listing(cls.resource_types())}")
        return rclass

    @classmethod
    def resource_types(cls) -> dict[str, type[ResourceManager]]:
        """Every known type, loading all entry points."""
        for name in cls._discovered():
            if name not in cls._resource_types:
                cls._load(name)
        return dict(cls._resource_types)

    @classmethod
    def create(cls, rtype: str, ec: "ExperimentController", guid: int) -> ResourceManager:
        return cls.get_resource_type(rtype)(ec, guid)


def populate_factory() -> None:
    """Load every installed resource type (NEPI API)."""
    ResourceFactory.resource_types()
