"""What the flows share: the API they run on, reading the description they are given."""

from __future__ import annotations

from typing import Any, Callable

from prefect.flows import Flow
from prefect.settings import PREFECT_API_URL, get_current_settings, temporary_settings

from nepi_prefect.orchestration import logins  # noqa: F401  (lends the saved-login loaders)
from nepi_prefect.orchestration import server
from nepi_prefect.spec.io import apply_overrides, read_description
from nepi_prefect.spec.models import ExperimentDescription


class LocalServerFlow(Flow):
    """A Prefect flow that, called in a process with no Prefect API configured, runs
    on nepi-prefect's local server (started if need be, see ``nepi-prefect server``)
    rather than on the temporary API Prefect would start for the process: that one
    dies with the process (or is left behind by a kill), takes seconds to start, and
    the experiment's record could not reach it. Where an API is configured (a worker,
    ``PREFECT_API_URL``, a parent flow), it is a plain Prefect flow."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if get_current_settings().api.url:
            return super().__call__(*args, **kwargs)
        url = server.use_api()   # also for the experiment's recorder, which reads the env
        with temporary_settings(updates={PREFECT_API_URL: url}):
            return super().__call__(*args, **kwargs)


def nepi_flow(**options: Any) -> Callable[[Callable[..., Any]], LocalServerFlow]:
    """``@flow(**options)``, as a :class:`LocalServerFlow`."""
    return lambda fn: LocalServerFlow(fn=fn, **options)


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
