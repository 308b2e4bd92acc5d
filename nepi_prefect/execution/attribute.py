"""Resource attributes: typed, flagged, validated settings of a resource manager.

``Attribute``, ``Types`` and ``Flags`` keep NEPI's names and values, so RMs
written for NEPI port unchanged. Values are checked with pydantic when they
are set, and the error names what was wrong and what is valid.
"""

from __future__ import annotations

import copy
from functools import lru_cache
from typing import Any, Callable, Sequence

from pydantic import ConfigDict, TypeAdapter, ValidationError

from nepi_prefect.execution.errors import AttributeValueError, listing


class Types:
    """Value types an attribute can hold."""

    String = "STRING"
    Bool = "BOOL"
    Enumerate = "ENUM"
    Double = "DOUBLE"
    Integer = "INTEGER"


class Flags:
    """Bit flags that say how an attribute may be used."""

    NoFlags = 0x00
    #: The value is hidden from the user.
    NoRead = 1
    #: The user cannot change the value.
    NoWrite = 1 << 1
    #: The value can only change before the resource is deployed.
    Design = 1 << 2
    #: The value is used at deployment time for the initial configuration.
    Construct = 1 << 3
    #: The value is a secret (password, key): it never reaches logs or artifacts.
    Credential = (1 << 4) | Design
    #: The value filters which resource is discovered.
    Filter = (1 << 5) | Design
    #: Reserved for the RM's own use.
    Reserved = 1 << 6
    #: Applies to every resource of the type.
    Global = 1 << 7
    #: The resource cannot deploy without a value: ``validate`` and ``deploy`` refuse it.
    Required = 1 << 8


_FLAG_NAMES = {
    "NoRead": Flags.NoRead,
    "NoWrite": Flags.NoWrite,
    "Design": Flags.Design,
    "Construct": Flags.Construct,
    "Credential": 1 << 4,
    "Filter": 1 << 5,
    "Reserved": Flags.Reserved,
    "Global": Flags.Global,
    "Required": Flags.Required,
}


def flag_names(flags: int) -> list[str]:
    """Names of the flags set in ``flags`` (for ``describe``)."""
    return [name for name, bit in _FLAG_NAMES.items() if flags & bit]


@lru_cache(maxsize=None)
def _adapter(type_: str) -> TypeAdapter:
    python_type = {
        Types.String: str,
        Types.Enumerate: str,
        Types.Bool: bool,
        Types.Integer: int,
        Types.Double: float,
    }[type_]
    # A number given to a String attribute (hostname=123) is refused rather than
    # silently turned into text: it is nearly always a mistake in the script.
    if python_type is str:
        return TypeAdapter(str, config=ConfigDict(strict=True))
    if python_type is int:
        return TypeAdapter(int)
    return TypeAdapter(python_type)


_TYPE_WORDS = {
    Types.String: "a string",
    Types.Enumerate: "one of the allowed values",
    Types.Bool: "a boolean (True/False)",
    Types.Integer: "an integer",
    Types.Double: "a number",
}


class Attribute:
    """A named, typed setting of a resource manager.

    :param name: the attribute's name, as used in ``ec.set(guid, name, value)``
    :param help: one line for users (shown by ``nepi-prefect describe``)
    :param type: one of :class:`Types`
    :param flags: :class:`Flags` bits, combined with ``|``
    :param default: the value before anything is set
    :param allowed: the valid values of an ``Enumerate``
    :param range: ``(min, max)`` for numbers, either end may be ``None``
    :param set_hook: ``hook(old, new) -> value`` called when the value changes
    """

    def __init__(self, name: str, help: str, type: str = Types.String,
                 flags: int = Flags.NoFlags, default: Any = None,
                 allowed: Sequence[Any] | None = None,
                 range: tuple[Any, Any] | None = None,
                 set_hook: Callable[[Any, Any], Any] | None = None):
        if type not in _TYPE_WORDS:
            raise ValueError(f"attribute {name!r}: unknown type {type!r}; valid: {listing(_TYPE_WORDS)}")
        if type == Types.Enumerate and not allowed:
            raise ValueError(f"attribute {name!r}: an Enumerate needs its allowed values")
        self.name = name
        self.help = help
        self.type = type
        self.flags = flags or Flags.NoFlags
        self.allowed = list(allowed) if allowed else None
        self.range = range
        self.set_hook = set_hook
        self._default = None if default is None else self.validate(default)
        self._value = self._default
        self._changed = False

    # NEPI's accessors --------------------------------------------------
    @property
    def default(self) -> Any:
        return self._default

    @property
    def value(self) -> Any:
        return self._value

    @value.setter
    def value(self, value: Any) -> None:
        value = self.validate(value)
        if self.set_hook:
            value = self.set_hook(self._value, value)
        self._value = value
        self._changed = True

    def has_changed(self) -> bool:
        return self._changed

    def has_flag(self, flag: int) -> bool:
        return (self.flags & flag) == flag

    @property
    def is_secret(self) -> bool:
        return bool(self.flags & (1 << 4))

    def copy(self) -> "Attribute":
        return copy.copy(self)

    # validation ----------------------------------------------------------
    def validate(self, value: Any) -> Any:
        """The value converted to this attribute's type, or AttributeValueError."""
        if value is None:
            return None
        if self.type == Types.Bool and isinstance(value, str):
            value = value.strip().lower()
        if self.type in (Types.Integer, Types.Double) and isinstance(value, bool):
            self._reject(value, f"{_TYPE_WORDS[self.type]}, not a boolean")
        if self.type == Types.String and isinstance(value, bool):
            self._reject(value, "a string, not a boolean")
        try:
            converted = _adapter(self.type).validate_python(value)
        except ValidationError:
            self._reject(value, _TYPE_WORDS[self.type])
        if self.allowed is not None and converted not in self.allowed:
            self._reject(value, f"one of {', '.join(map(repr, self.allowed))}")
        if self.range is not None:
            low, high = self.range
            if (low is not None and converted < low) or (high is not None and converted > high):
                self._reject(value, f"a value between {low} and {high}")
        return converted

    def _reject(self, value: Any, expected: str) -> None:
        shown = "********" if self.is_secret else repr(value)
        raise AttributeValueError(f"attribute {self.name!r}: got {shown}, expected {expected}")

    def __repr__(self) -> str:
        return f"Attribute({self.name!r}, type={self.type}, default={self._default!r})"
