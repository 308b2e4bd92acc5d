"""Saved SSH credentials, by name (a Prefect block, loaded lazily).

The transport layer knows nothing of Prefect: the blocks module is imported
only when a node names saved credentials.
"""

from __future__ import annotations

import importlib
from typing import Any

_KEYS = ("username", "private_key", "password", "known_hosts")


class CredentialsError(RuntimeError):
    """Saved credentials could not be loaded."""


def resolve_credentials(name: str) -> dict[str, Any]:
    """The saved SSH credentials ``name``: username, private_key, password, known_hosts.

    Missing keys are None. Errors name the credentials, never their content.
    """
    try:
        blocks = importlib.import_module("nepi_prefect.orchestration.blocks")
    except ImportError as exc:
        raise CredentialsError(
            f"credentials {name!r}: the Prefect blocks module is not available ({exc})") from None
    try:
        found = blocks.load_ssh_credentials(name)
    except Exception as exc:
        raise CredentialsError(
            f"credentials {name!r} could not be loaded: {type(exc).__name__}") from None
    found = dict(found or {})
    return {key: found.get(key) for key in _KEYS}
