"""SSH transport: ONE persistent paramiko connection per host.

Why it looks like this: opening an exec channel costs ~100 ms on a typical
sshd (a fork and a login-shell start), while a command sent to a shell that
is already running costs about a millisecond. So the transport keeps a small
pool of persistent ``bash`` processes, one per session channel, and sends
each command to an idle one, framed by end markers (transport/pool.py,
ssh_shell.py). The pool size bounds the concurrent channels (sshd's
MaxSessions is 10 by default; SFTP uses one more).
Files move over one SFTP session. A dead connection is reopened the next time
it is used.
"""

from __future__ import annotations

import errno
import logging
import os
import shlex
import socket
import stat
import threading
import time
from dataclasses import dataclass

import paramiko

from nepi_prefect.transport.base import CommandResult, Transport, TransportError
from nepi_prefect.transport.bulk import bulk_read_snippet, parse_bulk
from nepi_prefect.transport.pool import ShellPool, ShellRefused
from nepi_prefect.transport.ssh_shell import ChannelShell
from nepi_prefect.transport.stream import ChannelStream, CommandStream

# paramiko logs tracebacks for failures this module reports itself, clearly
logging.getLogger("paramiko").setLevel(logging.CRITICAL)


@dataclass
class SSHConfig:
    """How to reach a host. ``password`` and ``pkey`` are secrets: never shown."""

    host: str
    port: int = 22
    username: str | None = None
    key_filename: str | None = None
    pkey: paramiko.PKey | None = None
    password: str | None = None
    known_hosts: str | None = "~/.ssh/known_hosts"
    known_hosts_text: str | None = None
    accept_unknown: bool = False
    connect_timeout: float = 10.0
    max_channels: int = 8
    gateway: str | None = None
    gateway_user: str | None = None
    gateway_port: int = 22

    def __repr__(self) -> str:  # keep secrets out of any repr
        return f"SSHConfig({self.username}@{self.host}:{self.port})"


class _WarnAndAdd(paramiko.MissingHostKeyPolicy):
    """acceptUnknownHostKeys: trust a key never seen before, for this connection only."""

    def missing_host_key(self, client, hostname, key):
        client.get_host_keys().add(hostname, key.get_name(), key)


class SSHTransport(Transport):
    """A thread-safe, self-healing connection to one host over SSH."""

    def __init__(self, config: SSHConfig):
        self.config = config
        self.label = f"{config.username or ''}{'@' if config.username else ''}{config.host}:{config.port}"
        self._lock = threading.RLock()
        self._client: paramiko.SSHClient | None = None
        self._gw_client: paramiko.SSHClient | None = None
        self._sftp: paramiko.SFTPClient | None = None
        self._sftp_lock = threading.Lock()
        self._pool: ShellPool[ChannelShell] = ShellPool(config.max_channels, self._open_shell,
                                                  self._ensure_connected)

    # -- connection ------------------------------------------------------
    def connect(self) -> None:
        self._ensure_connected()

    def warm(self, sessions: int) -> None:
        """Open up to ``sessions`` shells at once, in background threads: each costs
        the host a shell start (~100 ms) that would otherwise come one at a time."""
        count = min(sessions, self._pool.size) - self._pool.count
        if count <= 0:
            return
        gate = threading.Barrier(count, timeout=self.config.connect_timeout)

        def one() -> None:
            try:
                shell = self._pool.acquire()
            except Exception:
                return  # warming is best effort; run() reports real trouble
            try:
                gate.wait()  # hold it until all are open, so each thread opens its own
            except threading.BrokenBarrierError:
                pass
            finally:
                self._pool.give_back(shell)

        for i in range(count):
            threading.Thread(target=one, name=f"nepi-warm-{self.label}-{i}", daemon=True).start()

    def _ensure_connected(self) -> paramiko.Transport:
        with self._lock:
            if self._client is not None:
                tr = self._client.get_transport()
                if tr is not None and tr.is_active():
                    return tr
                self._drop()
            self._client = self._open()
            return self._client.get_transport()

    def _new_client(self) -> paramiko.SSHClient:
        cfg = self.config
        client = paramiko.SSHClient()
        if cfg.known_hosts:
            path = os.path.expanduser(cfg.known_hosts)
            if os.path.exists(path):
                client.load_host_keys(path)
        if cfg.known_hosts_text:
            keys = client.get_host_keys()
            for line in cfg.known_hosts_text.splitlines():
                entry = paramiko.hostkeys.HostKeyEntry.from_line(line)
                if entry is not None:
                    for name in entry.hostnames:
                        keys.add(name, entry.key.get_name(), entry.key)
        client.set_missing_host_key_policy(
            _WarnAndAdd() if cfg.accept_unknown else paramiko.RejectPolicy())
        return client

    def _open(self) -> paramiko.SSHClient:
        cfg = self.config
        deadline = time.monotonic() + cfg.connect_timeout
        sock = None
        if cfg.gateway:
            self._gw_client = self._connect_client(
                cfg.gateway, cfg.gateway_port, cfg.gateway_user or cfg.username,
                self._tcp(cfg.gateway, cfg.gateway_port, deadline), deadline)
            try:
                sock = self._gw_client.get_transport().open_channel(
                    "direct-tcpip", (cfg.host, cfg.port), ("127.0.0.1", 0),
                    timeout=self._left(deadline))
            except Exception as exc:
                raise TransportError(
                    f"cannot reach {cfg.host}:{cfg.port} through gateway {cfg.gateway}: "
                    f"{_reason(exc, cfg.connect_timeout)}", "unreachable") from None
        else:
            sock = self._tcp(cfg.host, cfg.port, deadline)
        client = self._connect_client(cfg.host, cfg.port, cfg.username, sock, deadline)
        client.get_transport().set_keepalive(15)
        return client

    def _left(self, deadline: float) -> float:
        return max(0.1, deadline - time.monotonic())

    def _tcp(self, host: str, port: int, deadline: float) -> socket.socket:
        try:
            return socket.create_connection((host, port), timeout=self._left(deadline))
        except Exception as exc:
            raise TransportError(
                f"cannot connect to {host}:{port}: {_reason(exc, self.config.connect_timeout)}",
                "unreachable") from None

    def _connect_client(self, host: str, port: int, username: str | None, sock,
                        deadline: float) -> paramiko.SSHClient:
        cfg = self.config
        client = self._new_client()
        left = self._left(deadline)
        # The banner/auth waits count against what is left of connectTimeout,
        # so a port that accepts and never speaks fails in time too.
        sock.settimeout(left)
        has_secret = bool(cfg.pkey or cfg.key_filename or cfg.password)
        try:
            client.connect(
                host, port=port, username=username, pkey=cfg.pkey,
                key_filename=os.path.expanduser(cfg.key_filename) if cfg.key_filename else None,
                password=cfg.password, sock=sock, timeout=left + 1, banner_timeout=left,
                auth_timeout=left, channel_timeout=left, allow_agent=not has_secret,
                look_for_keys=not has_secret)
        except paramiko.BadHostKeyException as exc:
            _close_quietly(client, sock)
            raise TransportError(
                f"host key of {host}:{port} has CHANGED ({exc.key.get_name()} "
                f"{exc.key.fingerprint}, expected {exc.expected_key.fingerprint}): "
                f"refusing to connect (possible man-in-the-middle); fix known_hosts",
                "host-key") from None
        except Exception as exc:
            _close_quietly(client, sock)
            reason = _reason(exc, cfg.connect_timeout)
            if time.monotonic() >= deadline - 0.05 and "timed out" not in reason:
                reason = f"no SSH answer within {cfg.connect_timeout}s ({reason})"
            raise TransportError(
                f"cannot connect to {username or ''}{'@' if username else ''}{host}:{port}: "
                f"{reason}", _kind(exc)) from None
        return client

    def _drop(self) -> None:
        """Forget the connection and everything on it (the caller holds _lock)."""
        self._pool.close_idle(forget_busy=True)
        with self._sftp_lock:
            if self._sftp is not None:
                try:
                    self._sftp.close()
                except Exception:
                    pass
            self._sftp = None
        for client in (self._client, self._gw_client):
            if client is not None:
                client.close()
        self._client = self._gw_client = None

    def close(self) -> None:
        with self._lock:
            self._drop()

    # -- commands ----------------------------------------------------------
    def run(self, command: str, timeout: float | None = None) -> CommandResult:
        return self._pool.run(command, timeout, self.label, lambda exc: (
            str(exc) if isinstance(exc, TransportError) and exc.kind != "lost" else
            f"connection lost while running a command: {_reason(exc, timeout)}"))

    def stream(self, command: str) -> CommandStream:
        """``command`` on its own exec channel of this connection; it prints its shell's
        pid (the process group to kill) before it starts (see transport.stream)."""
        tr = self._ensure_connected()
        try:
            chan = tr.open_session(timeout=self.config.connect_timeout)
            chan.exec_command(f"echo $$; {command}")
            return ChannelStream(chan, lambda kill: self.run(kill, timeout=30),
                                 self.config.connect_timeout)
        except (paramiko.SSHException, OSError) as exc:
            raise TransportError(f"{self.label}: cannot start a streamed command: "
                                 f"{_reason(exc, self.config.connect_timeout)}") from None

    def _open_shell(self, tr: paramiko.Transport) -> ChannelShell:
        try:
            return ChannelShell(tr, self.config.connect_timeout)
        except paramiko.ChannelException:
            raise ShellRefused() from None  # sshd's MaxSessions: live with fewer
        except Exception as exc:
            raise TransportError(f"{self.label}: cannot open a channel: {_reason(exc, None)}") from None

    # -- files (one SFTP session) ---------------------------------------------
    def _with_sftp(self, op):
        """Run ``op(sftp)`` under the SFTP lock; reconnect once if the session died."""
        for attempt in (1, 2):
            self._ensure_connected()
            try:
                with self._sftp_lock:
                    if self._sftp is None:
                        self._sftp = self._client.open_sftp()
                    return op(self._sftp)
            except (EOFError, paramiko.SSHException, socket.error) as exc:
                if isinstance(exc, IOError) and getattr(exc, "errno", None):
                    raise
                with self._lock:
                    self._drop()
                if attempt == 2:
                    raise TransportError(f"{self.label}: SFTP failed: {_reason(exc, None)}") from None

    def read(self, path: str, offset: int = 0, size: int = -1) -> bytes | None:
        def op(sftp: paramiko.SFTPClient):
            try:
                with sftp.open(path, "rb") as f:
                    f.seek(offset)
                    if size < 0:
                        f.prefetch()
                        return f.read()
                    return f.read(size)
            except IOError as exc:
                if exc.errno == errno.ENOENT:
                    return None
                raise
        return self._with_sftp(op)

    def read_many(self, paths: list[str], limit: int = 1 << 20) -> dict[str, bytes]:
        """One command per 200 files (see transport.bulk)."""
        found: dict[str, bytes] = {}
        for i in range(0, len(paths), 200):
            chunk = paths[i:i + 200]
            script = bulk_read_snippet(" ".join(shlex.quote(p) for p in chunk), limit)
            out = self.run(script, timeout=max(60.0, self.config.connect_timeout)).stdout
            files = parse_bulk(out, chunk)
            found.update(super().read_many(chunk, limit) if files is None else files)
        return found

    def size(self, path: str) -> int | None:
        def op(sftp: paramiko.SFTPClient):
            try:
                return sftp.stat(path).st_size
            except IOError as exc:
                if exc.errno == errno.ENOENT:
                    return None
                raise
        return self._with_sftp(op)

    def write(self, path: str, data: bytes, mode: int | None = None) -> None:
        def op(sftp: paramiko.SFTPClient):
            with sftp.open(path, "wb") as f:
                f.set_pipelined(True)
                f.write(data)
            if mode is not None:
                sftp.chmod(path, mode)
        self._with_sftp(op)

    def put(self, local: str, remote: str) -> None:
        def op(sftp: paramiko.SFTPClient):
            if not os.path.isdir(local):
                sftp.put(local, remote)
                sftp.chmod(remote, stat.S_IMODE(os.stat(local).st_mode))
                return
            for root, _dirs, files in os.walk(local):
                rel = os.path.relpath(root, local)
                target = remote if rel == "." else f"{remote}/{rel}"
                try:
                    sftp.mkdir(target)
                except IOError:
                    pass  # exists already
                for name in files:
                    src = os.path.join(root, name)
                    sftp.put(src, f"{target}/{name}")
                    sftp.chmod(f"{target}/{name}", stat.S_IMODE(os.stat(src).st_mode))
        self._with_sftp(op)


def _reason(exc: BaseException, timeout: float | None) -> str:
    """A short, secret-free reason for a connection failure."""
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return f"timed out after {timeout}s" if timeout else "timed out"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, paramiko.AuthenticationException):
        return "authentication failed"
    if isinstance(exc, paramiko.SSHException):
        text = str(exc)
        if "not found in known_hosts" in text:
            return ("host key is not in known_hosts; add it, or set acceptUnknownHostKeys "
                    "to trust an unknown key")
        if "banner" in text.lower():
            return f"no SSH banner within {timeout}s (the port answers but does not speak SSH)"
        return text or type(exc).__name__
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def _kind(exc: BaseException) -> str:
    """Why a login failed, in one word (see TransportError.kind)."""
    if isinstance(exc, paramiko.AuthenticationException):
        return "auth"
    if isinstance(exc, paramiko.SSHException) and "known_hosts" in str(exc):
        return "host-key"
    return "unreachable"


def _close_quietly(client: paramiko.SSHClient, sock) -> None:
    try:
        client.close()
        sock.close()
    except Exception:
        pass
