"""An OpenSSH server inside a namespace host, reached from the root namespace.

The host gets a management veth (``<prefix>m<guid>`` in the root namespace,
``mgmt0`` inside) with addresses from a unique-local IPv6 /48 chosen at
random per run, so concurrent runs never share an address. Keys (host and
client) are made per run; the node then logs in exactly as to a remote host.
"""

from __future__ import annotations

import getpass
import ipaddress
import os
import secrets
import socket
import subprocess
import time
from dataclasses import dataclass

from nepi_prefect import settings
from nepi_prefect.resources.netns.run import NetnsError, NetnsRun, ip_batch, sh

SSHD = "/usr/sbin/sshd"


@dataclass
class SshAccess:
    """What a LinuxNode needs to log in: address, port, user, key, known_hosts."""

    hostname: str
    port: int
    root_link: str
    username: str
    identity: str
    known_hosts: str
    process: subprocess.Popen


def _run_dir(run: NetnsRun) -> str:
    path = os.path.join(settings.netns_homes_dir(), run.prefix)
    if path not in run.files:
        run.record("files", path)
    os.makedirs(path, exist_ok=True)
    return path


def _keys(run: NetnsRun, workdir: str) -> tuple[str, str]:
    with run.lock:
        host_key, client = f"{workdir}/host_ed25519", f"{workdir}/client_ed25519"
        for path in (host_key, client):
            if not os.path.exists(path):
                sh(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", path],
                   f"making the SSH key {path}")
        return host_key, client


def _ula(run: NetnsRun) -> str:
    with run.lock:
        if run.ula is None:
            run.ula = "fd%02x:%04x:%04x" % (secrets.randbits(8), secrets.randbits(16),
                                            secrets.randbits(16))
        return run.ula


def start_sshd(run: NetnsRun, ns: str, guid: int, port: int, timeout: float) -> SshAccess:
    """Link ``ns`` to the root namespace and start sshd in it; return how to log in."""
    if not os.path.exists(SSHD):
        raise NetnsError(f"{SSHD} is missing: install openssh-server to use sshd on a NetnsNode")
    workdir = _run_dir(run)
    host_key, client = _keys(run, workdir)
    net = f"{_ula(run)}:{guid:x}"
    root_dev = f"{run.prefix}m{guid}"
    run.record("links", root_dev)
    sh(["ip", "link", "add", root_dev, "type", "veth", "peer", "name", "mgmt0", "netns", ns],
       f"creating the management link of {ns}")
    ip_batch([f"addr add {net}::1/64 dev {root_dev} nodad", f"link set {root_dev} up"],
             f"configuring {root_dev}")
    ip_batch([f"addr add {net}::2/64 dev mgmt0 nodad", "link set mgmt0 up"],
             f"configuring mgmt0 in {ns}", netns=ns)
    addr = str(ipaddress.ip_address(f"{net}::2"))  # canonical, as sshd and ssh print it
    cfg = f"{workdir}/sshd_config.{guid}"
    with open(cfg, "w") as f:
        f.write(f"ListenAddress [{addr}]:{port}\nHostKey {host_key}\n"
                f"PidFile {workdir}/sshd.{guid}.pid\nAuthorizedKeysFile {client}.pub\n"
                "StrictModes no\nUsePAM no\nPermitRootLogin prohibit-password\n"
                "PasswordAuthentication no\nKbdInteractiveAuthentication no\n"
                "MaxSessions 20\nMaxStartups 100:30:200\nLogLevel ERROR\n"
                "Subsystem sftp internal-sftp\n")
    os.makedirs("/run/sshd", exist_ok=True)
    proc = subprocess.Popen(["ip", "netns", "exec", ns, SSHD, "-D", "-e", "-f", cfg],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)
    run.record("pids", proc.pid)
    try:
        _wait_listening(proc, addr, port, timeout)
    except NetnsError:
        proc.kill()
        proc.wait()
        raise
    known = f"{workdir}/known_hosts.{guid}"
    with open(f"{host_key}.pub") as src, open(known, "w") as dst:
        kind, blob = src.read().split()[:2]
        host = addr if port == 22 else f"[{addr}]:{port}"
        dst.write(f"{host} {kind} {blob}\n")
    return SshAccess(addr, port, root_dev, getpass.getuser(), client, known, proc)


def _wait_listening(proc: subprocess.Popen, addr: str, port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace").strip()[-300:] if proc.stderr else ""
            raise NetnsError(f"sshd in the namespace exited with code {proc.returncode}: {err}")
        try:
            with socket.create_connection((addr, port), timeout=1) as s:
                s.settimeout(2)
                if s.recv(4).startswith(b"SSH"):
                    return
        except OSError:
            time.sleep(0.05)  # poll interval while sshd binds
    raise NetnsError(f"sshd in the namespace did not answer on [{addr}]:{port} in {timeout}s")
