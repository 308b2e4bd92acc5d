"""Many small files in one command: ``find`` keeps those that exist and are small
enough, ``tar`` frames them, ``base64`` makes the stream text-safe for a shell
channel. Used by SSHTransport.read_many and by the node monitor's poll, which
reads the outputs of every app that ended in the same command that saw them end."""

from __future__ import annotations

import base64
import io
import tarfile

#: what the snippet prints instead when the host has no tar or base64
NO_TAR = "NO-TAR"


def bulk_read_snippet(files: str, limit: int) -> str:
    """Shell (bash) that prints, on one line, the base64 tar of the files named by
    the shell words ``files`` that hold at most ``limit`` bytes (or NO_TAR)."""
    return (f"if command -v tar >/dev/null && command -v base64 >/dev/null; then "
            f"find {files} -maxdepth 0 -type f -size -{limit + 1}c -print0 2>/dev/null "
            f"| tar --null -T - -cPf - 2>/dev/null | base64 -w0; else printf {NO_TAR}; fi")


def parse_bulk(line: str, paths: list[str]) -> dict[str, bytes] | None:
    """The files in the snippet's output, by the path they were asked for;
    None if the host could not make the archive."""
    line = line.strip()
    if line == NO_TAR:
        return None
    if not line:
        return {}
    wanted = {p.lstrip("/"): p for p in paths}
    found = {}
    with tarfile.open(fileobj=io.BytesIO(base64.b64decode(line))) as tar:
        for member in tar:
            path = wanted.get(member.name.lstrip("/"))
            f = tar.extractfile(member) if path is not None else None
            if f is not None:
                found[path] = f.read()
    return found
