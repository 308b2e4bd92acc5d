"""Saved logins: the transport loads them through loaders an upper layer lends,
and knows nothing of Prefect (nepi_prefect.transport.credentials)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from nepi_prefect.execution.resource import ResourceState
from nepi_prefect.execution.recording import Recorder
from nepi_prefect.spec.io import build_experiment, read_description
from nepi_prefect.transport import credentials
from nepi_prefect.transport.credentials import CredentialsError, resolve_credentials, resolve_inventory_node
from tests.helpers import engine_ec


@pytest.fixture
def lent():
    """No loaders registered during the test; the previous ones are put back after it."""
    creds = credentials.register_credentials_resolver(None)
    inventory = credentials.register_inventory_resolver(None)
    yield
    credentials.register_credentials_resolver(creds)
    credentials.register_inventory_resolver(inventory)


def test_without_a_loader_the_error_says_what_is_missing(lent):
    with pytest.raises(CredentialsError, match=r"credentials block 'lab-key' needs the Prefect "
                                               r"blocks: import nepi_prefect.orchestration.logins"):
        resolve_credentials("lab-key")
    with pytest.raises(CredentialsError, match="inventory block 'lab' needs the Prefect blocks"):
        resolve_inventory_node("lab", "n1")


def test_a_lent_loader_is_used_and_its_errors_name_no_secret(lent):
    credentials.register_credentials_resolver(
        lambda name: {"username": f"user-of-{name}", "password": "pw", "extra": "dropped"})
    assert resolve_credentials("k") == {"username": "user-of-k", "password": "pw",
                                        "private_key": None, "known_hosts": None}

    def broken(name):
        raise ValueError("the secret is s3cret")

    credentials.register_credentials_resolver(broken)
    with pytest.raises(CredentialsError) as info:
        resolve_credentials("k")
    assert str(info.value) == "credentials 'k' could not be loaded: ValueError"


def test_a_description_takes_its_node_from_the_lent_inventory(lent, tmp_path):
    asked = []

    def inventory(name, node):
        asked.append((name, node))
        return {"hostname": "10.1.2.3", "port": 2200, "username": None}

    credentials.register_inventory_resolver(inventory)
    path = tmp_path / "inv.yaml"
    path.write_text(textwrap.dedent("""
        name: inv
        resources:
          - {name: n, rtype: LinuxNode, from_inventory: {inventory: lab, node: n1}}
    """))
    ec = build_experiment(read_description(path), local_dir=str(tmp_path), recorder=Recorder())
    try:
        assert asked == [("lab", "n1")]
        assert (ec.get(1, "hostname"), ec.get(1, "port"), ec.get(1, "username")) == \
            ("10.1.2.3", 2200, None)
    finally:
        ec.shutdown()


@pytest.mark.ssh
def test_a_node_logs_in_with_lent_credentials(lent, sshd, tmp_path):
    key = Path(sshd.identity).read_text()
    hosts = Path(sshd.known_hosts).read_text()
    credentials.register_credentials_resolver(
        lambda name: {"username": sshd.username, "private_key": key, "known_hosts": hosts}
        if name == "lab-key" else {})
    for ec in engine_ec(tmp_path, "lent"):
        node = ec.register_resource("LinuxNode")
        for attr, value in {"hostname": sshd.host, "port": sshd.port,
                            "credentials": "lab-key"}.items():
            ec.set(node, attr, value)
        ec.deploy()
        ec.wait_deployed([node], timeout=60)
        assert ec.state(node) in (ResourceState.READY, ResourceState.STARTED), \
            ec.get_resource(node).failure
