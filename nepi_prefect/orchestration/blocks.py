"""Prefect Block types for experiments: SSH credentials and a node inventory.

Register them with ``prefect block register -m nepi_prefect.orchestration.blocks``
(or ``-f blocks/nepi_blocks.py``), then save instances from Python or the UI::

    SshCredentials(username="alice", private_key=open("id_ed25519").read()).save("lab-key")
    NodeInventory(nodes={"n1": InventoryNode(hostname="10.0.0.1", credentials="lab-key")}).save("lab")

A LinuxNode whose ``credentials`` attribute is ``"lab-key"`` loads them through
:func:`load_ssh_credentials`; a description resource with
``from_inventory: {inventory: lab, node: n1}`` is filled by :func:`inventory_node_attributes`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from prefect.blocks.core import Block
from prefect.settings import PREFECT_API_URL, temporary_settings
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from nepi_prefect.orchestration import logins  # noqa: F401  (lends these loaders to the transport)
from nepi_prefect.orchestration import server

#: shown by the Prefect UI on the blocks' cards and pages. NEPI's site documents the
#: experiment model (EC, resource managers) these blocks serve.
LOGO_URL = "https://nepi.inria.fr/_static/nepi_logo.png"
DOCS_URL = "https://nepi.inria.fr/"


class SshCredentials(Block):
    """How to log in to experiment hosts over SSH."""

    _block_type_name = "NEPI SSH Credentials"
    _block_type_slug = "nepi-ssh-credentials"
    _logo_url = LOGO_URL
    _documentation_url = DOCS_URL
    _description = "SSH login for nepi-prefect nodes: user name, private key and/or password, known hosts."

    username: str = Field(description="remote user name")
    private_key: SecretStr | None = Field(default=None, description="private key, PEM/OpenSSH text")
    password: SecretStr | None = Field(default=None,
                                       description="password (or the private key's passphrase)")
    known_hosts: str | None = Field(default=None,
                                    description="known_hosts lines that pin the host keys")

    def as_dict(self) -> dict[str, Any]:
        """Plain values, secrets revealed (for the transport only; never log this)."""
        return {
            "username": self.username,
            "private_key": _reveal(self.private_key),
            "password": _reveal(self.password),
            "known_hosts": self.known_hosts,
        }


class InventoryNode(BaseModel):
    """One host of an inventory."""

    model_config = ConfigDict(extra="forbid")

    hostname: str = Field(description="host name or address")
    port: int | None = Field(default=None, ge=1, le=65535, description="SSH port")
    username: str | None = Field(default=None, description="remote user (default: the credentials')")
    credentials: str | None = Field(default=None, description="name of a saved SshCredentials block")


class NodeInventory(Block):
    """Named hosts an experiment can use, each with its SSH settings."""

    _block_type_name = "NEPI Node Inventory"
    _block_type_slug = "nepi-node-inventory"
    _logo_url = LOGO_URL
    _documentation_url = DOCS_URL
    _description = "Hosts for nepi-prefect experiments: hostname, port, user and credentials block, by name."

    nodes: dict[str, InventoryNode] = Field(default_factory=dict, description="nodes by name")

    def node(self, name: str) -> InventoryNode:
        """The node called ``name``; KeyError lists the known ones."""
        try:
            return self.nodes[name]
        except KeyError:
            raise KeyError(f"inventory has no node {name!r}; its nodes: "
                           f"{', '.join(sorted(self.nodes)) or '(none)'}") from None


def _reveal(secret: SecretStr | None) -> str | None:
    return secret.get_secret_value() if secret is not None else None


@contextlib.contextmanager
def _the_api() -> Iterator[None]:
    """Blocks are read from the API experiments record into (``$PREFECT_API_URL``, else
    the local server): never from an ephemeral API Prefect would start, and leave
    running, for one lookup."""
    if PREFECT_API_URL.value():
        yield
        return
    with temporary_settings(updates={PREFECT_API_URL: server.api_url()}):
        yield


def load_ssh_credentials(name: str) -> dict[str, Any]:
    """The saved :class:`SshCredentials` ``name`` as a dict: username,
    private_key (text or None), password (or None), known_hosts (text or None)."""
    with _the_api():
        return SshCredentials.load(name, validate=True).as_dict()


def inventory_node_attributes(inventory: str, node: str) -> dict[str, Any]:
    """LinuxNode attribute values for ``node`` of the saved :class:`NodeInventory` ``inventory``.

    Only what the inventory sets is returned (hostname, port, username, credentials).
    """
    with _the_api():
        entry = NodeInventory.load(inventory, validate=True).node(node)
    values = {"hostname": entry.hostname, "port": entry.port, "username": entry.username,
              "credentials": entry.credentials}
    return {k: v for k, v in values.items() if v is not None}


__all__ = ["SshCredentials", "InventoryNode", "NodeInventory", "load_ssh_credentials",
           "inventory_node_attributes"]
