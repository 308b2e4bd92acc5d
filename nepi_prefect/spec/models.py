"""Experiment descriptions as pydantic models.

A description names its resources and refers to them by name everywhere
else (connections, conditions, overrides). The models check the shape of a
document; :mod:`nepi_prefect.spec.validate` checks it against the installed
resource types (rtypes, attributes, traces, states, times).

The same models are the parameters of the Prefect flows, so the Prefect UI
renders them as forms.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from nepi_prefect.spec.topology import check_link_addresses, expand_topologies

from nepi_prefect.execution.resource import ResourceFactory


def _as_list(value: Any) -> Any:
    """Accept a single name where a list of names is expected."""
    return [value] if isinstance(value, str) else value


def _rtype_choices(schema: dict[str, Any]) -> None:
    """In a JSON schema (the Prefect UI's run form), rtype is a choice of the resource
    types installed where the schema is built (e.g. where ``prefect deploy`` runs)."""
    schema["enum"] = sorted(ResourceFactory.resource_types())


class _Strict(BaseModel):
    # Unknown keys are typos; say so instead of ignoring them.
    model_config = ConfigDict(extra="forbid")


class InventoryRef(_Strict):
    """Take a node's hostname/port/username/credentials from a saved NodeInventory block."""

    inventory: str = Field(description="name of the saved NodeInventory block")
    node: str = Field(description="name of the node in that inventory")


class ResourceSpec(_Strict):
    """One resource manager: its type, attribute values and traces."""

    name: str = Field(description="name used to refer to this resource in the description")
    rtype: str = Field(description="resource type, e.g. LinuxNode, LinuxPing (see `nepi-prefect types`)",
                       json_schema_extra=_rtype_choices)
    guid: int | None = Field(default=None, ge=0, description="fixed guid (default: assigned in order)")
    attributes: dict[str, Any] = Field(default_factory=dict,
                                       description="attribute values by name")
    traces: list[str] = Field(default_factory=list, description="traces to enable")
    collect: list[str] = Field(default_factory=list,
                               description="traces to enable and collect into the run directory "
                                           "(a Collector is added for each)")
    from_inventory: InventoryRef | None = Field(
        default=None, description="fill node attributes from a saved NodeInventory block")

    @field_validator("name")
    @classmethod
    def _name_shape(cls, value: str) -> str:
        # Names appear in NAME.ATTR overrides, so they cannot hold a dot.
        if not value or "." in value or "=" in value or value != value.strip():
            raise ValueError("a resource name is a non-empty word without '.', '=' or "
                             "surrounding spaces")
        return value

    _lists = field_validator("traces", "collect", mode="before")(lambda cls, v: _as_list(v))


class ConditionSpec(_Strict):
    """``action`` of ``resources`` waits until every one of ``wait_for`` reached
    ``state``, plus ``time`` counted from when each did (NEPI's register_condition)."""

    resources: list[str] = Field(description="resources whose action waits")
    action: str = Field(default="START", description="START or STOP")
    wait_for: list[str] = Field(description="resources waited for")
    state: str = Field(default="STARTED", description="state name, e.g. READY, STARTED, FINISHED")
    time: str | float | None = Field(default=None, description='delay such as "1s", "500ms", "2m"')

    _lists = field_validator("resources", "wait_for", mode="before")(lambda cls, v: _as_list(v))


class ExperimentDescription(_Strict):
    """A whole experiment: resources, connections, conditions, and what to wait for."""

    name: str | None = Field(default=None, description="experiment id; runs of it share it")
    description: str | None = Field(default=None, description="free text")
    resources: list[ResourceSpec] = Field(default_factory=list)
    connections: list[list[str]] = Field(
        default_factory=list, description="pairs of resource names, e.g. [node, ping]")
    conditions: list[ConditionSpec] = Field(default_factory=list)
    wait_for: list[str] | None = Field(
        default=None, description="resources whose end ends the run (default: every "
                                  "resource that is not a node or a collector)")
    timeout: str | float | None = Field(
        default=None, description='give up (and fail) after this long, e.g. "5m"')

    _lists = field_validator("wait_for", mode="before")(lambda cls, v: _as_list(v))
    # A compact ``topology:`` section (line, star, dumbbell of namespace hosts)
    # becomes plain resources and connections before anything else looks.
    _topology = model_validator(mode="before")(lambda cls, data: expand_topologies(data))
    _addresses = model_validator(mode="after")(check_link_addresses)

    def resource(self, name: str) -> ResourceSpec:
        """The resource called ``name`` (KeyError if there is none)."""
        for res in self.resources:
            if res.name == name:
                return res
        raise KeyError(name)

    @property
    def names(self) -> list[str]:
        return [r.name for r in self.resources]


class SweepSpec(_Strict):
    """A parameter sweep: an experiment run at each point of a grid or list."""

    experiment: str | ExperimentDescription = Field(
        description="the experiment: a path (relative to the sweep file) or inline")
    grid: dict[str, list[Any]] = Field(
        default_factory=dict, description='NAME.ATTR -> values; every combination is a point')
    points: list[dict[str, Any]] = Field(
        default_factory=list, description="explicit points: NAME.ATTR -> value")
    repeat: int = Field(default=1, ge=1, description="runs per point")
    max_concurrency: int = Field(default=4, ge=1, description="experiments running at once")


ActionName = Literal["START", "STOP"]
