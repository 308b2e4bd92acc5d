"""What a resource type declares, as a class: its rtype, help, platform,
attribute and trace templates, and NEPI's ``clsinit``/``clsinit_copy`` decorators.

Values live on RM instances (:mod:`nepi_prefect.execution.resource`); the
definitions of attributes and traces live here, on the class.
"""

from __future__ import annotations

import copy
import functools
from typing import Any

from nepi_prefect.execution.attribute import Attribute
from nepi_prefect.execution.errors import UnknownAttributeError, UnknownTraceError, listing
from nepi_prefect.execution.trace import Trace


def clsinit(cls):
    """Class decorator: give ``cls`` fresh attribute and trace templates."""
    cls._clsinit()
    return cls


def clsinit_copy(cls):
    """Class decorator: inherit the parent's attributes and traces, then add ``cls``'s."""
    cls._clsinit_copy()
    return cls


class ResourceType:
    """The class side of a resource manager: what the type is and what it offers."""

    _rtype = "Resource"
    _help = "The base resource manager."
    _platform = ""
    _backend = ""
    _attributes: dict[str, Attribute] = {}
    _traces: dict[str, Trace] = {}
    #: True for RMs that reach FINISHED on their own (applications); False for
    #: those that stay up until stopped or released (nodes, captures, collectors)
    _finishes_by_itself = False
    #: rtypes (or base rtypes) this type may be connected to; None: anything (the
    #: default, so NEPI-style RMs that declare nothing keep connecting freely).
    #: A type that declares a list refuses other declaring types not on it.
    _connects_to: tuple[str, ...] | None = None
    #: at most this many connections to RMs of an rtype (or a subtype), e.g. {"LinuxNode": 1}
    _connects_at_most: dict[str, int] = {}
    #: String attributes the RM splits into shell words: an unbalanced quote is refused at set
    _shell_word_attributes: tuple[str, ...] = ()
    #: attributes or properties the run-state file records (host, home, run directory)
    _run_state_fields: tuple[str, ...] = ()

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
        """Declare the type's attributes (override, calling ``_register_attribute``)."""

    @classmethod
    def _register_traces(cls) -> None:
        """Declare the type's traces (override, calling ``_register_trace``)."""

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

    def run_state(self) -> dict[str, Any]:
        """What a later process needs to find this RM's leftovers on its host (the
        run-state file records it): the ``_run_state_fields`` that have a value now.
        Override to report more."""
        out = {}
        for name in self._run_state_fields:
            try:
                value = self.get(name) if self.has_attribute(name) else getattr(self, name)
            except Exception:  # not known yet (a home before deploy)
                continue
            if value not in (None, ""):
                out[name] = value
        return out

    def reattach(self, record: dict[str, Any]) -> bool:
        """Take up this RM where a controller that died left it (``attach``; ``record``
        is its entry in the run-state file, its state and times already restored).
        True if it follows what it was doing (a running app watched again); the base
        follows nothing, so a STARTED RM of a type that does not override this FAILS."""
        return False

    def lost_results(self) -> list[str]:
        """What this RM failed to write into the run directory, one line each (a trace
        it could not collect, say). The summary lists them and marks the run INCOMPLETE."""
        return []

    @classmethod
    def connects_to(cls) -> tuple[str, ...] | None:
        """The rtypes this type may be connected to (None: any)."""
        return cls._connects_to

    @classmethod
    def accepts_connection(cls, other: type["ResourceType"]) -> bool:
        """Whether an RM of this type may be connected to one of ``other``.

        A type without a declaration accepts anything and is accepted by anything,
        so third-party RMs written for NEPI keep working.
        """
        mine, theirs = cls.connects_to(), other.connects_to()
        if mine is None or theirs is None:
            return True
        return bool(set(mine) & other._rtype_chain())

    @classmethod
    def connection_limits(cls) -> dict[str, int]:
        """At most how many RMs of each rtype this type may be connected to."""
        return dict(cls._connects_at_most)

    @classmethod
    def limited_rtype(cls, other: type["ResourceType"]) -> str | None:
        """The rtype of ``_connects_at_most`` that ``other`` falls under, if any."""
        return next((r for r in cls._connects_at_most if r in other._rtype_chain()), None)

    @classmethod
    def connection_limit(cls, other: type["ResourceType"]) -> int | None:
        """How many RMs like ``other`` this type may be connected to (None: no limit)."""
        rtype = cls.limited_rtype(other)
        return None if rtype is None else cls._connects_at_most[rtype]

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
    def has_attribute(cls, name: str) -> bool:
        return name in cls._attributes

    @classmethod
    def get_traces(cls) -> list[Trace]:
        return list(cls._traces.values())

    @classmethod
    def get_trace(cls, name: str) -> Trace:
        try:
            return cls._traces[name]
        except KeyError:
            raise UnknownTraceError(
                f"{cls._rtype} has no trace {name!r}; its traces are: {listing(cls._traces)}"
            ) from None

    @classmethod
    @functools.cache  # per class; get_connected() asks on every poll of a waiting RM
    def _rtype_chain(cls) -> frozenset[str]:
        """This type's rtype and those of its RM base classes."""
        return frozenset(k._rtype for k in cls.__mro__ if isinstance(k, type)
                         and issubclass(k, ResourceType))
