"""What the flows share: reading the description they are given."""

from __future__ import annotations

from typing import Any, Callable

from nepi_prefect.orchestration import logins  # noqa: F401  (lends the saved-login loaders)
from nepi_prefect.spec.io import apply_overrides, read_description
from nepi_prefect.spec.models import ExperimentDescription


class ExperimentFailed(RuntimeError):
    """The experiment ended FAILED; raising it makes the flow run Failed."""


def resolve_description(description: ExperimentDescription | dict | None,
                        description_file: str | None,
                        overrides: dict[str, Any] | None = None) -> ExperimentDescription:
    """The description given inline or by path, with ``overrides`` applied."""
    if (description is None) == (description_file is None):
        raise ValueError("give exactly one of description or description_file")
    if description_file is not None:
        desc = read_description(description_file)
    elif isinstance(description, dict):
        desc = ExperimentDescription.model_validate(description)
    else:
        desc = description
    return apply_overrides(desc, overrides, source=description_file)


def run_name(experiment: str | None, overrides: dict[str, Any] | None = None,
             rep: int | None = None) -> str:
    """A flow run's name from the experiment and its parameters, e.g. ``ping-interval=0.2-r1``.

    Each override is shown by its attribute name (``ping.interval`` -> ``interval``),
    or by NAME.ATTR where two resources' attributes share a name.
    """
    keys = list(overrides or {})
    attrs = [key.rpartition(".")[2] for key in keys]
    parts = [experiment or "experiment"]
    parts += [f"{attr if attrs.count(attr) == 1 else key}={overrides[key]}"
              for key, attr in zip(keys, attrs)]
    if rep is not None:
        parts.append(f"r{rep}")
    return "-".join(parts)


def description_name(parameters: dict[str, Any]) -> str | None:
    """The experiment's name from a flow run's parameters (None if it cannot be read:
    the flow itself then says what is wrong with them)."""
    desc = parameters.get("description")
    try:
        if desc is None and parameters.get("description_file"):
            return read_description(parameters["description_file"]).name
    except Exception:  # noqa: BLE001  (a name is no place to report a bad file)
        return None
    return desc.get("name") if isinstance(desc, dict) else getattr(desc, "name", None)


def campaign_run_name(kind: str) -> Callable[[], str]:
    """A ``flow_run_name`` for a campaign flow: its campaign's name if given, else
    ``<experiment>-<kind>`` (e.g. ``ping-sweep``), not Prefect's random adjective-animal."""
    def name() -> str:
        from prefect.runtime import flow_run

        params = flow_run.parameters
        return params.get("campaign") or f"{description_name(params) or 'experiment'}-{kind}"
    return name
