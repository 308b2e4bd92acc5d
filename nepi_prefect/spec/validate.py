"""Check a description against the installed resource types.

Every problem is reported at once, each with the path inside the document
(``resources[2].attributes.count``), what was found and what was expected.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Iterable

from nepi_prefect.execution import checks
from nepi_prefect.execution.errors import (
    AttributeValueError,
    InvalidInputError,
    UnknownResourceTypeError,
    listing,
)
from nepi_prefect.execution.resource import (
    ResourceAction2str,
    ResourceFactory,
    ResourceManager,
    ResourceState,
    ResourceState2str,
)
from nepi_prefect.spec.models import ExperimentDescription, ResourceSpec
from nepi_prefect.util.timefuncs import RELATIVE_FORMS, parse_delay

#: states a condition may wait for (a FAILED RM never satisfies a condition)
CONDITION_STATES = [n for v, n in ResourceState2str.items() if v != ResourceState.FAILED]
ACTIONS = [n for n in ResourceAction2str.values() if n != "DEPLOY"]
#: the rtype of the resource that copies a trace into the run directory
COLLECTOR_RTYPE = "Collector"


@dataclass(frozen=True)
class Issue:
    """One problem in a description."""

    path: str
    found: str
    expected: str

    def __str__(self) -> str:
        where = f"{self.path}: " if self.path else ""
        return f"{where}{self.found}; expected {self.expected}"


class DescriptionError(InvalidInputError):
    """A description is invalid. ``issues`` lists every problem found."""

    def __init__(self, source: str | None, issues: Iterable[Issue]):
        self.source = source
        self.issues = list(issues)
        head = f"{source}: " if source else ""
        lines = [f"{head}{issue}" for issue in self.issues]
        super().__init__("invalid experiment description:\n  " + "\n  ".join(lines)
                         if len(lines) > 1 else lines[0] if lines else f"{head}invalid")


def format_path(loc: Iterable[Any]) -> str:
    """``("resources", 2, "attributes", "count")`` -> ``resources[2].attributes.count``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def env_reference(value: Any) -> str | None:
    """The variable name if ``value`` is ``{"env": "VAR"}`` (a value read from the environment)."""
    if isinstance(value, dict) and set(value) == {"env"} and isinstance(value["env"], str):
        return value["env"]
    return None


def validate_description(desc: ExperimentDescription, source: str | None = None) -> None:
    """Raise :class:`DescriptionError` listing every problem of ``desc``."""
    issues: list[Issue] = []
    names = _check_names(desc, issues)
    for i, res in enumerate(desc.resources):
        _check_resource(res, f"resources[{i}]", issues)
    _check_connections(desc, names, issues)
    _check_conditions(desc, names, issues)
    for i, name in enumerate(desc.wait_for or []):
        _check_name(name, names, f"wait_for[{i}]", issues)
    if desc.timeout is not None:
        _check_time(desc.timeout, "timeout", issues)
    _check_refusals(desc, names, issues)
    if issues:
        raise DescriptionError(source, issues)


def _check_names(desc: ExperimentDescription, issues: list[Issue]) -> set[str]:
    seen: set[str] = set()
    guids: set[int] = set()
    for i, res in enumerate(desc.resources):
        if res.name in seen:
            issues.append(Issue(f"resources[{i}].name", f"duplicate name {res.name!r}",
                                "each resource to have its own name"))
        seen.add(res.name)
        if res.guid is not None:
            if res.guid in guids:
                issues.append(Issue(f"resources[{i}].guid", f"duplicate guid {res.guid}",
                                    "each resource to have its own guid"))
            guids.add(res.guid)
    return seen


def _check_name(name: str, names: set[str], path: str, issues: list[Issue]) -> None:
    if name not in names:
        issues.append(Issue(path, f"undeclared resource {name!r}",
                            f"a declared resource name ({listing(names)})"))


def resource_class(rtype: str) -> type[ResourceManager]:
    """The RM class of ``rtype``; UnknownResourceTypeError lists the known ones."""
    return ResourceFactory.get_resource_type(rtype)


def _check_resource(res: ResourceSpec, path: str, issues: list[Issue]) -> None:
    try:
        rclass = resource_class(res.rtype)
    except UnknownResourceTypeError:
        issues.append(Issue(f"{path}.rtype", f"unknown resource type {res.rtype!r}",
                            f"one of {listing(ResourceFactory.resource_types())}"))
        return
    attrs = {a.name: a for a in rclass.get_attributes()}
    for name, value in res.attributes.items():
        _check_attribute(rclass, attrs, name, value, f"{path}.attributes.{name}", issues)
    traces = {t.name for t in rclass.get_traces()}
    for field in ("traces", "collect"):
        for j, trace in enumerate(getattr(res, field)):
            if trace not in traces:
                issues.append(Issue(f"{path}.{field}[{j}]",
                                    f"{res.rtype} has no trace {trace!r}",
                                    f"one of its traces ({listing(traces)})"))
    if res.collect:
        try:
            resource_class(COLLECTOR_RTYPE)
        except UnknownResourceTypeError:
            issues.append(Issue(f"{path}.collect", "collect needs the Collector resource type",
                                "the Collector type to be installed"))
    if res.from_inventory is not None and "hostname" not in attrs:
        issues.append(Issue(f"{path}.from_inventory", f"{res.rtype} has no hostname",
                            "from_inventory on a node type (e.g. LinuxNode)"))


def _check_attribute(rclass: type[ResourceManager], attrs: dict, name: str, value: Any,
                     path: str, issues: list[Issue]) -> None:
    attr = attrs.get(name)
    if attr is None:
        issues.append(Issue(path, f"{rclass.get_rtype()} has no attribute {name!r}",
                            f"one of its attributes ({listing(attrs)})"))
        return
    if env_reference(value) is not None:
        return  # checked when the variable is read
    if isinstance(value, (dict, list)):
        issues.append(Issue(path, f"got {type(value).__name__} {value!r}",
                            'a plain value or {"env": "VARIABLE"}'))
        return
    try:
        value = attr.validate(value)
        if attr.set_hook is not None:  # a type's own check (a node's home, say)
            attr.set_hook(attr.default, value)
    except AttributeValueError as exc:
        found, _, expected = str(exc).partition(": got ")[2].partition(", expected ")
        issues.append(Issue(path, f"got {found}", expected or "a valid value"))


def _check_connections(desc: ExperimentDescription, names: set[str],
                       issues: list[Issue]) -> None:
    for i, pair in enumerate(desc.connections):
        if len(pair) != 2:
            issues.append(Issue(f"connections[{i}]", f"got {pair!r}",
                                "a pair of resource names, e.g. [node, ping]"))
            continue
        for j, name in enumerate(pair):
            _check_name(name, names, f"connections[{i}][{j}]", issues)


def _check_conditions(desc: ExperimentDescription, names: set[str],
                      issues: list[Issue]) -> None:
    for i, cond in enumerate(desc.conditions):
        path = f"conditions[{i}]"
        for field in ("resources", "wait_for"):
            group = getattr(cond, field)
            if not group:
                issues.append(Issue(f"{path}.{field}", "an empty list",
                                    "at least one resource name"))
            for j, name in enumerate(group):
                _check_name(name, names, f"{path}.{field}[{j}]", issues)
        if cond.action.upper() not in ACTIONS:
            issues.append(Issue(f"{path}.action", f"unknown action {cond.action!r}",
                                f"one of {', '.join(ACTIONS)}"))
        if cond.state.upper() not in CONDITION_STATES:
            issues.append(Issue(f"{path}.state", f"unknown state {cond.state!r}",
                                f"one of {', '.join(CONDITION_STATES)}"))
        if cond.time is not None:
            _check_time(cond.time, f"{path}.time", issues)


def _check_time(value: Any, path: str, issues: list[Issue]) -> None:
    try:
        parse_delay(value)
    except ValueError:
        issues.append(Issue(path, f"malformed time {value!r}",
                            f"a relative time such as {RELATIVE_FORMS}, or seconds"))


def state_value(name: str) -> int:
    """``"STARTED"`` -> ``ResourceState.STARTED``."""
    return {n: v for v, n in ResourceState2str.items()}[name.upper()]


def action_value(name: str) -> int:
    """``"START"`` -> ``ResourceAction.START``."""
    return {n: v for v, n in ResourceAction2str.items()}[name.upper()]


# -- what the EC would refuse at its calls, found before anything is built ------------
def _check_refusals(desc: ExperimentDescription, names: set[str], issues: list[Issue]) -> None:
    if not desc.resources:
        issues.append(Issue("resources", "no resources", "at least one resource"))
    if desc.name is not None and checks.identifier_problem(desc.name):
        issues.append(Issue("name", f"unsafe experiment name: {checks.identifier_problem(desc.name)}",
                            checks.SAFE_IDENTIFIER_TEXT))
    for i, res in enumerate(desc.resources):
        if checks.identifier_problem(res.name):
            issues.append(Issue(f"resources[{i}].name",
                                f"unsafe name: {checks.identifier_problem(res.name)}",
                                checks.SAFE_IDENTIFIER_TEXT))
        _check_env_and_required(res, f"resources[{i}]", issues)
    _check_connection_types(desc, names, issues)
    conds: dict[str, dict[int, list]] = {n: {} for n in names}
    for cond in desc.conditions:
        if cond.action.upper() not in ACTIONS or cond.state.upper() not in CONDITION_STATES:
            continue  # reported above
        for name in cond.resources:
            conds.setdefault(name, {}).setdefault(action_value(cond.action), []).append(
                (cond.wait_for, state_value(cond.state)))
    cycle = checks.find_cycle(checks.condition_edges(conds))
    if cycle:
        issues.append(Issue("conditions", "a cycle of conditions that can never be met: "
                            + "; ".join(cycle), "conditions without a cycle"))


def _check_env_and_required(res: ResourceSpec, path: str, issues: list[Issue]) -> None:
    for name, value in res.attributes.items():
        var = env_reference(value)
        if var is not None and var not in os.environ:
            issues.append(Issue(f"{path}.attributes.{name}",
                                f"environment variable {var} is not set",
                                f"{var} to be set in the environment"))
    try:
        rclass = resource_class(res.rtype)
    except UnknownResourceTypeError:
        return  # reported by _check_resource
    if res.from_inventory is not None:
        return  # the inventory fills node attributes
    for missing in checks.missing_required(res.rtype, res.name, rclass.get_attributes(),
                                           res.attributes):
        issues.append(Issue(f"{path}.attributes", f"required attribute missing: {missing}",
                            "a value for every required attribute"))


def _check_connection_types(desc: ExperimentDescription, names: set[str],
                            issues: list[Issue]) -> None:
    classes: dict[str, type] = {}
    for res in desc.resources:
        try:
            classes[res.name] = resource_class(res.rtype)
        except UnknownResourceTypeError:
            pass
    linked: dict[str, list[str]] = {n: [] for n in classes}
    for i, pair in enumerate(desc.connections):
        if len(pair) != 2 or not all(n in classes for n in pair):
            continue  # reported above
        for a, b in (pair, pair[::-1]):
            limited = classes[a].limited_rtype(classes[b])
            same = sum(1 for o in linked[a] if limited in classes[o]._rtype_chain())
            problem = checks.connection_problem(classes[a], a, classes[b], b, same)
            if problem:
                issues.append(Issue(f"connections[{i}]", problem, "connections the types accept"))
                break
        else:
            linked[pair[0]].append(pair[1])
            linked[pair[1]].append(pair[0])
