"""The engine's vocabulary: resource states, condition actions, action kinds, EC states.

States and condition actions are ``IntEnum``\\ s with NEPI's names and numbers,
so ``ResourceState.STARTED == 4``, comparisons by order and NEPI's
``ResourceState2str`` all keep working. This module imports nothing of the
project: every other engine module may use it.
"""

from __future__ import annotations

import enum


class ResourceState(enum.IntEnum):
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


class ResourceAction(enum.IntEnum):
    """Actions a condition can gate (NEPI's numbers)."""

    DEPLOY = 0
    START = 1
    STOP = 2


#: the members by value: ``STATES[4] is ResourceState.STARTED`` (faster than a call)
STATES: tuple[ResourceState, ...] = tuple(ResourceState)

#: NEPI's name tables; an int or a member finds the same name
ResourceState2str: dict[int, str] = {s: s.name for s in ResourceState}
ResourceAction2str: dict[int, str] = {a: a.name for a in ResourceAction}


class ActionKind(enum.StrEnum):
    """What an action run does; the value is the word the record shows."""

    DEPLOY = "deploy"
    START = "start"
    STOP = "stop"
    RELEASE = "release"
    SET = "set"          # set_with_conditions: an attribute set once conditions hold
    BARRIER = "barrier"  # a deployment group's wait for every member to be READY


S = ResourceState

#: the states in which an action's goal is met
TARGETS: dict[ActionKind, frozenset[ResourceState]] = {
    ActionKind.DEPLOY: frozenset({S.READY, S.STARTED, S.STOPPED, S.FINISHED}),
    ActionKind.START: frozenset({S.STARTED, S.STOPPED, S.FINISHED}),
    ActionKind.STOP: frozenset({S.STOPPED, S.FINISHED}),
    ActionKind.RELEASE: frozenset({S.RELEASED}),
}

#: the action a condition's gate stands for
GATED: dict[ResourceAction, ActionKind] = {
    ResourceAction.DEPLOY: ActionKind.DEPLOY,
    ResourceAction.START: ActionKind.START,
    ResourceAction.STOP: ActionKind.STOP,
}

#: the time stamp attribute each state sets on an RM
STATE_TIME_ATTR: dict[ResourceState, str] = {
    S.DISCOVERED: "_discover_time",
    S.PROVISIONED: "_provision_time",
    S.READY: "_ready_time",
    S.STARTED: "_start_time",
    S.STOPPED: "_stop_time",
    S.FINISHED: "_finish_time",
    S.FAILED: "_failed_time",
    S.RELEASED: "_release_time",
}


class ECState(enum.IntEnum):
    """State of the experiment controller (NEPI's numbers)."""

    RUNNING = 1
    FAILED = 2
    TERMINATED = 3


ECState2str: dict[int, str] = {s: s.name for s in ECState}
