"""What the flows share: reading the description they are given."""

from __future__ import annotations

from typing import Any

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
