"""A node gathers its host's facts once its launches drained (not during them), or
when asked; a host lost before that gets a reason instead of a hung release."""

from __future__ import annotations

import json
from pathlib import Path

from nepi_prefect.execution.resource import ResourceState as S
from nepi_prefect.resources.linux.facts import BackgroundFacts
from nepi_prefect.transport.local import LocalTransport
from tests.helpers import add_rm, engine_ec, wait_until


def test_deferred_facts_start_when_asked_and_not_after_giving_up():
    facts = BackgroundFacts(LocalTransport(), [], start=False)
    assert not facts.started
    got = facts.result()  # asking starts them
    assert facts.started and got["kernel"]
    lost = BackgroundFacts(LocalTransport(), [], start=False)
    lost.give_up("the host was lost")
    assert lost.result() == {"error": "the host was lost"} and not lost.started


def test_a_node_gathers_its_facts_after_its_launches(tmp_path):
    for ec in engine_ec(tmp_path, "facts-after"):
        node = add_rm(ec, "LinuxNode", hostname="localhost", home=str(tmp_path / "home"))
        apps = [add_rm(ec, "LinuxApplication", node, command=f"echo {i}") for i in range(5)]
        ec.deploy()
        assert ec.wait_finished(apps, timeout=60)
        assert all(ec.state(a) == S.FINISHED for a in apps)
        rm = ec.get_resource(node)
        # the launches drained: gathering begins (the drain's callback can come just
        # after the monitor saw the apps end)
        wait_until(lambda: rm._facts.started, timeout=30, message="fact gathering started")
        assert rm.facts()["kernel"]
        ec.shutdown()
        manifest = json.loads((Path(ec.run_dir) / "manifest.json").read_text())
        assert manifest["resources"][str(node)]["facts"]["kernel"]
