"""Small resource managers for the engine tests: NEPI's node/interface/channel/app graph.

They wait for their neighbours the NEPI way, by rescheduling themselves on
the EC's dispatcher, so the tests exercise that polling path too. Importing
this module registers nothing: a test module asks for the ``engine_types``
fixture, which registers them in a factory scope of the test's own.
"""

from __future__ import annotations

import threading
from typing import Iterator

import pytest

from nepi_prefect.execution.attribute import Attribute, Flags, Types
from nepi_prefect.execution.resource import (
    ResourceFactory,
    ResourceManager,
    ResourceState,
    clsinit_copy,
)
from nepi_prefect.execution.trace import Trace, TraceAttr

POLL = "50ms"


@clsinit_copy
class Channel(ResourceManager):
    _rtype = "TestChannel"


@clsinit_copy
class Interface(ResourceManager):
    """Deploys once its node is PROVISIONED and its channel READY."""

    _rtype = "TestInterface"

    def do_deploy(self):
        node = self.get_connected(Node.get_rtype())[0]
        chan = self.get_connected(Channel.get_rtype())[0]
        if node.state < ResourceState.PROVISIONED or chan.state < ResourceState.READY:
            self.ec.schedule(POLL, self.deploy)
            return
        super().do_deploy()


@clsinit_copy
class Node(ResourceManager):
    """Provisions, then waits for every interface to be READY."""

    _rtype = "TestNode"

    @classmethod
    def _register_attributes(cls):
        cls._register_attribute(Attribute("hostname", "host name", flags=Flags.Design))
        cls._register_attribute(Attribute("password", "a secret", flags=Flags.Credential))
        cls._register_attribute(Attribute("port", "a port", type=Types.Integer,
                                          default=22, range=(1, 65535)))
        cls._register_attribute(Attribute("mode", "an enumerate", type=Types.Enumerate,
                                          allowed=["fast", "slow"], default="fast"))
        cls._register_attribute(Attribute("loss", "a double", type=Types.Double, default=0.0))
        cls._register_attribute(Attribute("verbose", "a bool", type=Types.Bool, default=False))
        cls._register_attribute(Attribute("label", "runtime label"))

    def do_deploy(self):
        if self.state < ResourceState.PROVISIONED:
            self.discover()
            self.provision()
        ifaces = self.get_connected(Interface.get_rtype())
        if any(i.state < ResourceState.READY for i in ifaces):
            self.ec.schedule(POLL, self.deploy)
            return
        super().do_deploy()


@clsinit_copy
class App(ResourceManager):
    """Deploys once its node is READY; finishes ``duration`` after start (if set)."""

    _rtype = "TestApp"

    @classmethod
    def _register_attributes(cls):
        cls._register_attribute(Attribute("duration", "seconds until it finishes by itself",
                                          type=Types.Double, flags=Flags.Design))
        cls._register_attribute(Attribute("label", "runtime label"))

    @classmethod
    def _register_traces(cls):
        cls._register_trace(Trace("stdout", "what the app printed"))

    def do_deploy(self):
        nodes = self.get_connected(Node.get_rtype())
        if nodes and nodes[0].state < ResourceState.READY:
            self.ec.schedule(POLL, self.deploy)
            return
        super().do_deploy()

    def do_start(self):
        super().do_start()
        duration = self.get("duration")
        if duration is not None:
            self.ec.schedule(f"{duration}s", self._finish)

    def _finish(self):
        if self.state == ResourceState.STARTED:
            self.set_finished()

    def trace(self, name, attr=TraceAttr.ALL, block=512, offset=0):
        text = f"output of {self.guid}\n"
        return {TraceAttr.ALL: text, TraceAttr.SIZE: len(text), TraceAttr.PATH: f"/tmp/{self.guid}",
                TraceAttr.STREAM: text[offset * block:(offset + 1) * block]}[attr]


@clsinit_copy
class Trivial(ResourceManager):
    """Finishes right after it starts."""

    _rtype = "TestTrivial"

    def do_start(self):
        super().do_start()
        self.set_finished()


@clsinit_copy
class Broken(ResourceManager):
    """Raises in deploy, start or release (attribute ``failIn``)."""

    _rtype = "TestBroken"

    @classmethod
    def _register_attributes(cls):
        cls._register_attribute(Attribute("failIn", "which action raises", type=Types.Enumerate,
                                          allowed=["deploy", "start", "release"], default="deploy",
                                          flags=Flags.Design))

    def do_deploy(self):
        if self.get("failIn") == "deploy":
            raise RuntimeError("deploy exploded on purpose")
        super().do_deploy()

    def do_start(self):
        if self.get("failIn") == "start":
            raise RuntimeError("start exploded on purpose")
        super().do_start()

    def do_release(self):
        if self.get("failIn") == "release":
            raise RuntimeError("release exploded on purpose")
        super().do_release()


@clsinit_copy
class LegacyApp(ResourceManager):
    """A 2013-style NEPI RM: overrides start() and assigns ``self._state``; its state
    property notices the end lazily, when it is read."""

    _rtype = "TestLegacyApp"

    def __init__(self, ec, guid):
        super().__init__(ec, guid)
        self.runs_until = None

    def start(self):
        import time as _t
        self.runs_until = _t.monotonic() + 0.3
        super().start()

    @property
    def state(self):
        import time as _t
        if self._state == ResourceState.STARTED and _t.monotonic() > self.runs_until:
            self._state = ResourceState.FINISHED
        return self._state


@clsinit_copy
class Observed(ResourceManager):
    """Says when its state is read (``state_read``): a waiter has looked at it."""

    _rtype = "TestObserved"

    def __init__(self, ec, guid):
        super().__init__(ec, guid)
        self.state_read = threading.Event()

    @property
    def state(self):
        self.state_read.set()
        return self._state


@clsinit_copy
class Host(ResourceManager):
    """Takes what is connected to it along when released, and releases last."""

    _rtype = "TestHost"

    def release_after(self):
        return sorted(self.connections)

    def release_dependents(self):
        return sorted(self.connections)


@clsinit_copy
class Job(ResourceManager):
    """Runs on a Host; releases after any connected Watcher that is releasing too."""

    _rtype = "TestJob"

    def release_after(self):
        return [rm.guid for rm in self.get_connected("TestWatcher")]


@clsinit_copy
class Watcher(ResourceManager):
    _rtype = "TestWatcher"


ENGINE_TYPES = (Channel, Interface, Node, App, Trivial, Broken, LegacyApp, Observed, Host, Job,
                Watcher)


@pytest.fixture
def engine_types() -> Iterator[None]:
    """The test RM types, registered for one test only."""
    with ResourceFactory.scoped():
        for cls in ENGINE_TYPES:
            ResourceFactory.register_type(cls)
        yield
