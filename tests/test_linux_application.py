"""LinuxApplication against a real OpenSSH server."""

from __future__ import annotations

import os
import socket
import time

import pytest

from nepi_prefect.execution.ec import ExperimentController
from nepi_prefect.execution.recording import Recorder
from nepi_prefect.execution.resource import ResourceAction, ResourceState
from nepi_prefect.execution.trace import TraceAttr
from nepi_prefect.transport.ssh import SSHConfig, SSHTransport
from tests.fixtures.sshd import node_attrs
from tests.helpers import wait_until

pytestmark = pytest.mark.ssh
S = ResourceState
DONE = (S.FINISHED, S.FAILED, S.STOPPED, S.RELEASED)


@pytest.fixture
def ec():
    ctl = ExperimentController(exp_id=f"app-{os.urandom(3).hex()}", recorder=Recorder())
    yield ctl
    ctl.shutdown()


def _node(ec, sshd, **extra) -> int:
    n = ec.register_resource("LinuxNode")
    for k, v in node_attrs(sshd, **extra).items():
        ec.set(n, k, v)
    return n


def _app(ec, node: int, **attrs) -> int:
    a = ec.register_resource("LinuxApplication")
    for k, v in attrs.items():
        ec.set(a, k, v)
    ec.register_connection(a, node)
    return a


def _pgrep(sshd, pattern: str) -> str:
    """Processes matching ``pattern`` on the host, seen over a separate connection."""
    t = SSHTransport(SSHConfig(host=sshd.host, port=sshd.port, username=sshd.username,
                               key_filename=sshd.identity, known_hosts=sshd.known_hosts))
    try:
        return t.run(f"pgrep -af {pattern!r} || true").stdout.strip()
    finally:
        t.close()


def test_stdout_and_deploy_traces(ec, sshd):
    n = _node(ec, sshd)
    a = _app(ec, n, command="echo hello; echo oops >&2")
    ec.deploy()
    assert ec.wait(a, DONE, timeout=30) and ec.state(a) == S.FINISHED
    assert ec.trace(a, "stdout") == "hello\n"
    assert ec.trace(a, "stderr") == "oops\n"
    assert ec.trace(a, "exitcode").strip() == "0"
    assert int(ec.trace(a, "pid")) == ec.get_resource(a).pid


def test_stream_size_and_path_while_running(ec, sshd):
    n = _node(ec, sshd)
    a = _app(ec, n, command="for i in $(seq 0 99); do printf '%09d\\n' $i; done; sleep 60")
    ec.deploy()
    assert ec.wait(a, (S.STARTED,) + DONE, timeout=30)
    wait_until(lambda: ec.trace(a, "stdout", TraceAttr.SIZE) == 1000, message="1000 bytes of stdout")
    assert ec.state(a) == S.STARTED
    assert ec.trace(a, "stdout", TraceAttr.STREAM, block=10, offset=3) == "000000003\n"
    path = ec.trace(a, "stdout", TraceAttr.PATH)
    assert path == f"{ec.get_resource(a).run_home}/stdout" and os.path.getsize(path) == 1000
    assert ec.trace(a, "stdout").splitlines()[-1] == "000000099"
    ec.stop(a)
    assert ec.state(a) == S.STOPPED


def test_nepi_build_runs_in_run_home_and_every_run_gets_its_output(ec, sshd):
    """NEPI's convention: build and install run in ${RUN_HOME}, so a relative ``-o hello``
    lands where ``${RUN_HOME}/hello`` finds it, also for the app that reuses the build."""
    n = _node(ec, sshd)
    code = '#include <stdio.h>\nint main(void){printf("hello from C\\n");return 0;}\n'
    attrs = dict(code=code, build="gcc -x c ${APP_HOME}/code -o hello",
                 install="./hello > installed.txt", command="${RUN_HOME}/hello && cat installed.txt")
    apps = [_app(ec, n, **attrs), _app(ec, n, **attrs)]  # same inputs: one build, shared
    ec.deploy()
    assert ec.wait(apps, DONE, timeout=120)
    for a in apps:
        assert ec.state(a) == S.FINISHED, ec.get_resource(a).failure
        assert ec.trace(a, "stdout") == "hello from C\nhello from C\n"
        assert ec.trace(a, "deploy_exitcode").strip() == "0"
    homes = {ec.get_resource(a).app_home for a in apps}
    assert len(homes) == 1 and len({ec.get_resource(a).run_home for a in apps}) == 2
    # built once: the compiler's output went to one run_home, not to the shared app_home
    assert not os.path.exists(f"{homes.pop()}/hello")


def test_failed_build_fails_the_app_with_its_error(ec, sshd):
    n = _node(ec, sshd)
    a = _app(ec, n, build="echo compile-error >&2; exit 2", command="true", critical=False)
    ec.deploy()
    assert ec.wait(a, DONE, timeout=30) and ec.state(a) == S.FAILED


def test_fifty_concurrent_apps_on_one_node(ec, sshd):
    n = _node(ec, sshd)
    apps = [_app(ec, n, command=f"echo app-{i}") for i in range(50)]
    start = time.monotonic()
    ec.deploy()
    assert ec.wait(apps, DONE, timeout=60)
    assert time.monotonic() - start < 15
    assert [ec.trace(a, "stdout") for a in apps] == [f"app-{i}\n" for i in range(50)]


def test_condition_client_starts_after_server(ec, sshd):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    n = _node(ec, sshd)
    server = _app(ec, n, command=f"echo from-server | nc -N -l 127.0.0.1 {port}")
    client = _app(ec, n, command=f"nc -d 127.0.0.1 {port}")
    ec.register_condition(client, ResourceAction.START, server, ResourceState.STARTED, "1s")
    ec.deploy()
    assert ec.wait([server, client], DONE, timeout=30)
    assert ec.state(client) == S.FINISHED, ec.get_resource(client).failure
    assert ec.trace(client, "stdout") == "from-server\n"
    c, s_ = ec.get_resource(client), ec.get_resource(server)
    assert (c.start_time - s_.start_time).total_seconds() >= 1.0


def test_sources_files_and_stdin(ec, sshd, tmp_path):
    src = tmp_path / "pkg"
    src.mkdir()
    (src / "data.txt").write_text("from-sources\n")
    extra = tmp_path / "extra.txt"
    extra.write_text("from-files\n")
    n = _node(ec, sshd)
    a = _app(ec, n, sources=str(src), files=str(extra), stdin="from-stdin\n",
             command="cat ${APP_HOME}/pkg/data.txt extra.txt; cat")
    ec.deploy()
    assert ec.wait(a, DONE, timeout=30) and ec.state(a) == S.FINISHED
    assert ec.trace(a, "stdout") == "from-sources\nfrom-files\nfrom-stdin\n"


def test_env_and_path_substitution(ec, sshd):
    n = _node(ec, sshd)
    a = _app(ec, n, env="GREETING=hi NAME='two words' WHERE=${RUN_HOME}",
             command='echo "$GREETING $NAME"; echo "$WHERE"; echo ${RUN_HOME}; pwd')
    ec.deploy()
    assert ec.wait(a, DONE, timeout=30) and ec.state(a) == S.FINISHED
    run_home = ec.get_resource(a).run_home
    assert ec.trace(a, "stdout").splitlines() == ["hi two words", run_home, run_home, run_home]


def test_non_zero_exit_is_failed_with_the_code(ec, sshd):
    n = _node(ec, sshd)
    a = _app(ec, n, command="echo bad >&2; exit 7", critical=False)
    ok = _app(ec, n, command="echo fine")
    ec.deploy()
    assert ec.wait([a, ok], DONE, timeout=30)
    assert ec.state(a) == S.FAILED and ec.state(ok) == S.FINISHED
    assert "exited with code 7" in ec.get_resource(a).failure


def test_stop_kills_the_whole_process_group(ec, sshd):
    n = _node(ec, sshd)
    marker = f"1000.{os.getpid()}1"
    a = _app(ec, n, command=f"sleep {marker} & sleep {marker}; wait")
    ec.deploy()
    assert ec.wait(a, (S.STARTED,) + DONE, timeout=30)
    wait_until(lambda: _pgrep(sshd, f"sleep {marker}").count("\n") == 1, message="both sleeps run")
    ec.stop(a)
    assert ec.state(a) == S.STOPPED
    assert _pgrep(sshd, f"sleep {marker}") == ""


def test_release_kills_running_processes_and_runs_teardown(sshd, tmp_path):
    ec = ExperimentController(exp_id=f"rel-{os.urandom(3).hex()}", recorder=Recorder())
    marker = f"1000.{os.getpid()}2"
    flag = tmp_path / "torn-down"
    try:
        n = _node(ec, sshd)
        a = _app(ec, n, command=f"sleep {marker}", tearDown=f"touch {flag}")
        ec.deploy()
        assert ec.wait(a, (S.STARTED,) + DONE, timeout=30)
        wait_until(lambda: _pgrep(sshd, f"sleep {marker}"), message="the sleep runs")
    finally:
        ec.shutdown()
    assert _pgrep(sshd, f"sleep {marker}") == ""
    assert flag.exists()


def test_depends_installs_with_the_package_manager(ec, sshd):
    n = _node(ec, sshd)
    a = _app(ec, n, depends="bash coreutils", command="echo ok")
    ec.deploy()
    assert ec.wait(a, DONE, timeout=120) and ec.state(a) == S.FINISHED
    assert ec.get_resource(n).pkg_manager in ("apt-get", "dnf", "yum")


def test_release_order_collectors_first_then_apps_then_node(ec, sshd):
    n = _node(ec, sshd)
    a = _app(ec, n, command="true")
    app, node = ec.get_resource(a), ec.get_resource(n)
    assert app.release_after() == [] and node.release_after() == [a]


def test_app_survives_a_dropped_connection(ec, sshd):
    n = _node(ec, sshd)
    a = _app(ec, n, command="sleep 1.5; echo survived")
    ec.deploy()
    assert ec.wait(a, (S.STARTED,) + DONE, timeout=30)
    ec.get_resource(n).transport._client.get_transport().close()  # the link drops
    assert ec.wait(a, DONE, timeout=30) and ec.state(a) == S.FINISHED
    assert ec.trace(a, "stdout") == "survived\n"


def test_node_through_a_gateway(ec, sshd):
    # the same sshd serves as the jump host: the node is reached over direct-tcpip
    n = _node(ec, sshd, gateway=sshd.host, gatewayPort=sshd.port, gatewayUser=sshd.username)
    a = _app(ec, n, command="echo via-gateway")
    ec.deploy()
    assert ec.wait(a, DONE, timeout=30) and ec.state(a) == S.FINISHED, ec.get_resource(n).failure
    assert ec.trace(a, "stdout") == "via-gateway\n"
    assert ec.get_resource(n).transport._gw_client is not None


def test_children_a_finished_app_left_do_not_outlive_release(sshd):
    ec = ExperimentController(exp_id=f"cp-{os.urandom(3).hex()}", recorder=Recorder())
    marker = f"1000.{os.getpid()}3"
    try:
        n = _node(ec, sshd, cleanProcesses=True)
        # exits 0 at once, leaving a background sleep in its process group
        a = _app(ec, n, command=f"sleep {marker} > /dev/null 2>&1 &")
        ec.deploy()
        assert ec.wait(a, DONE, timeout=30) and ec.state(a) == S.FINISHED
        assert _pgrep(sshd, f"sleep {marker}") != ""
    finally:
        ec.shutdown()
    assert _pgrep(sshd, f"sleep {marker}") == ""
