"""Registration entry for nepi-prefect's Prefect Block types.

    prefect block register -f blocks/nepi_blocks.py
    # or, from the installed package:
    prefect block register -m nepi_prefect.orchestration.blocks
"""

from nepi_prefect.orchestration.blocks import InventoryNode, NodeInventory, SshCredentials

__all__ = ["SshCredentials", "NodeInventory", "InventoryNode"]
