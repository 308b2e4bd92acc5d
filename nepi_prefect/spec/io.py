"""Read, write and build experiment descriptions (YAML or JSON).

* :func:`read_description` parses a file into an :class:`ExperimentDescription`
  and validates it; errors name the file and the path inside it.
* :func:`build_experiment` turns a description into a ready (undeployed) EC.
* :func:`describe_experiment` does the reverse; :func:`save_experiment` and
  :func:`load_experiment` back ``ec.save()`` and ``ExperimentController.load()``.

Credential attributes are never written in clear: ``save`` writes
``{"env": "NEPI_PREFECT_<NAME>_<ATTR>"}`` in their place, and loading reads
the value from that environment variable.
"""

from __future__ import annotations

import json
import os
import re
import weakref
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml
from pydantic import ValidationError

from nepi_prefect.execution.ec import ExperimentController
from nepi_prefect.execution.errors import InvalidInputError
from nepi_prefect.execution.persistence import Serializer, register_serializer
from nepi_prefect.execution.resource import ResourceAction2str, ResourceState2str
from nepi_prefect.spec.models import ConditionSpec, ExperimentDescription, ResourceSpec, SweepSpec
from nepi_prefect.spec.validate import (
    COLLECTOR_RTYPE,
    DescriptionError,
    Issue,
    action_value,
    env_reference,
    format_path,
    state_value,
    validate_description,
)
from nepi_prefect.transport.credentials import InventoryResolver, resolve_inventory_node


#: what a built EC came from: its resource names by guid, and the description
_ORIGINS: "weakref.WeakKeyDictionary[ExperimentController, tuple[dict[int, str], ExperimentDescription | None]]" = \
    weakref.WeakKeyDictionary()

COLLECTOR_TRACE_ATTR = "traceName"

# libyaml when PyYAML has it: the pure-Python loader took 3.3 s of a 20-host x
# 50-app description (and its dumper 2.4 s for the saved copy); same safe schema
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


# -- parsing ----------------------------------------------------------------------------
def parse_document(text: str, source: str | None = None) -> Any:
    """YAML or JSON text (JSON is YAML) as Python data."""
    try:
        return yaml.load(text, Loader=_LOADER)  # noqa: S506 (a safe loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise DescriptionError(source, [Issue(where, f"unreadable YAML/JSON ({getattr(exc, 'problem', exc)})",
                                              "a YAML or JSON document")]) from None


def _read_text(path: str | os.PathLike) -> str:
    try:
        return Path(path).read_text()
    except OSError as exc:
        raise DescriptionError(str(path), [Issue("", f"cannot read the file ({exc.strerror})",
                                                 "a readable YAML or JSON file")]) from None


def issues_from(exc: ValidationError, prefix: tuple = ()) -> list[Issue]:
    """pydantic errors as :class:`Issue` s with document paths."""
    issues = []
    for err in exc.errors():
        path = format_path(prefix + tuple(err["loc"]))
        found = "nothing" if err["type"] == "missing" else f"got {err.get('input')!r}"
        expected = {"missing": "this field to be given",
                    "extra_forbidden": "no such field here"}.get(err["type"], err["msg"])
        if err["type"] == "extra_forbidden":
            found = f"unknown field {err['loc'][-1]!r}"
            fields = _fields_at(prefix + tuple(err["loc"][:-1]))
            if fields:
                expected = f"one of {', '.join(fields)}"
        issues.append(Issue(path, found, expected.removeprefix("Value error, ")))
    return issues


def _fields_at(loc: tuple) -> list[str]:
    """The field names valid at ``loc`` of a description (for unknown-field errors)."""
    model: Any = ExperimentDescription
    for part in loc:
        if isinstance(part, int):
            continue
        sub = {"resources": ResourceSpec, "conditions": ConditionSpec}.get(part)
        if sub is None:
            field = getattr(model, "model_fields", {}).get(part)
            sub = getattr(field, "annotation", None) if field else None
            if not hasattr(sub, "model_fields"):
                return []
        model = sub
    return list(getattr(model, "model_fields", {}))


def description_from_data(data: Any, source: str | None = None) -> ExperimentDescription:
    """Validate parsed data as a description (shape and semantics)."""
    if not isinstance(data, dict):
        raise DescriptionError(source, [Issue("", f"got {type(data).__name__}",
                                              "a mapping with resources, connections, conditions")])
    try:
        desc = ExperimentDescription.model_validate(data)
    except ValidationError as exc:
        raise DescriptionError(source, issues_from(exc)) from None
    validate_description(desc, source)
    return desc


def read_description(path: str | os.PathLike) -> ExperimentDescription:
    """Read and validate a description file."""
    return description_from_data(parse_document(_read_text(path), str(path)), str(path))


def read_sweep(path: str | os.PathLike) -> tuple[SweepSpec, ExperimentDescription]:
    """Read a sweep file; its ``experiment`` path is relative to the sweep file."""
    source = str(path)
    data = parse_document(_read_text(path), source)
    try:
        sweep = SweepSpec.model_validate(data)
    except ValidationError as exc:
        raise DescriptionError(source, issues_from(exc)) from None
    if isinstance(sweep.experiment, str):
        desc = read_description(Path(path).parent / sweep.experiment)
    else:
        validate_description(sweep.experiment, source)
        desc = sweep.experiment
    check_sweep(sweep, desc, source)
    return sweep, desc


def check_sweep(sweep: SweepSpec, desc: ExperimentDescription, source: str | None = None) -> None:
    """Every swept ``NAME.ATTR`` exists and every value is valid for it: each grid value
    and each explicit point checked on its own, every problem reported at once."""
    issues: list[Issue] = []
    trials = [(f"grid.{key}[{j}]", {key: value}) for key, values in sweep.grid.items()
              for j, value in enumerate(values)]
    trials += [(f"points[{i}]", point) for i, point in enumerate(sweep.points)]
    for what, point in trials:
        try:
            apply_overrides(desc, point, source=source, what=what)
        except DescriptionError as exc:
            issues.extend(exc.issues)
        except InvalidInputError as exc:
            issues.append(Issue(what, str(exc), "NAME.ATTR keys, e.g. ping.count"))
    if issues:
        raise DescriptionError(source, issues)


def sweep_points(sweep: SweepSpec) -> list[dict[str, Any]]:
    """The grid's combinations (first key varies slowest), then the explicit points."""
    points: list[dict[str, Any]] = [{}] if sweep.grid else []
    for key, values in sweep.grid.items():
        points = [dict(p, **{key: v}) for p in points for v in values]
    return points + [dict(p) for p in sweep.points]


def write_description(desc: ExperimentDescription, path: str | os.PathLike,
                      header: str = "") -> str:
    """Write ``desc`` as JSON (``.json``) or YAML (anything else); returns the path."""
    data = desc.model_dump(mode="json", exclude_none=True, exclude_defaults=True)
    data["resources"] = [r.model_dump(mode="json", exclude_none=True, exclude_defaults=True)
                         for r in desc.resources]
    # Conditions read better with their action and state spelled out.
    data["conditions"] = [c.model_dump(mode="json", exclude_none=True) for c in desc.conditions]
    if not data["conditions"]:
        del data["conditions"]
    path = str(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if path.endswith(".json"):
        text = json.dumps(data, indent=2) + "\n"
    else:
        text = header + yaml.dump(data, Dumper=_DUMPER, sort_keys=False, default_flow_style=None)
    Path(path).write_text(text)
    return path


# -- overrides ------------------------------------------------------------------------------
def parse_assignment(text: str) -> tuple[str, str, str]:
    """``"ping.count=5"`` -> ``("ping", "count", "5")``; InvalidInputError if malformed."""
    key, sep, value = text.partition("=")
    name, dot, attr = key.strip().partition(".")
    if not sep or not dot or not name or not attr:
        raise InvalidInputError(f"{text!r}: expected NAME.ATTR=VALUE, e.g. ping.count=5")
    return name, attr.strip(), value


def apply_overrides(desc: ExperimentDescription, overrides: Mapping[str, Any] | Iterable[str] | None,
                    source: str | None = None, what: str = "--set") -> ExperimentDescription:
    """A copy of ``desc`` with ``NAME.ATTR`` values replaced, validated."""
    if not overrides:
        return desc
    if isinstance(overrides, Mapping):
        items = [(*_split_key(k), v) for k, v in overrides.items()]
    else:
        items = [parse_assignment(o) for o in overrides]
    new = desc.model_copy(deep=True)
    issues = []
    for name, attr, value in items:
        try:
            res = new.resource(name)
        except KeyError:
            issues.append(Issue(f"{what} {name}.{attr}", f"undeclared resource {name!r}",
                                f"a declared resource name ({', '.join(new.names)})"))
            continue
        res.attributes[attr] = value
    if issues:
        raise DescriptionError(source, issues)
    # Report problems at the override that caused them: "--set ping.count".
    index = {n: i for i, n in enumerate(new.names)}
    paths = {f"resources[{index[n]}].attributes.{a}": f"{n}.{a}" for n, a, _ in items}
    try:
        validate_description(new, source)
    except DescriptionError as exc:
        raise DescriptionError(source, [Issue(f"{what} {paths.get(i.path, i.path)}", i.found,
                                              i.expected) for i in exc.issues]) from None
    return new


def _split_key(key: str) -> tuple[str, str]:
    name, dot, attr = key.partition(".")
    if not dot:
        raise InvalidInputError(f"{key!r}: expected NAME.ATTR, e.g. ping.count")
    return name, attr


# -- building an EC -------------------------------------------------------------------------
def build_experiment(desc: ExperimentDescription, source: str | None = None,
                     inventory_resolver: InventoryResolver | None = None,
                     **ec_kwargs: Any) -> ExperimentController:
    """A new EC holding every resource, connection, condition and trace of ``desc``.

    ``ec_kwargs`` go to :class:`ExperimentController` (``exp_id`` defaults to
    the description's name). Nothing is deployed.
    """
    validate_description(desc, source)
    ec_kwargs.setdefault("exp_id", desc.name)
    ec = ExperimentController(**ec_kwargs)
    try:
        names = _populate(ec, desc, source, inventory_resolver)
    except Exception:
        ec.shutdown()
        raise
    _ORIGINS[ec] = (names, desc)
    if desc.wait_for:
        by_name = {n: g for g, n in names.items()}
        ec.set_end_guids([by_name[n] for n in desc.wait_for])
    return ec


def _populate(ec: ExperimentController, desc: ExperimentDescription, source: str | None,
              resolver: InventoryResolver | None) -> dict[int, str]:
    guids: dict[str, int] = {}
    for i, res in enumerate(desc.resources):
        with _at(source, f"resources[{i}]"):
            guids[res.name] = ec.register_resource(res.rtype, guid=res.guid, name=res.name)
            for attr, value in _attribute_values(res, resolver, source, i).items():
                ec.set(guids[res.name], attr, value)
            for trace in res.traces + res.collect:
                ec.enable_trace(guids[res.name], trace)
    for i, (a, b) in enumerate(desc.connections):
        with _at(source, f"connections[{i}]"):
            ec.register_connection(guids[a], guids[b])
    for i, cond in enumerate(desc.conditions):
        with _at(source, f"conditions[{i}]"):
            ec.register_condition([guids[n] for n in cond.resources], action_value(cond.action),
                                  [guids[n] for n in cond.wait_for], state_value(cond.state),
                                  None if cond.time is None else _time_text(cond.time))
    names = {g: n for n, g in guids.items()}
    for i, res in enumerate(desc.resources):
        for trace in res.collect:
            with _at(source, f"resources[{i}].collect"):
                guid = ec.register_resource(COLLECTOR_RTYPE, name=f"{res.name}-collect-{trace}")
                ec.set(guid, COLLECTOR_TRACE_ATTR, trace)
                ec.register_connection(guid, guids[res.name])
                names[guid] = ec.get_name(guid)
    return names


def _time_text(value: str | float) -> str:
    return value if isinstance(value, str) else f"{value}s"


class _at:
    """Turn an engine error raised while building into a DescriptionError at ``path``."""

    def __init__(self, source: str | None, path: str):
        self.source, self.path = source, path

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, exc, tb) -> bool:
        if exc is not None and isinstance(exc, InvalidInputError) \
                and not isinstance(exc, DescriptionError):
            raise DescriptionError(self.source, [Issue(self.path, str(exc), "a valid setting")]) from None
        return False


def _attribute_values(res: ResourceSpec, resolver: InventoryResolver | None,
                      source: str | None, index: int) -> dict[str, Any]:
    values: dict[str, Any] = {}
    if res.from_inventory is not None:
        resolver = resolver or resolve_inventory_node
        found = resolver(res.from_inventory.inventory, res.from_inventory.node)
        values.update({k: v for k, v in found.items() if v is not None})
    for attr, value in res.attributes.items():
        var = env_reference(value)
        if var is not None:
            if var not in os.environ:
                raise DescriptionError(source, [Issue(
                    f"resources[{index}].attributes.{attr}",
                    f"environment variable {var} is not set",
                    f"{var} to hold the value of {res.name}.{attr}")])
            value = os.environ[var]
        values[attr] = value
    return values


def resource_names(ec: ExperimentController) -> dict[int, str]:
    """Resource names by guid: those given at registration (a description's names),
    else ``<rtype>-<guid>`` (e.g. ``LinuxNode-1``)."""
    return {guid: ec.get_name(guid) for guid in ec.resources}


def source_description(ec: ExperimentController) -> ExperimentDescription | None:
    """The description ``ec`` was built from, if any."""
    return _ORIGINS.get(ec, ({}, None))[1]


# -- describing an EC --------------------------------------------------------------------------
def secret_variable(name: str, attr: str) -> str:
    """The environment variable a saved description reads a credential from."""
    return re.sub(r"[^A-Z0-9]+", "_", f"NEPI_PREFECT_{name}_{attr}".upper())


def describe_experiment(ec: ExperimentController) -> tuple[ExperimentDescription, list[str]]:
    """The description of ``ec`` and the environment variables its credentials need."""
    names = resource_names(ec)
    folded = _foldable_collectors(ec)
    secrets: list[str] = []
    resources = [_describe_resource(ec, guid, names, folded, secrets)
                 for guid in sorted(ec.resources) if guid not in folded]
    connections = sorted({tuple(sorted((a, b))) for a in ec.resources if a not in folded
                          for b in ec.get_resource(a).connections if b not in folded})
    origin = source_description(ec)
    desc = ExperimentDescription(
        name=ec.exp_id, description=origin.description if origin else None,
        resources=resources,
        connections=[[names[a], names[b]] for a, b in connections],
        conditions=_describe_conditions(ec, names),
        wait_for=origin.wait_for if origin else None,
        timeout=origin.timeout if origin else None)
    return desc, secrets


def _foldable_collectors(ec: ExperimentController) -> dict[int, tuple[int, str]]:
    """Collectors that ``collect: [trace]`` on their resource describes exactly."""
    folded = {}
    for guid in ec.resources:
        rm = ec.get_resource(guid)
        if rm.get_rtype() != COLLECTOR_RTYPE or len(rm.connections) != 1 or rm.conditions:
            continue
        values = rm.attribute_values(only_set=True)
        (target,) = rm.connections
        trace = values.get(COLLECTOR_TRACE_ATTR)
        if set(values) == {COLLECTOR_TRACE_ATTR} and \
                trace in ec.get_resource(target).enabled_traces:
            folded[guid] = (target, trace)
    return folded


def _describe_resource(ec: ExperimentController, guid: int, names: dict[int, str],
                       folded: dict[int, tuple[int, str]], secrets: list[str]) -> ResourceSpec:
    rm = ec.get_resource(guid)
    attributes: dict[str, Any] = {}
    for attr, value in rm.attribute_values(only_set=True).items():
        if rm.get_attribute(attr).is_secret and value not in (None, ""):
            var = secret_variable(names[guid], attr)
            secrets.append(var)
            value = {"env": var}
        attributes[attr] = value
    collect = sorted({t for c, (target, t) in folded.items() if target == guid})
    defaults = {t.name for t in rm.get_traces() if t.enabled}
    traces = sorted(rm.enabled_traces - defaults - set(collect))
    return ResourceSpec(name=names[guid], rtype=rm.get_rtype(), guid=guid,
                        attributes=attributes, traces=traces, collect=collect)


def _describe_conditions(ec: ExperimentController, names: dict[int, str]) -> list[ConditionSpec]:
    grouped: dict[tuple, list[str]] = {}
    for guid in sorted(ec.resources):
        for action, conds in sorted(ec.get_resource(guid).conditions.items()):
            for group, state, time in conds:
                key = (action, tuple(group), state, time)
                grouped.setdefault(key, []).append(names[guid])
    return [ConditionSpec(resources=who, action=ResourceAction2str[action],
                          wait_for=[names[g] for g in group], state=ResourceState2str[state],
                          time=time)
            for (action, group, state, time), who in grouped.items()]


def save_experiment(ec: ExperimentController, path: str | os.PathLike) -> str:
    """Write the description of ``ec`` to ``path`` (``.json`` or YAML); returns the path.

    Credential values are replaced by ``{"env": VAR}`` references.
    """
    desc, secrets = describe_experiment(ec)
    header = "# nepi-prefect experiment description\n"
    if secrets:
        header += ("# Credential values are not saved; set these environment variables "
                   "before loading:\n" + "".join(f"#   {v}\n" for v in secrets))
    return write_description(desc, path, header)


def load_experiment(path: str | os.PathLike, **kwargs: Any) -> ExperimentController:
    """A new EC from the description in ``path``; ``kwargs`` go to the EC
    (and ``inventory_resolver`` / ``overrides`` to the builder)."""
    resolver = kwargs.pop("inventory_resolver", None)
    overrides = kwargs.pop("overrides", None)
    desc = read_description(path)
    desc = apply_overrides(desc, overrides, source=str(path))
    return build_experiment(desc, source=str(path), inventory_resolver=resolver, **kwargs)


# ExperimentController.save/load write and read these descriptions (also found through
# the entry point nepi_prefect.serializers: description, by scripts that never import spec).
SERIALIZER = Serializer(save_experiment, load_experiment)
register_serializer(*SERIALIZER)
