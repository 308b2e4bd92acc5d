"""Every action is in the record: a stop an RM schedules for itself, or a finish it
reaches by itself, is a stop action run like a stop the user asked for."""

from __future__ import annotations

from nepi_prefect.execution.ec import ExperimentController
from nepi_prefect.execution.factory import ResourceFactory
from nepi_prefect.execution.recording import RunState
from nepi_prefect.execution.resource import ResourceManager, ResourceState, clsinit_copy
from nepi_prefect.execution.states import ResourceAction
from tests.helpers import RunsRecorder

S = ResourceState


@clsinit_copy
class SelfStopper(ResourceManager):
    """Stops itself 0.2 s after it starts, the way NEPI RMs often do."""

    _rtype = "TestSelfStopper"

    def do_start(self):
        super().do_start()
        self.ec.schedule("0.2s", self.stop)


@clsinit_copy
class SelfFinisher(ResourceManager):
    """Its work ends right after it starts."""

    _rtype = "TestSelfFinisher"

    def do_start(self):
        super().do_start()
        self.set_finished()


def _run(tmp_path, build) -> RunsRecorder:
    rec = RunsRecorder()
    with ResourceFactory.scoped():
        ResourceFactory.register_type(SelfStopper)
        ResourceFactory.register_type(SelfFinisher)
        ec = ExperimentController(exp_id="self-stop", local_dir=str(tmp_path), recorder=rec)
        try:
            guids = build(ec)
            ec.deploy()
            assert ec.wait(guids, states=[S.STOPPED, S.FINISHED], timeout=60) is not False
        finally:
            ec.shutdown()
    return rec


def test_a_stop_or_finish_of_its_own_is_a_stop_run(tmp_path):
    rec = _run(tmp_path, lambda ec: [ec.register_resource("TestSelfStopper", name="stopper"),
                                     ec.register_resource("TestSelfFinisher", name="finisher")])
    for name in ("stopper", "finisher"):
        (stop,) = rec.named(f"stop-{name}")
        (start,) = rec.named(f"start-{name}")
        assert stop.state == RunState.COMPLETED and stop.ended_at is not None
        assert stop.upstream == [start]  # after the start it ended
        assert stop.message == "the resource stopped by itself"
        assert len(rec.named(f"release-{name}")) == 1


def test_a_user_stop_is_recorded_once_and_a_release_adds_none(tmp_path):
    def build(ec):
        app = ec.register_resource("TestSelfStopper", name="asked")
        ec.register_condition(app, ResourceAction.STOP, app, S.STARTED, "50ms")
        return [app]

    rec = _run(tmp_path, build)
    assert len(rec.named("stop-asked")) == 1  # the condition's stop, not a second one

    rec = RunsRecorder()
    with ResourceFactory.scoped():
        ResourceFactory.register_type(Forever)
        ec = ExperimentController(exp_id="self-stop", local_dir=str(tmp_path), recorder=rec)
        try:
            guid = ec.register_resource("TestForever", name="forever")
            ec.deploy()
            assert ec.wait_started([guid], timeout=60)
        finally:
            ec.shutdown()  # releases it while STARTED
    assert rec.named("release-forever") and not rec.named("stop-forever")


@clsinit_copy
class Forever(ResourceManager):
    """Runs until released."""

    _rtype = "TestForever"
