"""Plugins: resource types from the ``nepi_prefect.resources`` entry points, recorders
from ``nepi_prefect.recorders``, and the factory's per-test scope."""

from __future__ import annotations

import sys
import textwrap

import pytest

from nepi_prefect import settings
from nepi_prefect.execution.ec import ExperimentController
from nepi_prefect.execution.errors import InvalidInputError, UnknownResourceTypeError
from nepi_prefect.execution.recording import Recorder, default_recorder, recorder_names
from nepi_prefect.execution.resource import (
    ResourceFactory,
    ResourceManager,
    ResourceState,
    clsinit_copy,
)


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
    with ResourceFactory.scoped():
        ResourceFactory.reset()  # forget the cached scan: the plugin is new
        yield
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


def test_scoped_factory_forgets_what_was_registered_inside():
    @clsinit_copy
    class Scoped(ResourceManager):
        _rtype = "TestScopedOnly"

    before = set(ResourceFactory.resource_types())
    with ResourceFactory.scoped():
        ResourceFactory.register_type(Scoped)
        assert ResourceFactory.get_resource_type("TestScopedOnly") is Scoped
        ResourceFactory.reset()
        with pytest.raises(UnknownResourceTypeError):
            ResourceFactory.get_resource_type("TestScopedOnly")
        assert "LinuxNode" in ResourceFactory.resource_types()  # entry points scanned afresh
    assert set(ResourceFactory.resource_types()) == before
    with pytest.raises(UnknownResourceTypeError, match="TestScopedOnly"):
        ResourceFactory.get_resource_type("TestScopedOnly")


# -- recorders by name -----------------------------------------------------------------------

class MarkRecorder(Recorder):
    """A third-party recorder, named as module:Class."""


def test_recorders_are_found_by_name(monkeypatch):
    assert {"none", "prefect"} <= set(recorder_names())
    monkeypatch.setenv(settings.RECORDER_ENV, "none")
    assert type(default_recorder()) is Recorder
    monkeypatch.setenv(settings.RECORDER_ENV, f"{__name__}:MarkRecorder")
    assert type(default_recorder()) is MarkRecorder
    prefect = default_recorder("prefect")  # the entry point; built, not opened: no API needed
    assert type(prefect).__name__ == "PrefectRecorder" and isinstance(prefect, Recorder)


def test_an_unknown_recorder_is_a_clear_error(monkeypatch):
    monkeypatch.setenv(settings.RECORDER_ENV, "nosuch")
    with pytest.raises(InvalidInputError, match=r"'nosuch'.*valid: none, prefect"):
        default_recorder()
    with pytest.raises(InvalidInputError, match="not a Recorder"):
        default_recorder("nepi_prefect.execution.errors:listing")
