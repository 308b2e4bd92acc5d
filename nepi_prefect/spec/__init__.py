"""Experiment descriptions: pydantic models, validation, YAML/JSON load and save."""

from nepi_prefect.spec import io as _io  # noqa: F401  (registers save/load with the engine)
from nepi_prefect.spec.models import (
    ConditionSpec,
    ExperimentDescription,
    InventoryRef,
    ResourceSpec,
    SweepSpec,
)
from nepi_prefect.spec.validate import DescriptionError, Issue, validate_description

__all__ = ["ConditionSpec", "ExperimentDescription", "InventoryRef", "ResourceSpec",
           "SweepSpec", "DescriptionError", "Issue", "validate_description"]
