"""Prefect blocks: save/load against a real Prefect server, registration, and a
LinuxNode that logs in with a saved SshCredentials block."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from nepi_prefect.execution.ec import ExperimentController
from nepi_prefect.execution.recording import Recorder
from nepi_prefect.orchestration.blocks import (
    InventoryNode,
    NodeInventory,
    SshCredentials,
    inventory_node_attributes,
    load_ssh_credentials,
)

pytestmark = pytest.mark.prefect
PREFECT = str(Path(sys.executable).with_name("prefect"))


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def test_credentials_save_and_load(prefect_server):
    name = _name("creds")
    SshCredentials(username="alice", password="pw-123", private_key="KEY TEXT",
                   known_hosts="host ssh-ed25519 AAAA").save(name)
    loaded = SshCredentials.load(name)
    assert "pw-123" not in repr(loaded)  # secrets stay hidden in the block
    assert load_ssh_credentials(name) == {"username": "alice", "password": "pw-123",
                                          "private_key": "KEY TEXT",
                                          "known_hosts": "host ssh-ed25519 AAAA"}
    SshCredentials(username="bob").save(_name("bare"))


def test_inventory_fills_a_description(prefect_server, tmp_path):
    inv = _name("lab")
    NodeInventory(nodes={"n1": InventoryNode(hostname="localhost", port=2222, username="carol",
                                             credentials="lab-key")}).save(inv)
    assert inventory_node_attributes(inv, "n1") == {
        "hostname": "localhost", "port": 2222, "username": "carol", "credentials": "lab-key"}
    with pytest.raises(KeyError, match="inventory has no node 'n9'; its nodes: n1"):
        inventory_node_attributes(inv, "n9")
    path = tmp_path / "exp.yaml"
    path.write_text(textwrap.dedent(f"""
        resources:
          - name: node
            rtype: LinuxNode
            from_inventory: {{inventory: {inv}, node: n1}}
            attributes: {{port: 2200}}
    """))
    ec = ExperimentController.load(str(path), recorder=Recorder(), local_dir=str(tmp_path))
    try:
        assert (ec.get(1, "hostname"), ec.get(1, "port"), ec.get(1, "username"),
                ec.get(1, "credentials")) == ("localhost", 2200, "carol", "lab-key")
    finally:
        ec.shutdown()


@pytest.mark.parametrize("how", [["-m", "nepi_prefect.orchestration.blocks"],
                                 ["-f", "blocks/nepi_blocks.py"]])
def test_block_registration(prefect_server, how):
    proc = subprocess.run([PREFECT, "block", "register", *how], env=prefect_server.env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 new block" in proc.stdout.replace("\n", " ") or "Successfully registered" in proc.stdout


@pytest.mark.ssh
def test_linux_node_logs_in_with_a_credentials_block(prefect_server, sshd, tmp_path):
    name = _name("sshd-key")
    SshCredentials(username=sshd.username, private_key=Path(sshd.identity).read_text(),
                   known_hosts=Path(sshd.known_hosts).read_text()).save(name)
    # Only hostname, port and the block's name: the user, key and host keys come from it.
    path = tmp_path / "exp.yaml"
    path.write_text(textwrap.dedent(f"""
        name: via-block
        resources:
          - name: node
            rtype: LinuxNode
            attributes: {{hostname: {sshd.host}, port: {sshd.port}, credentials: {name}}}
          - name: app
            rtype: LinuxApplication
            attributes: {{command: "echo logged-in-as-$(id -un)"}}
        connections: [[node, app]]
    """))
    # A subprocess, as users run it: the dispatcher threads that load the block
    # see the API from the environment.
    proc = subprocess.run([str(Path(sys.executable).with_name("nepi-prefect")), "run", str(path),
                           "--recorder", "none", "--results", str(tmp_path / "results")],
                          env=prefect_server.env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (summary,) = (tmp_path / "results" / "via-block").glob("*/summary.json")
    states = {r["rtype"]: r["state"] for r in json.loads(summary.read_text())["resources"]}
    assert states == {"LinuxNode": "STARTED", "LinuxApplication": "FINISHED"}
