"""Saved SSH logins, by name: credentials and node inventories.

Where they are saved is not the transport's business. An upper layer lends
the loaders by registering them here: the Prefect bridge
(``nepi_prefect.orchestration.logins``) registers its block loaders when it is
imported, which the ``nepi-prefect`` CLI, the flows, the Prefect recorder and
the blocks module do. Without a registered loader, naming saved credentials is a clear error.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

#: loader(credentials name) -> username, private_key, password, known_hosts
CredentialsResolver = Callable[[str], Mapping[str, Any]]
#: loader(inventory name, node name) -> hostname, port, username, credentials
InventoryResolver = Callable[[str, str], Mapping[str, Any]]

_KEYS = ("username", "private_key", "password", "known_hosts")
_HINT = ("import nepi_prefect.orchestration.logins (the nepi-prefect CLI, the flows and the "
         "Prefect recorder do), or register a loader with "
         "nepi_prefect.transport.credentials.{}()")


class CredentialsError(RuntimeError):
    """Saved credentials or an inventory could not be loaded."""


class Resolvers:
    """The loaders lent by an upper layer; one instance per process (tests make their own)."""

    def __init__(self) -> None:
        self.credentials: CredentialsResolver | None = None
        self.inventory: InventoryResolver | None = None


_resolvers = Resolvers()


def register_credentials_resolver(resolver: CredentialsResolver | None) -> CredentialsResolver | None:
    """Load saved credentials with ``resolver`` from now on; returns the previous one."""
    previous, _resolvers.credentials = _resolvers.credentials, resolver
    return previous


def register_inventory_resolver(resolver: InventoryResolver | None) -> InventoryResolver | None:
    """Load inventory nodes with ``resolver`` from now on; returns the previous one."""
    previous, _resolvers.inventory = _resolvers.inventory, resolver
    return previous


def resolve_credentials(name: str) -> dict[str, Any]:
    """The saved SSH credentials ``name``: username, private_key, password, known_hosts.

    Missing keys are None. Errors name the credentials, never their content.
    """
    resolver = _resolvers.credentials
    if resolver is None:
        raise CredentialsError(f"credentials block {name!r} needs the Prefect blocks: "
                               + _HINT.format("register_credentials_resolver"))
    try:
        found = dict(resolver(name) or {})
    except Exception as exc:
        raise CredentialsError(
            f"credentials {name!r} could not be loaded: {type(exc).__name__}") from None
    return {key: found.get(key) for key in _KEYS}


def resolve_inventory_node(inventory: str, node: str) -> dict[str, Any]:
    """LinuxNode attribute values of ``node`` in the saved inventory ``inventory``.

    The loader's own errors (an unknown node, say) pass through: they name no secret.
    """
    resolver = _resolvers.inventory
    if resolver is None:
        raise CredentialsError(f"inventory block {inventory!r} needs the Prefect blocks: "
                               + _HINT.format("register_inventory_resolver"))
    return dict(resolver(inventory, node) or {})
