"""A host whose login files are slow, stuck or chatty, against a real OpenSSH server.

sshd runs every session through the user's login shell, which sources login
files (``~/.bashrc``; here ``BASH_ENV``, set by the server's ``SetEnv``, so this
machine's own files stay untouched). A session started with ``run()`` right
after ``connect()`` used to wait for such a file without any bound (a stale
``pyenv rehash`` lock made every login wait 60 s), and whatever it printed
became the first command's output.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time

import pytest

from nepi_prefect.transport.base import TransportError
from nepi_prefect.transport.ssh import SSHConfig, SSHTransport
from tests.fixtures.sshd import start_sshd

pytestmark = pytest.mark.ssh


def _server_with_login_file(tmp_path, body: str):
    rc = tmp_path / "login_rc.sh"
    rc.write_text(body)
    workdir = tempfile.mkdtemp(prefix="nepi-sshd-login-")
    return start_sshd(workdir, extra_config=f"SetEnv BASH_ENV={rc}\n")


def _transport(server, connect_timeout: float) -> SSHTransport:
    return SSHTransport(SSHConfig(
        host=server.host, port=server.port, username=server.username,
        key_filename=server.identity, known_hosts=server.known_hosts,
        connect_timeout=connect_timeout))


def _run_in_thread(fn, limit: float) -> dict:
    """Call ``fn`` in a thread; {'value'|'error': ...} or {} if it is still running."""
    out: dict = {}

    def body():
        try:
            out["value"] = fn()
        except Exception as exc:  # noqa: BLE001 (the test inspects it)
            out["error"] = exc

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    thread.join(limit)
    return out


def test_a_stuck_login_file_fails_the_command_within_the_connect_timeout(tmp_path):
    flag = tmp_path / "released"
    # the login file waits (like pyenv's rehash lock) until the test releases it
    server = _server_with_login_file(
        tmp_path, f"while [ ! -e {flag} ]; do sleep 0.1; done\n")
    ssh = _transport(server, connect_timeout=3)
    try:
        ssh.connect()
        start = time.monotonic()
        out = _run_in_thread(lambda: ssh.run("echo hi"), limit=60)
        assert out, "run() right after connect() hung on a login file that never ends"
        assert "error" in out, f"expected a TransportError, got {out}"
        err = out["error"]
        assert isinstance(err, TransportError) and err.kind == "timeout"
        assert "login shell" in str(err) and "3" in str(err)
        assert time.monotonic() - start < 45
    finally:
        flag.touch()
        ssh.close()
        server.stop()
        shutil.rmtree(server.workdir, ignore_errors=True)


def test_what_a_login_file_prints_is_not_the_first_commands_output(tmp_path):
    server = _server_with_login_file(
        tmp_path, "echo login-noise; echo login-err >&2\n")
    ssh = _transport(server, connect_timeout=20)
    try:
        ssh.connect()
        out = _run_in_thread(lambda: ssh.run("echo hi; echo oops >&2"), limit=60)
        assert "value" in out, out
        assert (out["value"].stdout, out["value"].stderr) == ("hi\n", "oops\n")
        second = ssh.run("echo again")
        assert second.stdout == "again\n"
    finally:
        ssh.close()
        server.stop()
        shutil.rmtree(server.workdir, ignore_errors=True)


def test_a_slow_login_within_the_timeout_still_runs(tmp_path):
    server = _server_with_login_file(tmp_path, "sleep 1\n")
    ssh = _transport(server, connect_timeout=20)
    try:
        ssh.connect()
        out = _run_in_thread(lambda: ssh.run("echo hi"), limit=60)
        assert "value" in out, out
        assert out["value"].stdout == "hi\n"
    finally:
        ssh.close()
        server.stop()
        shutil.rmtree(server.workdir, ignore_errors=True)


def test_a_warmed_shell_left_idle_longer_than_the_connect_timeout_still_runs(sshd):
    # the login bound counts from the first command a shell gets, not from its opening
    ssh = _transport(sshd, connect_timeout=1)
    try:
        ssh.connect()
        ssh.warm(2)
        deadline = time.monotonic() + 30
        while ssh._pool.count < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        idle_until = time.monotonic() + 1.5
        while time.monotonic() < idle_until:  # the scenario is time passing
            time.sleep(0.1)
        assert [ssh.run(f"echo {i}").stdout for i in range(3)] == ["0\n", "1\n", "2\n"]
    finally:
        ssh.close()
