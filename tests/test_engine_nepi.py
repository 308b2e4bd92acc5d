"""A NEPI script and NEPI resource managers of both styles port by renaming imports."""

from __future__ import annotations

import textwrap

from nepi_prefect import settings
from nepi_prefect.execution.resource import ResourceFactory

#: written as for NEPI; the test only turns ``nepi.`` into ``nepi_prefect.``
NEPI_SCRIPT = textwrap.dedent('''
    from nepi.execution.attribute import Attribute, Flags, Types
    from nepi.execution.ec import ExperimentController, ECState
    from nepi.execution.resource import (ResourceManager, ResourceAction, ResourceState,
        ResourceState2str, ResourceFactory, clsinit_copy, failtrap, reschedule_delay)

    @clsinit_copy
    class Host(ResourceManager):
        """NEPI 2013 style: overrides deploy() and start(), calls the base methods."""
        _rtype = "PortHost"

        def deploy(self):
            self.discover()
            self.provision()
            self.info("host is up")
            super(Host, self).deploy()

        def start(self):
            super(Host, self).start()

    @clsinit_copy
    class Counter(ResourceManager):
        """NEPI 3 style: do_* hooks, failtrap, rescheduling while its host is not READY."""
        _rtype = "PortCounter"
        _help = "Counts ticks, then finishes"
        _backend = "port"

        @classmethod
        def _register_attributes(cls):
            cls._register_attribute(Attribute("limit", "ticks before it finishes",
                                              type=Types.Integer, default=3, flags=Flags.Design))

        def __init__(self, ec, guid):
            super(Counter, self).__init__(ec, guid)
            self.count = 0

        @failtrap
        def do_deploy(self):
            host = self.get_connected(Host.get_rtype())[0]
            if host.state < ResourceState.READY:
                self.ec.schedule(reschedule_delay, self.deploy)
                return
            super(Counter, self).do_deploy()

        def do_start(self):
            super(Counter, self).do_start()
            self.ec.schedule("20ms", self.tick)

        def tick(self):
            self.count += 1
            if self.count < self.get("limit"):
                self.ec.schedule("20ms", self.tick)
            else:
                self.set_finished()

    ResourceFactory.register_type(Host)
    ResourceFactory.register_type(Counter)

    ec = ExperimentController(exp_id="nepi-port")
    host = ec.register_resource("PortHost")
    first = ec.register_resource("PortCounter")
    ec.set(first, "limit", 2)
    second = ec.register_resource("PortCounter")
    for guid in (first, second):
        ec.register_connection(guid, host)
    ec.register_condition(second, ResourceAction.START, first, ResourceState.FINISHED, "100ms")
    ec.deploy()
    ec.wait_finished([first, second])
    states = [ec.state(g, hr=True) for g in (host, first, second)]
    ecstate = ec.ecstate
    gap = (ec.get_resource(second).start_time - ec.get_resource(first).finish_time).total_seconds()
    ec.shutdown()
    released = ResourceState2str[ec.state(host)]
''')


def test_a_nepi_script_ports_by_renaming_imports(tmp_path, monkeypatch):
    monkeypatch.setenv(settings.RECORDER_ENV, "none")
    monkeypatch.setenv(settings.RESULTS_ENV, str(tmp_path))
    script = NEPI_SCRIPT.replace("from nepi.", "from nepi_prefect.")
    namespace: dict = {}
    with ResourceFactory.scoped():
        exec(compile(script, "nepi_script.py", "exec"), namespace)
    assert namespace["states"] == ["STARTED", "FINISHED", "FINISHED"]
    assert namespace["ecstate"] == namespace["ECState"].RUNNING
    assert namespace["gap"] >= 0.1
    assert namespace["released"] == "RELEASED"
    assert (tmp_path / "nepi-port").is_dir()  # the results root came from the settings
