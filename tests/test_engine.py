"""The engine alone: EC, RMs, conditions, groups, failures and the dispatcher."""

from __future__ import annotations

import datetime
import json
import threading
import time

import pytest

from nepi_prefect.execution import conditions, persistence
from nepi_prefect.execution.ec import ECState, ExperimentController
from nepi_prefect.execution.recording import Recorder, RunState
from nepi_prefect.execution.resource import (
    ResourceAction,
    ResourceAction2str,
    ResourceState,
    ResourceState2str,
)
from nepi_prefect.execution.scheduler import HeapScheduler, Task, TaskStatus
from nepi_prefect.execution.states import ActionKind
from nepi_prefect.util.timefuncs import stabsformat, tdiffsec, tnow

from tests.engine_rms import engine_types  # noqa: F401  (a fixture: the test RM types)
from tests.helpers import wait_until

pytestmark = pytest.mark.usefixtures("engine_types")

S = ResourceState


class ListRecorder(Recorder):
    """Keeps what the engine reports, to check action runs and logs."""

    def __init__(self):
        self.runs = {}
        self.logs = []
        self.closed = None

    def action_changed(self, run):
        self.runs[run.id] = run

    def log(self, run, level, message):
        self.logs.append((run.name if run else None, level, message))

    def close(self, ec, summary):
        self.closed = summary

    def by_name(self, name):
        return [r for r in self.runs.values() if r.name == name]


@pytest.fixture
def ec():
    controller = ExperimentController(exp_id="engine-test", recorder=ListRecorder())
    yield controller
    controller.shutdown()


def add(ec, rtype, **attrs):
    guid = ec.register_resource(rtype)
    for name, value in attrs.items():
        ec.set(guid, name, value)
    return guid


def connect_app(ec, **attrs):
    node = add(ec, "TestNode", hostname="h1")
    app = add(ec, "TestApp", **attrs)
    ec.register_connection(app, node)
    return node, app


# -- scheduler ---------------------------------------------------------------------

def test_heap_scheduler_orders_by_time_then_arrival():
    sched = HeapScheduler()
    base = tnow()
    order = [(2, "c"), (0, "a"), (1, "b1"), (1, "b2"), (0, "a2")]
    for offset, label in order:
        sched.schedule(Task(base + datetime.timedelta(seconds=offset), label))
    removed = sched.schedule(Task(base, "gone"))
    sched.remove(removed.id)
    popped = []
    while (task := sched.next()) is not None:
        popped.append(task.callback)
    assert popped == ["a", "a2", "b1", "b2", "c"]


def test_schedule_runs_at_the_requested_time(ec):
    ran = {}
    start = tnow()
    tid = ec.schedule("4s", lambda: ran.setdefault("at", tnow()) and "result", track=True)
    task = ec.get_task(tid)
    assert task.done.wait(10)
    delay = tdiffsec(ran["at"], start)
    assert 4.0 <= delay <= 5.0
    assert task.status == TaskStatus.DONE


def test_tasks_run_in_time_order(ec):
    seen = []
    lock = threading.Lock()

    def note(label):
        with lock:
            seen.append(label)

    ids = [ec.schedule(delay, lambda lbl=label: note(lbl), track=True)
           for delay, label in [("300ms", "c"), ("100ms", "a"), ("200ms", "b")]]
    for tid in ids:
        assert ec.get_task(tid).done.wait(5)
    assert seen == ["a", "b", "c"]


def test_raising_callback_ends_as_error_with_traceback(ec):
    def boom():
        raise ValueError("boom on purpose")

    tid = ec.schedule("0s", boom, track=True)
    task = ec.get_task(tid)
    assert task.done.wait(5)
    assert task.status == TaskStatus.ERROR
    assert "Traceback" in task.result and "boom on purpose" in task.result
    assert ec.ecstate == ECState.RUNNING  # a plain callback does not fail the experiment


def test_untracked_tasks_are_not_kept(ec):
    tid = ec.schedule("0s", lambda: None)
    assert isinstance(tid, int) and ec.get_task(tid) is None


# -- deployment order ---------------------------------------------------------------

def test_deploy_order_follows_dependencies(ec):
    node = add(ec, "TestNode", hostname="h1")
    chan = add(ec, "TestChannel")
    ifaces = []
    for _ in range(2):
        iface = add(ec, "TestInterface")
        ec.register_connection(iface, node)
        ec.register_connection(iface, chan)
        ifaces.append(iface)
    apps = []
    for _ in range(3):
        app = add(ec, "TestApp", duration=0.2)
        ec.register_connection(app, node)
        apps.append(app)
    ec.deploy()
    ec.wait_finished(apps)

    rm = ec.get_resource
    node_rm, chan_rm = rm(node), rm(chan)
    for iface in ifaces:
        # interfaces wait for their node to be PROVISIONED and their channel READY
        assert rm(iface).ready_time >= node_rm.provision_time
        assert rm(iface).ready_time >= chan_rm.ready_time
        # nodes wait for their interfaces
        assert node_rm.ready_time >= rm(iface).ready_time
    for app in apps:
        assert rm(app).ready_time >= node_rm.ready_time  # apps wait for their node
        assert rm(app).state == S.FINISHED
        times = [rm(app).discover_time, rm(app).provision_time, rm(app).ready_time,
                 rm(app).start_time, rm(app).finish_time]
        assert times == sorted(times)
    # the group barrier: no app started before every RM of the group was READY
    last_ready = max(rm(g).ready_time for g in ec.resources)
    assert all(rm(a).start_time >= last_ready for a in apps)


def test_thousand_rms_on_one_node_reach_their_final_state(ec):
    node = add(ec, "TestNode", hostname="h1")
    apps = []
    for _ in range(1000):
        app = ec.register_resource("TestApp")
        ec.register_connection(app, node)
        ec.set(app, "duration", 0.0)
        apps.append(app)
    started = time.monotonic()
    ec.deploy()
    assert ec.wait_finished(apps, timeout=60)
    assert time.monotonic() - started < 30
    assert all(ec.state(a) == S.FINISHED for a in apps)
    ec.release()
    assert all(ec.state(g) == S.RELEASED for g in ec.resources)


# -- conditions ----------------------------------------------------------------------

def test_start_condition_with_delay_is_exact(ec):
    _, app1 = connect_app(ec, duration=3)
    app2 = add(ec, "TestApp", duration=0.5)
    ec.register_connection(app2, ec.get_resource(app1).get_connected("TestNode")[0].guid)
    ec.register_condition(app2, ResourceAction.START, app1, S.STARTED, "2s")
    ec.deploy()
    ec.wait_finished([app1, app2])
    gap = tdiffsec(ec.get_resource(app2).start_time, ec.get_resource(app1).start_time)
    assert 2.0 <= gap <= 2.5


def test_start_condition_on_finished_state(ec):
    node, app1 = connect_app(ec, duration=1)
    app2 = add(ec, "TestApp", duration=0.1)
    ec.register_connection(app2, node)
    ec.register_condition(app2, ResourceAction.START, app1, S.FINISHED, "1s")
    ec.deploy()
    ec.wait_finished([app1, app2])
    gap = tdiffsec(ec.get_resource(app2).start_time, ec.get_resource(app1).finish_time)
    assert 1.0 <= gap <= 1.5


def test_condition_time_counts_from_each_rm_of_the_group(ec):
    node, early = connect_app(ec, duration=5)
    late = add(ec, "TestApp", duration=5)
    waiter = add(ec, "TestApp", duration=0.1)
    for g in (late, waiter):
        ec.register_connection(g, node)
    ec.register_condition(late, ResourceAction.START, early, S.STARTED, "1s")
    ec.register_condition(waiter, ResourceAction.START, [early, late], S.STARTED, "1s")
    ec.deploy()
    ec.wait_finished(waiter)
    rm = ec.get_resource
    gap = tdiffsec(rm(waiter).start_time, rm(late).start_time)
    assert 1.0 <= gap <= 1.5  # counted from the last of the group to reach STARTED


def test_stop_condition_with_delay(ec):
    node, server = connect_app(ec)          # runs until stopped
    client = add(ec, "TestApp", duration=1)
    ec.register_connection(client, node)
    ec.register_condition(server, ResourceAction.STOP, client, S.FINISHED, "1s")
    ec.deploy()
    ec.wait([server], states=[S.STOPPED])
    rm = ec.get_resource
    assert rm(server).state == S.STOPPED
    gap = tdiffsec(rm(server).stop_time, rm(client).finish_time)
    assert 1.0 <= gap <= 1.5


def test_stop_condition_on_stopped_state(ec):
    node, first = connect_app(ec)
    second = add(ec, "TestApp")
    ec.register_connection(second, node)
    ec.register_condition(second, ResourceAction.STOP, first, S.STOPPED, "500ms")
    ec.deploy()
    ec.wait_started([first, second])
    ec.stop(first)
    ec.wait([second], states=[S.STOPPED])
    gap = tdiffsec(ec.get_resource(second).stop_time, ec.get_resource(first).stop_time)
    assert 0.5 <= gap <= 1.0


def test_set_with_conditions(ec):
    node, app1 = connect_app(ec, duration=2)
    app2 = add(ec, "TestApp", duration=2)
    ec.register_connection(app2, node)
    ec.set_with_conditions("label", "changed", app2, app1, S.STARTED, "1s")
    ec.deploy()
    ec.wait_started([app1, app2])
    assert ec.get(app2, "label") is None
    wait_until(lambda: ec.get(app2, "label") == "changed", 10, "the conditional set")
    assert tdiffsec(tnow(), ec.get_resource(app1).start_time) >= 1.0


def test_condition_on_failed_rm_fails_the_dependent(ec):
    broken = add(ec, "TestBroken", failIn="start", critical=False)
    node, app = connect_app(ec, duration=0.1, critical=False)
    ec.register_condition(app, ResourceAction.START, broken, S.STARTED)
    ec.deploy()
    ec.wait_finished([app, broken], timeout=10)
    assert ec.state(broken) == S.FAILED
    assert ec.state(app) == S.FAILED
    assert ec.ecstate == ECState.RUNNING
    messages = [m for _, _, m in ec.recorder.logs if f"guid {app} " in m]
    assert any(f"TestBroken {broken} FAILED" in m for m in messages)
    assert f"TestBroken {broken} FAILED" in ec.get_resource(app).failure


def test_unregister_condition(ec):
    node, app1 = connect_app(ec, duration=10)
    app2 = add(ec, "TestApp", duration=0.1)
    ec.register_connection(app2, node)
    ec.register_condition(app2, ResourceAction.START, app1, S.FINISHED)
    ec.get_resource(app2).unregister_condition([app1])
    assert ec.get_resource(app2).conditions == {}
    ec.deploy()
    assert ec.wait_finished(app2, timeout=5)
    assert ec.state(app1) == S.STARTED


def test_unregister_condition_keeps_the_rest_of_the_group(ec):
    """NEPI: the given guids leave each condition's group; the others still count."""
    node, slow = connect_app(ec, duration=30)
    quick = add(ec, "TestApp", duration=0.2)
    waiter = add(ec, "TestApp", duration=0.1)
    for guid in (quick, waiter):
        ec.register_connection(guid, node)
    ec.register_condition(waiter, ResourceAction.START, [slow, quick], S.FINISHED, "300ms")
    ec.register_condition(waiter, ResourceAction.STOP, [slow], S.STARTED)
    ec.get_resource(waiter).unregister_condition(slow, ResourceAction.START)
    conditions = ec.get_resource(waiter).conditions
    assert conditions[ResourceAction.START] == [([quick], S.FINISHED, "300ms")]
    assert conditions[ResourceAction.START][0].delay == 0.3
    assert conditions[ResourceAction.STOP] == [([slow], S.STARTED, None)]  # other action kept
    ec.deploy()
    assert ec.wait_finished(waiter, timeout=10)
    rm = ec.get_resource
    assert ec.state(slow) == S.STARTED
    assert tdiffsec(rm(waiter).start_time, rm(quick).finish_time) >= 0.3
    ec.get_resource(waiter).unregister_condition([slow])
    assert ResourceAction.STOP not in ec.get_resource(waiter).conditions  # emptied: dropped


# -- groups and interactive deployment --------------------------------------------------

def test_interactive_deployment_of_a_second_group(ec):
    node, first = connect_app(ec, duration=30)
    ec.deploy()
    ec.wait_started(first)
    second = add(ec, "TestApp", duration=0.2)
    ec.register_connection(second, node)
    ec.register_condition(second, ResourceAction.START, first, S.STARTED, "500ms")
    ec.deploy([second])
    ec.wait_finished(second)
    rm = ec.get_resource
    assert rm(second).deployment_group != rm(first).deployment_group
    assert rm(second).start_time >= rm(first).start_time
    assert rm(first).state == S.STARTED


def test_deploy_into_existing_group_starts_only_newcomers(ec):
    node, first = connect_app(ec, duration=30)
    ec.deploy()
    ec.wait_started(first)
    group = ec.get_resource(first).deployment_group
    first_start = ec.get_resource(first).start_time
    late = add(ec, "TestApp", duration=0.1)
    ec.register_connection(late, node)
    ec.deploy([late], group=group)
    ec.wait_finished(late)
    assert ec.get_resource(late).deployment_group == group
    assert ec.get_resource(first).start_time == first_start  # not started a second time
    starts = ec.recorder.by_name(f"start-TestApp-{first}")
    assert len(starts) == 1


def test_wait_all_ready_false_starts_each_rm_when_it_is_ready(ec):
    node = add(ec, "TestNode", hostname="h")
    chan = add(ec, "TestChannel")
    iface = add(ec, "TestInterface")
    ec.register_connection(iface, node)
    ec.register_connection(iface, chan)
    lonely = add(ec, "TestApp", duration=0.1)  # no node: ready at once
    ec.deploy(wait_all_ready=False)
    ec.wait_finished(lonely)
    assert ec.get_resource(lonely).start_time is not None


def test_restart_from_stopped(ec):
    node, app = connect_app(ec)
    ec.deploy()
    ec.wait_started(app)
    ec.stop(app)
    assert ec.state(app) == S.STOPPED
    first = ec.get_resource(app).start_time
    ec.start(app)
    assert ec.state(app) == S.STARTED
    assert ec.get_resource(app).start_time > first


# -- failures ----------------------------------------------------------------------------

def test_critical_failure_fails_the_experiment_and_releases_everything():
    ec = ExperimentController(exp_id="crit", recorder=ListRecorder())
    try:
        node, app = connect_app(ec, duration=30)
        broken = add(ec, "TestBroken", failIn="deploy")
        ec.deploy()
        started = time.monotonic()
        ec.wait_finished([app, broken])
        assert time.monotonic() - started < 5
        assert ec.ecstate == ECState.FAILED
        assert f"TestBroken {broken}" in ec.failure
        assert ec.wait_released(ec.resources, timeout=5) is True  # returns: the EC FAILED
        wait_until(lambda: all(ec.state(g) == S.RELEASED for g in ec.resources), 10,
                   "every RM RELEASED after the abort")
        assert ec.get_resource(broken).failed_time is not None
        assert ec.get_resource(broken).failure == "RuntimeError: deploy exploded on purpose"
        runs = ec.recorder.by_name(f"deploy-TestBroken-{broken}")
        assert runs and runs[0].state == RunState.FAILED
        tracebacks = [m for _, _, m in ec.recorder.logs if "deploy exploded on purpose" in m]
        assert tracebacks and "Traceback" in tracebacks[0]
    finally:
        ec.shutdown()
    assert ec.recorder.closed["state"] == "FAILED"


def test_abort_fails_and_releases(ec):
    node, app = connect_app(ec)
    ec.deploy()
    ec.wait_started(app)
    ec.abort("the user gave up")
    assert ec.ecstate == ECState.FAILED and ec.failure == "the user gave up"
    assert ec.wait_finished(app, timeout=1)
    ec.release()
    assert ec.state(app) == S.RELEASED


def test_non_critical_failure_leaves_the_rest_running(ec):
    node, app = connect_app(ec, duration=0.5)
    broken = add(ec, "TestBroken", failIn="start", critical=False)
    ec.deploy()
    ec.wait_finished([app, broken])
    assert ec.state(broken) == S.FAILED
    assert ec.state(app) == S.FINISHED
    assert ec.ecstate == ECState.RUNNING
    assert ec.failure is None


def test_failing_release_still_ends_released(ec):
    broken = add(ec, "TestBroken", failIn="release")
    ec.deploy()
    ec.wait_started(broken)
    ec.release([broken])
    assert ec.state(broken) == S.RELEASED
    assert ec.recorder.by_name(f"release-TestBroken-{broken}")[0].state == RunState.FAILED


def test_release_order_and_dependents(ec):
    host, watcher = add(ec, "TestHost"), add(ec, "TestWatcher")
    jobs = [add(ec, "TestJob") for _ in range(3)]
    for job in jobs:
        ec.register_connection(job, host)
        ec.register_connection(job, watcher)
    ec.deploy()
    ec.wait_started(jobs + [host, watcher])
    # releasing one job does not wait for the watcher nobody releases
    started = time.monotonic()
    ec.release([jobs[0]])
    assert time.monotonic() - started < 30  # waiting for the watcher would not end at all
    assert ec.state(jobs[0]) == S.RELEASED and ec.state(watcher) == S.STARTED
    # releasing the host takes the jobs along, and the host goes last
    ec.release([host])
    rm = ec.get_resource
    assert all(ec.state(j) == S.RELEASED for j in jobs)
    assert rm(host).release_time >= max(rm(j).release_time for j in jobs)
    assert ec.state(watcher) == S.STARTED


def test_released_together_a_job_waits_for_its_watcher(ec):
    watcher = add(ec, "TestWatcher")
    jobs = [add(ec, "TestJob") for _ in range(5)]
    for job in jobs:
        ec.register_connection(job, watcher)
    ec.deploy()
    ec.wait_started(jobs)
    ec.release()
    rm = ec.get_resource
    assert all(rm(j).release_time >= rm(watcher).release_time for j in jobs)
    release_watcher = ec.recorder.by_name(f"release-TestWatcher-{watcher}")[0]
    for job in jobs:  # the release order is recorded as edges too
        assert ec.recorder.by_name(f"release-TestJob-{job}")[0].upstream == [release_watcher]


def test_waits_return_when_the_experiment_fails(ec):
    node, app = connect_app(ec)  # would run forever
    result = {}

    def waiter():
        result["returned"] = ec.wait_finished(app)

    thread = threading.Thread(target=waiter)
    thread.start()
    ec.deploy()
    ec.wait_started(app)
    broken = add(ec, "TestBroken", failIn="deploy")
    ec.deploy([broken])
    thread.join(5)
    assert not thread.is_alive() and result["returned"] is True


def test_wait_is_woken_by_the_state_change(ec):
    """Event driven: far sooner than the 0.5 s re-read. The figure (< 50 ms) is
    measured by benchmarks/bench_engine.py; this bound stays generous."""
    app = ec.register_resource("TestObserved")
    ec.deploy()
    ec.wait_started(app)
    rm = ec.get_resource(app)
    rm.state_read.clear()
    woke = {}

    def waiter():
        ec.wait([app], states=[S.STOPPED])
        woke["at"] = time.perf_counter()

    thread = threading.Thread(target=waiter)
    thread.start()
    assert rm.state_read.wait(10)  # the waiter saw STARTED: it waits for the change now
    changed = time.perf_counter()
    ec.stop(app)
    thread.join(10)
    assert woke["at"] - changed < 0.25


def test_legacy_rm_with_lazy_state_is_seen_finished(ec):
    legacy = ec.register_resource("TestLegacyApp")
    ec.deploy()
    assert ec.wait_finished(legacy, timeout=5)
    assert ec.state(legacy) == S.FINISHED
    assert ec.get_resource(legacy).finish_time is not None


# -- records and logs ---------------------------------------------------------------------

def test_action_runs_record_edges_and_delays(ec):
    node, app1 = connect_app(ec, duration=1)
    app2 = add(ec, "TestApp", duration=0.1)
    ec.register_connection(app2, node)
    ec.register_condition(app2, ResourceAction.START, app1, S.STARTED, "1s")
    ec.deploy()
    ec.wait_finished([app1, app2])
    rec = ec.recorder
    start2 = rec.by_name(f"start-TestApp-{app2}")[0]
    start1 = rec.by_name(f"start-TestApp-{app1}")[0]
    barrier = rec.by_name("barrier-group-1")[0]
    assert start1 in start2.upstream and barrier in start2.upstream
    assert {r.name for r in barrier.upstream} == {f"deploy-{ec.get_resource(g).get_rtype()}-{g}"
                                                 for g in (node, app1, app2)}
    assert start2.scheduled_for is not None
    assert start2.state == RunState.COMPLETED and barrier.state == RunState.COMPLETED


def test_stop_condition_edge_points_at_the_start_it_waits_for(ec):
    node, server = connect_app(ec)
    client = add(ec, "TestApp", duration=0.2)
    ec.register_connection(client, node)
    # the server is registered (and planned) before the client it waits for
    ec.register_condition(server, ResourceAction.STOP, client, S.STARTED, "100ms")
    ec.deploy()
    ec.wait([server], states=[S.STOPPED])
    stop = ec.recorder.by_name(f"stop-TestApp-{server}")[0]
    assert [r.name for r in stop.upstream] == [f"start-TestApp-{client}"]
    assert stop.state == RunState.COMPLETED


def test_secrets_never_reach_logs(ec, caplog):
    node = add(ec, "TestNode", hostname="h", password="hunter2-secret")
    ec.get_resource(node).info("connecting with hunter2-secret")
    assert all("hunter2-secret" not in m for _, _, m in ec.recorder.logs)
    assert "hunter2-secret" not in caplog.text


def test_a_secret_an_rm_obtains_is_masked_once_registered(ec, caplog):
    node = add(ec, "TestNode", hostname="h")
    ec.register_secret("s3cr3t-from-a-vault")
    ec.get_resource(node).warning("key is s3cr3t-from-a-vault")
    assert any("key is ********" in m for _, _, m in ec.recorder.logs)
    assert "s3cr3t-from-a-vault" not in caplog.text
    assert ec.redact("x s3cr3t-from-a-vault y") == "x ******** y"


def test_summary_json_is_the_summary_one_line_per_resource(tmp_path):
    ec = ExperimentController(exp_id="sumjson", local_dir=str(tmp_path), recorder=Recorder())
    guids = [add(ec, "TestTrivial") for _ in range(3)]
    ec.deploy()
    ec.wait_finished(guids)
    ec.shutdown()
    text = (tmp_path / "sumjson" / ec.run_id / "summary.json").read_text()
    assert json.loads(text) == json.loads(json.dumps(ec.summary(), default=str))
    assert sum('"rtype": "TestTrivial"' in line for line in text.splitlines()) == 3


# -- NEPI's vocabulary ---------------------------------------------------------------------------

def test_states_and_actions_keep_nepis_numbers_and_names():
    assert S.STARTED == 4 and S.RELEASED == 8 and S.FINISHED > S.STARTED
    assert ResourceState2str[4] == "STARTED" and ResourceState2str[S.FAILED] == "FAILED"
    assert (ResourceAction.DEPLOY, ResourceAction.START, ResourceAction.STOP) == (0, 1, 2)
    assert ResourceAction2str[1] == "START"
    assert (ECState.RUNNING, ECState.FAILED, ECState.TERMINATED) == (1, 2, 3)
    assert ActionKind.DEPLOY == "deploy" and f"{ActionKind.RELEASE}-x" == "release-x"


def test_a_condition_delay_is_parsed_once(ec, monkeypatch):
    calls = []
    real = conditions.parse_delay
    monkeypatch.setattr(conditions, "parse_delay", lambda t: calls.append(t) or real(t))
    node, first = connect_app(ec, duration=0.1)
    later = [add(ec, "TestApp", duration=0.1) for _ in range(3)]
    for guid in later:
        ec.register_connection(guid, node)
    ec.register_condition(later, ResourceAction.START, first, S.FINISHED, "200ms")
    ec.deploy()
    assert ec.wait_finished(later, timeout=10)
    assert calls == ["200ms"]
    assert all(ec.get_resource(g).conditions[ResourceAction.START][0].delay == 0.2 for g in later)


def test_save_finds_the_description_format_without_importing_spec(ec, monkeypatch, tmp_path):
    monkeypatch.setattr(persistence, "_serializer", None)  # as if spec was never imported
    ec.register_resource("TestTrivial")
    path = ec.save(str(tmp_path / "x.yaml"))
    assert "TestTrivial" in open(path).read()


def test_save_without_any_format_says_what_to_do(ec, monkeypatch, tmp_path):
    monkeypatch.setattr(persistence, "_serializer", None)
    monkeypatch.setattr(persistence, "entry_points", lambda group: [])
    with pytest.raises(persistence.NoSerializerError, match="import nepi_prefect.spec"):
        ec.save(str(tmp_path / "x.yaml"))


def test_summary_lists_every_rm(ec):
    node, app = connect_app(ec, duration=0.1)
    ec.deploy()
    ec.wait_finished(app)
    summary = ec.summary()
    states = {r["guid"]: r["state"] for r in summary["resources"]}
    assert states[app] == "FINISHED" and states[node] == "STARTED"
    assert summary["resources"][1]["times"]["start_time"] is not None


# -- time strings -------------------------------------------------------------------------------

@pytest.mark.parametrize("text,seconds", [("0s", 0), ("1.5s", 1.5), ("2m", 120), ("1h", 3600),
                                          ("100ms", 0.1), ("250us", 0.00025)])
def test_relative_dates(text, seconds):
    base = datetime.datetime(2020, 1, 1)
    assert (stabsformat(text, base) - base).total_seconds() == pytest.approx(seconds)
