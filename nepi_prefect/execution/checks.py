"""Input checks the EC (and ``validate``) run at the call that gave the input.

Each check raises :class:`InvalidInputError` saying what was wrong and what is
valid: identifiers that become paths, guid arguments, condition cycles,
connections the RM types do not accept, required attributes left unset.
"""

from __future__ import annotations

import re
import shlex
from typing import Any, Iterable, Iterator, Mapping

from nepi_prefect.execution.attribute import Flags
from nepi_prefect.execution.errors import AttributeValueError, InvalidInputError
from nepi_prefect.execution.states import ResourceAction, ResourceState

#: identifiers that become file names: exp_id, run_id, resource names
SAFE_IDENTIFIER = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
SAFE_IDENTIFIER_TEXT = ("letters, digits, '.', '_' and '-', starting with a letter or "
                        "digit, without '..' (e.g. 'exp-1')")


def identifier_problem(value: Any) -> str | None:
    """Why ``value`` is not a safe identifier, or None if it is one."""
    if not isinstance(value, str):
        return f"{type(value).__name__} {value!r} is not a string"
    if not value:
        return "it is empty"
    if ".." in value:
        return f"{value!r} holds '..'"
    if not SAFE_IDENTIFIER.fullmatch(value):
        return f"{value!r} holds a character outside the safe set"
    return None


def safe_identifier(kind: str, value: Any) -> str:
    """``value`` if it is a safe identifier, else InvalidInputError naming ``kind``."""
    problem = identifier_problem(value)
    if problem:
        raise InvalidInputError(f"{kind} {value!r} is refused: {problem}; "
                                f"valid: {SAFE_IDENTIFIER_TEXT}")
    return value


def guid_list(guids: Any, what: str = "guids") -> list[int]:
    """One guid, several, or None as a list of ints; a string or a non-int is refused
    (a string would otherwise be walked character by character)."""
    if guids is None:
        return []
    if isinstance(guids, int) and not isinstance(guids, bool):
        return [guids]
    if isinstance(guids, (str, bytes)) or not isinstance(guids, Iterable):
        raise InvalidInputError(f"{what}: got {guids!r}; expected a guid (an integer), "
                                f"a list of guids, or None")
    out = list(guids)
    for g in out:
        if not isinstance(g, int) or isinstance(g, bool):
            raise InvalidInputError(f"{what}: got {g!r} in {guids!r}; a guid is an integer")
    return out


def group_id(group: Any) -> int | None:
    """A deployment group id: None or a non-negative int."""
    if group is None or (isinstance(group, int) and not isinstance(group, bool) and group >= 0):
        return group
    raise InvalidInputError(f"deploy group: got {group!r}; expected None or a "
                            f"non-negative integer (a group id)")


def shell_words(owner: str, name: str, value: Any) -> None:
    """Refuse a value that the shell would not split (an unbalanced quote)."""
    if not isinstance(value, str):
        return
    try:
        shlex.split(value)
    except ValueError as exc:
        raise InvalidInputError(
            f"{owner}: attribute {name!r}: {value!r} cannot be split into shell words "
            f"({exc}); expected space-separated NAME=value pairs with balanced quotes") from None


def set_checked(rm: Any, name: str, value: Any) -> Any:
    """``rm.set(name, value)``; a refused value's error names the RM, the attribute and
    the value, and a shell-word attribute with an unbalanced quote is refused."""
    owner = f"{rm.get_rtype()} {rm.guid}"
    if name in type(rm)._shell_word_attributes:
        shell_words(owner, name, value)
    try:
        return rm.set(name, value)
    except AttributeValueError as exc:
        raise AttributeValueError(f"{owner}: {exc}") from None


# -- condition cycles ----------------------------------------------------------
#: a node of the wait graph: (guid, "START" or "STOP")
Step = tuple[int, str]
_ACTION_NAMES = {ResourceAction.START: "START", ResourceAction.STOP: "STOP"}


def _waited_step(guid: int, state: int) -> Step | None:
    """The step of ``guid`` that must happen for it to reach ``state``; None when
    reaching it needs no user action (deploy states, RELEASED at shutdown)."""
    if state in (ResourceState.STARTED, ResourceState.FINISHED):
        return (guid, "START")
    if state == ResourceState.STOPPED:
        return (guid, "STOP")
    return None


def _waits(guid: int, name: str, conds: Iterable[Any]) -> Iterator[tuple[Step, str]]:
    """The steps that step ``(guid, name)`` waits for under ``conds``, with the reason."""
    for group, state, *_ in conds:
        for other in group:
            target = _waited_step(other, state)
            if target is not None:
                yield target, f"{name} of {guid} waits for {other} {ResourceState(state).name}"


def _needs_its_start(guid: int) -> tuple[Step, str]:
    return (guid, "START"), f"STOP of {guid} needs its START"


def condition_edges(conditions: Mapping[int, Mapping[int, Iterable[Any]]]) -> dict[Step, list[tuple[Step, str]]]:
    """The wait graph: ``conditions[guid][action]`` is a list of ``(group, state, time)``.

    An edge goes from a step to the step it waits for, with the reason in words.
    Stopping an RM waits for its start, so STOP → START of the same RM too.
    """
    edges: dict[Step, list[tuple[Step, str]]] = {}
    for guid, by_action in conditions.items():
        for action, conds in by_action.items():
            name = _ACTION_NAMES.get(action)
            if name is None:
                continue
            for edge in _waits(guid, name, conds):
                edges.setdefault((guid, name), []).append(edge)
    for guid in conditions:
        edges.setdefault((guid, "STOP"), []).append(_needs_its_start(guid))
    return edges


def find_cycle(edges: dict[Step, list[tuple[Step, str]]]) -> list[str] | None:
    """The reasons along one cycle of the graph, or None if it has none."""
    done: set[Step] = set()
    for start in list(edges):
        if start in done:
            continue
        # path[k] -> path[k+1] is the edge reasons[k]; iters[k] walks path[k]'s edges
        path, reasons, iters = [start], [], [iter(edges.get(start, []))]
        while path:
            step = next(iters[-1], None)
            if step is None:
                done.add(path.pop())
                iters.pop()
                if reasons:
                    reasons.pop()
                continue
            nxt, why = step
            if nxt in path:
                return reasons[path.index(nxt):] + [why]
            if nxt not in done:
                path.append(nxt)
                reasons.append(why)
                iters.append(iter(edges.get(nxt, [])))
    return None


def refuse_cycle(conditions: Mapping[int, Mapping[int, Iterable[Any]]], where: str) -> None:
    """InvalidInputError if the conditions wait for each other in a ring."""
    cycle = find_cycle(condition_edges(conditions))
    if cycle:
        raise InvalidInputError(
            f"{where}: conditions wait for each other in a cycle and would never be met: "
            + "; ".join(cycle)
            + ". Valid conditions wait only for resources that do not (directly or "
              "through others) wait for the waiting one")


# -- connections and required attributes ----------------------------------------
def connection_problem(cls1: type, guid1: int, cls2: type, guid2: int,
                       count_same: int) -> str | None:
    """Why ``guid1`` (of ``cls1``) may not be connected to ``guid2``, or None.

    ``count_same`` is how many RMs whose type is like ``cls2`` ``guid1`` already has.
    """
    if guid1 == guid2:
        return f"{cls1.get_rtype()} {guid1} cannot be connected to itself"
    if not cls1.accepts_connection(cls2):
        return (f"{cls1.get_rtype()} {guid1} cannot be connected to {cls2.get_rtype()} {guid2}; "
                f"{cls1.get_rtype()} connects only to: {', '.join(cls1.connects_to())}")
    limit = cls1.connection_limit(cls2)
    if limit is not None and count_same >= limit:
        return (f"{cls1.get_rtype()} {guid1} cannot be connected to {cls2.get_rtype()} {guid2}: "
                f"it may have at most {limit} {cls1.limited_rtype(cls2)} and already has "
                f"{count_same}")
    return None


def missing_required(rtype: str, guid: Any, attributes: Iterable[Any],
                     values: Mapping[str, Any]) -> list[str]:
    """``"<rtype> <guid>: 'name'"`` for every Required attribute without a value."""
    out = []
    for attr in attributes:
        if attr.has_flag(Flags.Required) and values.get(attr.name, attr.default) in (None, ""):
            out.append(f"{rtype} {guid}: {attr.name!r} ({attr.help})")
    return out


def conditions_of(resources: Iterable[Any]) -> dict[int, dict[int, list[Any]]]:
    """Every RM's conditions by guid and action (copies, safe to extend)."""
    return {rm.guid: {a: list(c) for a, c in rm.conditions.items()} for rm in resources}


def refuse_new_cycle(resources: Any, rms: Iterable[Any], action: int, cond: Any) -> None:
    """InvalidInputError if gating ``action`` of ``rms`` on ``cond`` closes a cycle.

    The conditions registered so far hold no cycle (each was checked), so a new one
    closes a cycle only if what it waits for already waits, through others, for one
    of the gated steps: a search from the new condition's targets over the steps they
    reach, not the whole graph (NEPI scripts register thousands of conditions).
    ``resources`` is the registry: ``resources.get(guid)`` gives an RM.
    """
    name = _ACTION_NAMES.get(action)
    if name is None:
        return
    new_edges = {(rm.guid, name): list(_waits(rm.guid, name, [cond])) for rm in rms}
    for step, edges in new_edges.items():
        for target, why in edges:
            path = _path(resources, target, step, new_edges)
            if path is not None:
                raise InvalidInputError(
                    "register_condition: conditions wait for each other in a cycle and would "
                    "never be met: " + "; ".join([why, *path]) + ". Valid conditions wait "
                    "only for resources that do not (directly or through others) wait for the "
                    "waiting one")


def _steps_waited_by(resources: Any, step: Step) -> list[tuple[Step, str]]:
    """The steps ``step`` waits for under the conditions registered so far."""
    guid, name = step
    out = [_needs_its_start(guid)] if name == "STOP" else []
    for action, conds in resources.get(guid).conditions.items():
        if _ACTION_NAMES.get(action) == name:
            out.extend(_waits(guid, name, conds))
    return out


def _path(resources: Any, start: Step, goal: Step,
          extra: dict[Step, list[tuple[Step, str]]]) -> list[str] | None:
    """The reasons along a wait path from ``start`` to ``goal`` (``extra``: edges about to
    be added), or None when there is none."""
    if start == goal:
        return []
    seen, stack = {start}, [(start, [])]
    while stack:
        step, reasons = stack.pop()
        for nxt, why in _steps_waited_by(resources, step) + extra.get(step, []):
            if nxt == goal:
                return reasons + [why]
            if nxt not in seen:
                seen.add(nxt)
                stack.append((nxt, reasons + [why]))
    return None


def refuse_connection(rm1: Any, rm2: Any) -> None:
    """InvalidInputError unless both RMs' types accept the connection."""
    if rm2.guid in rm1.connections:
        return  # connecting twice changes nothing, as before
    for a, b in ((rm1, rm2), (rm2, rm1)):
        limited = type(a).limited_rtype(type(b))
        same = sum(1 for g in a.connections
                   if limited in type(a.ec.get_resource(g))._rtype_chain())
        problem = connection_problem(type(a), a.guid, type(b), b.guid, same)
        if problem:
            raise InvalidInputError(problem)


def refuse_missing_required(rms: Iterable[Any]) -> None:
    """InvalidInputError naming every Required attribute left unset on ``rms``."""
    missing = [m for rm in rms
               for m in missing_required(rm.get_rtype(), rm.guid, rm.get_attributes(),
                                         rm.attribute_values())]
    if missing:
        raise InvalidInputError("cannot deploy: required attributes are not set: "
                                + "; ".join(missing) + ". Set them with ec.set(guid, name, value)")
