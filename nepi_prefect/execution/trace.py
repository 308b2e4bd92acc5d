"""Traces: named outputs a resource can collect (stdout, pcap, ping output)."""

from __future__ import annotations


class TraceAttr:
    """What ``ec.trace(guid, name, attr)`` returns about a trace."""

    #: the whole content
    ALL = "all"
    #: ``block`` bytes starting after ``offset`` blocks
    STREAM = "stream"
    #: the path of the trace file on the host
    PATH = "path"
    #: the size of the trace in bytes
    SIZE = "size"

    VALUES = (ALL, STREAM, PATH, SIZE)


class Trace:
    """A trace a resource type offers; ``enabled`` traces are collected."""

    def __init__(self, name: str, help: str, enabled: bool = False):
        self.name = name
        self.help = help
        self.enabled = enabled

    def __repr__(self) -> str:
        return f"Trace({self.name!r}, enabled={self.enabled})"
