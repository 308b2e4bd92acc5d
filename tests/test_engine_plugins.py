"""Third-party resource types are found through the ``nepi_prefect.resources`` entry points."""

from __future__ import annotations

import sys
import textwrap

import pytest

from nepi_prefect.execution.ec import ExperimentController
from nepi_prefect.execution.errors import UnknownResourceTypeError
from nepi_prefect.execution.recording import Recorder
from nepi_prefect.execution.resource import ResourceFactory, ResourceState


@pytest.fixture
def installed_plugin(tmp_path, monkeypatch):
    """A real (if tiny) installed distribution declaring one resource type."""
    (tmp_path / "acme_rms.py").write_text(textwrap.dedent('''
        from nepi_prefect.execution.attribute import Attribute, Types
        from nepi_prefect.execution.resource import ResourceManager, clsinit_copy

        @clsinit_copy
        class AcmeSwitch(ResourceManager):
            _rtype = "AcmeSwitch"
            _help = "A switch from a third-party package"

            @classmethod
            def _register_attributes(cls):
                cls._register_attribute(Attribute("ports", "port count", type=Types.Integer, default=8))
    '''))
    dist = tmp_path / "acme_rms-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-rms\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[nepi_prefect.resources]\nAcmeSwitch = acme_rms:AcmeSwitch\n"
        "BrokenThing = acme_rms:DoesNotExist\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(ResourceFactory, "_entry_points", None)  # forget the cached scan
    yield
    ResourceFactory._resource_types.pop("AcmeSwitch", None)
    sys.modules.pop("acme_rms", None)


def test_entry_point_type_is_loaded_on_first_use(installed_plugin):
    ec = ExperimentController(recorder=Recorder())
    try:
        guid = ec.register_resource("AcmeSwitch")
        assert ec.get(guid, "ports") == 8
        ec.deploy()
        assert ec.wait(guid, [ResourceState.STARTED], timeout=5)
    finally:
        ec.shutdown()
    assert "AcmeSwitch" in ResourceFactory.resource_types()


def test_a_broken_plugin_does_not_hide_the_others(installed_plugin, caplog):
    types = ResourceFactory.resource_types()
    assert "AcmeSwitch" in types and "LinuxNode" in types
    assert "BrokenThing" not in types
    assert "BrokenThing" in caplog.text
    with pytest.raises(UnknownResourceTypeError, match="AcmeSwitch"):
        ResourceFactory.get_resource_type("BrokenThing")


def test_builtin_types_come_from_entry_points():
    names = set(ResourceFactory.resource_types())
    assert {"LinuxNode", "LinuxApplication", "LinuxPing", "LinuxTraceroute", "LinuxTcpdump",
            "LinuxUdpTest", "Collector"} <= names
