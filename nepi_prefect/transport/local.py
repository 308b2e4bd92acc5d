"""The local transport: hostname "localhost" runs commands here, without SSH."""

from __future__ import annotations

import os
import shutil
import subprocess

from nepi_prefect.transport.base import CommandResult, Transport, TransportTimeout
from nepi_prefect.transport.stream import CommandStream, LocalStream


#: longer commands go to bash on stdin (exec refuses an argument over 128 KiB)
_ARG_MAX = 100_000


class LocalTransport(Transport):
    """Runs commands with ``bash -c`` and touches files directly."""

    label = "localhost"

    def connect(self) -> None:
        pass

    def run(self, command: str, timeout: float | None = None) -> CommandResult:
        body = command.encode()
        # an argument over 128 KiB is refused by exec: a long command comes on stdin,
        # read whole (by head, in blocks), and runs with stdin /dev/null as the others
        argv, stdin = ["bash", "-c", command], subprocess.DEVNULL
        if len(body) > _ARG_MAX:
            argv = ["bash", "-c", f'__nepi_c="$(head -c {len(body)})"; eval "$__nepi_c" </dev/null']
            stdin = None
        try:
            proc = subprocess.run(argv, stdin=stdin, input=body if stdin is None else None,
                                  capture_output=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise TransportTimeout(f"localhost: command timed out after {timeout}s") from None
        return CommandResult(proc.stdout.decode(errors="replace"),
                             proc.stderr.decode(errors="replace"), proc.returncode)

    def stream(self, command: str) -> CommandStream:
        return LocalStream(command)

    def read(self, path: str, offset: int = 0, size: int = -1) -> bytes | None:
        try:
            with open(path, "rb") as f:
                f.seek(offset)
                return f.read(size)
        except FileNotFoundError:
            return None

    def size(self, path: str) -> int | None:
        try:
            return os.path.getsize(path)
        except OSError:
            return None

    def write(self, path: str, data: bytes, mode: int | None = None) -> None:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
        if mode is not None:
            os.chmod(path, mode)

    def put(self, local: str, remote: str) -> None:
        os.makedirs(os.path.dirname(remote) or ".", exist_ok=True)
        if os.path.isdir(local):
            shutil.copytree(local, remote, dirs_exist_ok=True)
        else:
            shutil.copy2(local, remote)

    def close(self) -> None:
        pass
