"""Lend the transport the loaders of saved logins (Prefect blocks), on import.

:mod:`nepi_prefect.transport.credentials` knows nothing of Prefect; this module
registers loaders there that read the :mod:`~nepi_prefect.orchestration.blocks`.
The blocks module itself is imported on first use: Prefect's block machinery
takes over a second to import, and most experiments name no saved login.
Imported by the blocks module, the Prefect recorder, the flows and the CLI.
"""

from __future__ import annotations

from typing import Any

from nepi_prefect.transport.credentials import (
    register_credentials_resolver,
    register_inventory_resolver,
)


def load_ssh_credentials(name: str) -> dict[str, Any]:
    """The saved ``SshCredentials`` block ``name`` as a dict (secrets revealed)."""
    from nepi_prefect.orchestration.blocks import load_ssh_credentials as load
    return load(name)


def inventory_node_attributes(inventory: str, node: str) -> dict[str, Any]:
    """LinuxNode attribute values of ``node`` in the saved ``NodeInventory`` ``inventory``."""
    from nepi_prefect.orchestration.blocks import inventory_node_attributes as load
    return load(inventory, node)


register_credentials_resolver(load_ssh_credentials)
register_inventory_resolver(inventory_node_attributes)
