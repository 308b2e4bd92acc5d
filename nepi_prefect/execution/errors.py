"""Errors the engine raises at the call that gave bad input."""

from __future__ import annotations

from typing import Iterable


class ExperimentError(Exception):
    """Base class of every error nepi-prefect raises on purpose."""


class InvalidInputError(ExperimentError, ValueError):
    """A call was given something it cannot accept; the message says what is valid."""


class UnknownResourceTypeError(InvalidInputError):
    pass


class UnknownResourceError(InvalidInputError, KeyError):
    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class UnknownAttributeError(InvalidInputError, KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


class AttributeValueError(InvalidInputError):
    pass


class UnknownTraceError(InvalidInputError, KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


class ExperimentStateError(ExperimentError, RuntimeError):
    """The experiment or a resource is in a state where the call cannot act."""


def listing(names: Iterable[object]) -> str:
    """A short, sorted, human list of valid choices."""
    items = sorted(str(n) for n in names)
    return ", ".join(items) if items else "(none)"
