"""Collector: pulls one trace of every connected RM into the run's results directory.

It acts at release. Applications release after their connected Collectors
(``LinuxApplication.release_after``), so the files are still on the host,
even when the experiment failed and the engine releases everything at once.
Each file lands in ``<ec.run_dir>/[<subDir>/]<rtype>-<guid>/<trace or rename>``
and its local path is recorded in the source RM's ``collected[trace]``.
"""

from __future__ import annotations

import os
import re
from typing import Any, Callable

from nepi_prefect.execution.attribute import Attribute, Flags, Types
from nepi_prefect.execution.errors import AttributeValueError, UnknownTraceError
from nepi_prefect.execution.resource import (
    ResourceManager,
    ResourceState,
    ResourceState2str,
    clsinit_copy,
)
from nepi_prefect.execution.trace import TraceAttr
from nepi_prefect.transport.base import Transport
from nepi_prefect.util.files import atomic_file

#: bytes read from the host per request when copying a trace file
CHUNK = 4 * 1024 * 1024
_SAFE_NAME = re.compile(r"^[A-Za-z0-9._-]+$")


def _check_name(what: str) -> Callable[[str | None, str | None], str | None]:
    """A set_hook that rejects names that would leave the results directory."""
    def hook(_old: str | None, new: str | None) -> str | None:
        if new and (not all(_SAFE_NAME.match(p) for p in new.split("/")) or ".." in new.split("/")):
            raise AttributeValueError(f"attribute {what!r}: got {new!r}; use letters, digits, '.', '_', '-' (and '/')")
        return new
    return hook


@clsinit_copy
class Collector(ResourceManager):
    """Collects a trace of its connected RMs into the local results directory at release."""

    _rtype = "Collector"
    _help = ("At release, copies trace 'traceName' of every connected RM to "
             "<run_dir>/[subDir/]<rtype>-<guid>/<traceName or rename>")
    _platform = "all"

    @classmethod
    def _register_attributes(cls) -> None:
        D = Flags.Design
        cls._register_attribute(Attribute(
            "traceName", "Name of the trace to collect (e.g. stdout, pcap)", flags=D,
            set_hook=_check_name("traceName")))
        cls._register_attribute(Attribute(
            "subDir", "Directory under the run directory to put the files in", flags=D,
            set_hook=_check_name("subDir")))
        cls._register_attribute(Attribute(
            "rename", "File name to store the trace under (default: the trace name)", flags=D,
            set_hook=_check_name("rename")))
        cls._register_attribute(Attribute(
            "stopSources", "Stop sources that still run (gracefully) before collecting, so "
            "their output is complete", type=Types.Bool, default=True, flags=D))
        # A collector must never abort the experiment it is documenting.
        cls._register_attribute(Attribute(
            "critical", "Whether a failure of the collector fails the experiment",
            type=Types.Bool, default=False, flags=D))

    def __init__(self, ec, guid):
        super().__init__(ec, guid)
        #: local path of each collected file, by source guid
        self.files: dict[int, str] = {}
        #: traces that could not be written, one line each (the summary lists them)
        self._lost: list[str] = []

    def lost_results(self) -> list[str]:
        return list(self._lost)

    # -- life cycle ----------------------------------------------------------------
    def do_deploy(self) -> None:
        name = self.get("traceName")
        if not name:
            raise ValueError(f"Collector {self.guid}: set 'traceName'")
        for rm in self.sources():
            if name in {t.name for t in rm.get_traces()}:
                rm.enable_trace(name)
            else:
                self.warning(f"{rm.get_rtype()} {rm.guid} has no trace {name!r}; "
                             f"it will be skipped")
        super().do_deploy()

    def do_release(self) -> None:
        try:
            if self.get("traceName"):
                self.collect()
        finally:
            super().do_release()

    def reattach(self, record: dict[str, Any]) -> bool:
        """Taken up by ``attach``: nothing of it runs, its work is at release."""
        return True

    # -- collection ----------------------------------------------------------------
    def sources(self) -> list[ResourceManager]:
        """The connected RMs whose trace this collector gathers."""
        return [rm for rm in self.get_connected() if not isinstance(rm, Collector)]

    def target_path(self, rm: ResourceManager) -> str:
        """Where the trace of ``rm`` is stored locally."""
        parts = [self.ec.run_dir]
        if self.get("subDir"):
            parts.append(self.get("subDir"))
        parts += [f"{rm.get_rtype()}-{rm.guid}", self.get("rename") or self.get("traceName")]
        return os.path.join(*parts)

    def collect(self) -> dict[int, str]:
        """Copy the trace of every source now; a source that fails is logged and skipped."""
        for rm in self.sources():
            try:
                path = self._collect_one(rm)
            except Exception as exc:  # one broken source must not lose the others' traces
                what = f"{self.get('traceName')!r} of {rm.get_rtype()} {rm.guid}"
                self.warning(f"could not collect {what}: {exc}")
                self._lost.append(f"{what} (into {self.target_path(rm)}): {exc}")
                continue
            if path:
                self.files[rm.guid] = path
        return dict(self.files)

    def _collect_one(self, rm: ResourceManager) -> str | None:
        name = self.get("traceName")
        try:
            rm.get_trace(name)
        except UnknownTraceError:
            self.warning(f"{rm.get_rtype()} {rm.guid} has no trace {name!r}")
            return None
        if self.get("stopSources") and rm.state == ResourceState.STARTED:
            self._stop_source(rm)
        path = self.target_path(rm)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if not self._copy(rm, name, path):
            _remove_if_empty(os.path.dirname(path))
            self.warning(f"trace {name!r} of {rm.get_rtype()} {rm.guid} "
                         f"({ResourceState2str.get(rm.state)}) does not exist; nothing collected")
            return None
        rm.collected[name] = path
        self.info(f"collected {name!r} of {rm.get_rtype()} {rm.guid} into {path}")
        return path

    def _stop_source(self, rm: ResourceManager) -> None:
        try:
            self.ec.stop(rm.guid)
        except Exception as exc:
            self.warning(f"could not stop {rm.get_rtype()} {rm.guid} before collecting: {exc}")

    def _copy(self, rm: ResourceManager, name: str, path: str) -> bool:
        """Write the trace to ``path``; False if the source has none."""
        remote = _remote_file(rm, name)
        if remote is not None:
            transport, remote_path = remote
            return _download(transport, remote_path, path)
        content = rm.trace(name, TraceAttr.ALL)
        if content is None:
            return False
        data = content if isinstance(content, bytes) else str(content).encode()
        with atomic_file(path) as out:
            out.write(data)
        return True


def _remove_if_empty(directory: str) -> None:
    try:
        os.rmdir(directory)
    except OSError:
        pass  # not empty: another trace of this RM is there


def _remote_file(rm: ResourceManager, name: str) -> tuple[Transport, str] | None:
    """(transport, path) when the trace is a file on a node: copied byte for byte."""
    trace_path = getattr(rm, "trace_path", None)
    node = getattr(rm, "node", None)
    if trace_path is None or node is None or getattr(node, "_transport", None) is None:
        return None
    path = trace_path(name)
    return (node.transport, path) if path else None


def _download(transport: Transport, remote: str, local: str) -> bool:
    """Copy a host file in chunks (pcaps can be large); False if it is missing."""
    try:
        with atomic_file(local) as out:  # a failed copy leaves no partial file behind
            offset = 0
            while True:
                data = transport.read(remote, offset, CHUNK)
                if data is None:
                    break
                out.write(data)
                offset += len(data)
                if len(data) < CHUNK:
                    break
            if offset == 0 and transport.size(remote) is None:
                raise _Missing(remote)
    except _Missing:
        return False
    return True


class _Missing(Exception):
    """The host has no such file (nothing to keep)."""
