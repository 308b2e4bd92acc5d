"""A condition: "every RM of ``group`` reached ``state``, plus ``time``".

A :class:`Condition` is the ``(group, state, time)`` triple NEPI keeps in
``rm.conditions`` (it unpacks as one), with the delay parsed into seconds
once, when the condition is registered.
"""

from __future__ import annotations

from typing import Any, Iterable

from nepi_prefect.execution.errors import InvalidInputError, listing
from nepi_prefect.execution.states import (
    ResourceAction,
    ResourceAction2str,
    ResourceState,
    ResourceState2str,
)
from nepi_prefect.util.timefuncs import parse_delay


def delay_seconds(time: Any) -> float:
    """Seconds from a condition's ``time`` ("2s", "500ms", a number, None for 0)."""
    if time is None:
        return 0.0
    try:
        return parse_delay(time)
    except ValueError as exc:
        raise InvalidInputError(str(exc)) from None


def as_guids(guids: int | Iterable[int] | None) -> list[int]:
    """One guid, several, or None (no guid) as a list."""
    if guids is None:
        return []
    if isinstance(guids, int):
        return [guids]
    return list(guids)


class Condition(tuple):
    """``(group, state, time)``, plus :attr:`delay` (seconds) parsed from ``time``."""

    delay: float

    def __new__(cls, group: int | Iterable[int], state: int, time: Any = None,
                delay: float | None = None) -> "Condition":
        if state not in ResourceState2str or isinstance(state, bool):
            raise InvalidInputError(
                f"unknown state {state!r}; valid: {listing(ResourceState2str.values())}")
        self = super().__new__(cls, (as_guids(group), ResourceState(state), time))
        self.delay = delay_seconds(time) if delay is None else delay
        return self

    @classmethod
    def of(cls, item: Any) -> "Condition":
        """``item`` itself if it is a Condition, else one made from a NEPI triple."""
        return item if isinstance(item, Condition) else cls(*item)

    @property
    def group(self) -> list[int]:
        return self[0]

    @property
    def state(self) -> ResourceState:
        return self[1]

    @property
    def time(self) -> Any:
        return self[2]

    def without(self, guids: set[int]) -> "Condition":
        """The same condition with ``guids`` taken out of its group."""
        return Condition([g for g in self.group if g not in guids], self.state, self.time,
                         self.delay)


#: the actions a user's condition may gate
GATEABLE = (ResourceAction.START, ResourceAction.STOP)


def checked_condition(action: int, group: list[int], state: int, time: Any,
                      actions: tuple[int, ...] = GATEABLE) -> Condition:
    """A user's condition, checked (a clear error for each mistake) and parsed once."""
    if action not in actions or isinstance(action, bool):
        raise InvalidInputError(
            f"unknown or unsupported action {action!r}; valid: "
            + ", ".join(f"ResourceAction.{ResourceAction2str[a]} ({a})" for a in actions))
    if state not in ResourceState2str or isinstance(state, bool):
        raise InvalidInputError(
            f"unknown state {state!r}; valid: "
            + ", ".join(f"ResourceState.{n} ({v})" for v, n in ResourceState2str.items()))
    if state == ResourceState.FAILED:
        raise InvalidInputError("a condition cannot wait for FAILED: a failed RM never satisfies one")
    if not group:
        raise InvalidInputError("a condition needs at least one guid to wait for")
    return Condition(group, state, time)
