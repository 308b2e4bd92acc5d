"""Emulated networks on this machine: hosts, switches and shaped links in network
namespaces (see docs/netns.md)."""
