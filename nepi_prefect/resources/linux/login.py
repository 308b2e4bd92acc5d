"""How to reach a LinuxNode's host, from the node's login attributes.

Used by the node for its own connection, and by later processes that log in
to a run's hosts from its run-state file (``cleanup RUN``, ``attach RUN``,
the lost-run kill of the next run): the file records the same attributes, but
never a password (saved credentials are resolved again by name).
"""

from __future__ import annotations

import io
from typing import Any, Callable, Mapping

from nepi_prefect.transport.base import Transport
from nepi_prefect.transport.credentials import resolve_credentials
from nepi_prefect.transport.local import LocalTransport
from nepi_prefect.transport.ssh import SSHConfig, SSHTransport

LOCALHOSTS = ("localhost",)
#: the node attributes a login needs (``password`` is never in a run-state file)
LOGIN_ATTRIBUTES = ("hostname", "port", "username", "identity", "password", "knownHosts",
                    "acceptUnknownHostKeys", "connectTimeout", "maxChannels", "gateway",
                    "gatewayUser", "gatewayPort", "credentials")


class NodeError(RuntimeError):
    """The node cannot be used (unreachable, refused host key, bad setup)."""


def make_transport(values: Mapping[str, Any], guid: int,
                   secret: Callable[[Any], None] = lambda _value: None) -> Transport:
    """A transport to the host of node ``guid`` from its login ``values`` (missing
    ones take the attributes' defaults); ``secret`` is told every secret it reads."""
    host = values.get("hostname")
    if host in LOCALHOSTS:
        return LocalTransport()
    if not host:
        raise NodeError(f"LinuxNode {guid}: set 'hostname' (or 'localhost')")
    cfg = SSHConfig(
        host=host, port=values.get("port") or 22, username=values.get("username"),
        key_filename=values.get("identity"), password=values.get("password"),
        known_hosts=values.get("knownHosts") or "~/.ssh/known_hosts",
        accept_unknown=bool(values.get("acceptUnknownHostKeys")),
        connect_timeout=float(values.get("connectTimeout") or 10.0),
        max_channels=values.get("maxChannels") or 8, gateway=values.get("gateway"),
        gateway_user=values.get("gatewayUser"), gateway_port=values.get("gatewayPort") or 22)
    if values.get("credentials"):
        _apply_credentials(cfg, values["credentials"], secret)
    return SSHTransport(cfg)


def _apply_credentials(cfg: SSHConfig, name: str, secret: Callable[[Any], None]) -> None:
    """Fill what the saved credentials give and the attributes left unset."""
    creds = resolve_credentials(name)
    for value in (creds.get("password"), creds.get("private_key")):
        if value:
            secret(value)
    cfg.username = cfg.username or creds.get("username")
    cfg.password = cfg.password or creds.get("password")
    if creds.get("private_key") and not cfg.key_filename:
        cfg.pkey = load_pkey(creds["private_key"], name)
    cfg.known_hosts_text = creds.get("known_hosts")


def load_pkey(text: str, name: str):
    """A paramiko key from PEM/OpenSSH text; the error names the credentials, not the key."""
    import paramiko  # only credentials with a key need it

    for kind in (paramiko.Ed25519Key, paramiko.RSAKey, paramiko.ECDSAKey):
        try:
            return kind.from_private_key(io.StringIO(text))
        except Exception:
            continue
    raise NodeError(f"credentials {name!r}: the private key could not be read "
                    f"(unsupported type or encrypted)")
