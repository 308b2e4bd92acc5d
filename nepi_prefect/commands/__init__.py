"""The bodies of the nepi-prefect subcommands, one module per area; cli.py registers them."""
