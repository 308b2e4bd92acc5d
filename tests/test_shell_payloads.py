"""Shell payloads in every string attribute of every built-in Linux RM, through a real sshd.

Each payload tries to create a marker file (``touch``, ``$(...)``, backquotes,
a newline, broken quotes, ``../`` paths). Every combination (RM type,
attribute, payload) is either refused at ``set`` with an error naming the
attribute, or run for real in one experiment on a loopback OpenSSH server.
Afterwards no marker exists and nothing was written outside the run's
directories (the node's home and the run's results directory).

Excluded, because they ARE shell code by contract (the user's command and its
build, install and tear-down steps): :data:`SHELL_CODE`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time

import pytest

from nepi_prefect.execution.ec import ExperimentController
from nepi_prefect.execution.errors import InvalidInputError
from nepi_prefect.execution.factory import ResourceFactory
from nepi_prefect.execution.attribute import Types
from nepi_prefect.execution.recording import Recorder
from nepi_prefect.execution.resource import ResourceState as S
from tests.fixtures.sshd import free_port, node_attrs

pytestmark = pytest.mark.ssh

#: attributes that are shell code by contract: the payload would run, as documented
SHELL_CODE = {"command": "the command run on the host",
              "build": "shell commands run at deploy",
              "install": "shell commands run at deploy",
              "tearDown": "the shell command run at release"}

#: payload templates; {m} is a marker path that must never come to exist
PAYLOADS = (
    "x; touch {m}",
    "$(touch {m})",
    "`touch {m}`",
    "x\ntouch {m}\n",
    "x' ; touch {m} ; '",
    'x" ; touch {m} ; "',
    "x && touch {m} || touch {m}",
    "../" * 14 + "{rel}",  # a relative path that climbs to the marker from anywhere
)

#: what makes each type runnable on its own (the payload then replaces one attribute)
BASE = {
    # the paths substituted into a command and into env values (the node's home is in them)
    "LinuxApplication": {"command": 'cat > /dev/null; echo "${RUN_HOME}" ${APP_HOME} '
                                    '${NODE_HOME} ${EXP_HOME} "$P" > paths',
                         "env": "P=${NODE_HOME}/x"},
    "LinuxPing": {"target": "127.0.0.1", "count": 1, "deadline": 5},
    "LinuxTraceroute": {"target": "127.0.0.1", "maxHops": 2, "queries": 1, "waitTime": 1},
    "LinuxTcpdump": {"interface": "lo", "count": 1},
    "LinuxUdpTest": {"target": "127.0.0.1", "connectRetry": 0, "duration": 0.2},
    "Collector": {"traceName": "stdout"},
}
TERMINAL = (S.FINISHED, S.FAILED, S.STOPPED, S.RELEASED)


def _builtin_types() -> dict[str, type]:
    """Every built-in RM type of the Linux platform (and the collector it uses)."""
    return {name: cls for name, cls in ResourceFactory.resource_types().items()
            if cls.__module__.startswith(("nepi_prefect.resources.linux.",
                                          "nepi_prefect.resources.all."))}


def _string_attributes(cls) -> list[str]:
    return [a.name for a in cls.get_attributes() if a.type == Types.String]


def _tree(root: str) -> set[str]:
    out = set()
    for d, dirs, files in os.walk(root):
        out.update(os.path.join(d, n) for n in dirs + files)
    return out


@pytest.fixture
def box():
    root = tempfile.mkdtemp(prefix="nepi-payloads-")
    for sub in ("markers", "home", "results", "control"):
        os.makedirs(os.path.join(root, sub))
    yield root
    shutil.rmtree(root, ignore_errors=True)


def test_no_payload_escapes_any_string_attribute(sshd, box):
    types = _builtin_types()
    assert {"LinuxNode", "LinuxApplication", "LinuxPing", "Collector"} <= set(types)
    assert set(BASE) | {"LinuxNode"} >= set(types), "a new built-in type needs a BASE entry"
    markers = os.path.join(box, "markers")
    home = os.path.join(box, "home")
    probe = ExperimentController(exp_id="payload-probe", local_dir=os.path.join(box, "probe"),
                                 recorder=Recorder())
    ec = ExperimentController(exp_id="payloads", local_dir=os.path.join(box, "results"),
                              recorder=Recorder())
    combos: dict[str, tuple[str, str, str]] = {}  # marker name -> (rtype, attribute, payload)
    refused: list[tuple[str, str, str, str]] = []
    ran: dict[int, tuple[str, str, str]] = {}
    waited: list[int] = []  # what ends by itself: the apps (a node's own app for a node)
    excluded = set()

    def payloads_for(rtype: str, attr: str):
        for i, template in enumerate(PAYLOADS):
            name = f"{rtype}.{attr}.{i}"
            marker = os.path.join(markers, name)
            combos[name] = (rtype, attr, template)
            yield template.format(m=marker, rel=marker.lstrip("/"))

    def accepted(rtype: str, attr: str, value: str) -> bool:
        """Refused at set (kept, with its message) or accepted."""
        guid = probe.register_resource(rtype)
        try:
            probe.set(guid, attr, value)
        except InvalidInputError as exc:
            refused.append((rtype, attr, value, str(exc)))
            return False
        return True

    def new(rtype: str, attrs: dict, critical: bool = False) -> int:
        guid = ec.register_resource(rtype)
        for k, v in {**BASE.get(rtype, {}), **attrs}.items():
            ec.set(guid, k, v)
        ec.set(guid, "critical", critical)
        return guid

    login_home = os.path.expanduser("~")  # the sshd user's: relative paths land there
    before_home = set(os.listdir(login_home))
    try:
        base_node = {**node_attrs(sshd), "home": home, "connectTimeout": 5.0}
        # a control: shell code by contract does run, so the marker check can fail
        host = new("LinuxNode", base_node, critical=True)
        control = new("LinuxApplication", {"command": f"touch {box}/control/ran"})
        ec.register_connection(control, host)
        udp_port = free_port()  # nothing listens: the udp clients end at once
        for rtype, cls in sorted(types.items()):
            for attr in _string_attributes(cls):
                if attr in SHELL_CODE:
                    excluded.add(attr)
                    continue
                for value in payloads_for(rtype, attr):
                    if not accepted(rtype, attr, value):
                        continue
                    if rtype == "LinuxNode":  # a node of its own, with an app to run
                        guid = new("LinuxNode", {**base_node, attr: value})
                        app = new("LinuxApplication", {})
                        ec.register_connection(app, guid)
                        waited.append(app)
                    else:
                        extra = {"port": udp_port} if rtype == "LinuxUdpTest" else {}
                        guid = new(rtype, {**extra, attr: value})
                        if rtype == "Collector":
                            source = new("LinuxApplication", {})
                            ec.register_connection(source, host)
                            ec.register_connection(guid, source)
                        else:
                            ec.register_connection(guid, host)
                            waited.append(guid)
                    ran[guid] = (rtype, attr, value)
        assert excluded == set(SHELL_CODE)
        started = time.monotonic()
        ec.deploy()
        waited.append(control)
        assert ec.wait(waited, TERMINAL, timeout=120), \
            [(g, ran.get(g), ec.state(g)) for g in waited if ec.state(g) not in TERMINAL]
        assert ec.state(host) == S.STARTED, ec.get_resource(host).failure
        assert ec.state(control) == S.FINISHED
    finally:
        ec.shutdown()
        probe.shutdown()
    elapsed = time.monotonic() - started
    print(f"\n{len(ran)} combinations run, {len(refused)} refused at set, "
          f"excluded (shell code): {sorted(excluded)}; {elapsed:.1f} s")

    # the control ran (markers can be created), and no payload made one
    assert os.path.exists(os.path.join(box, "control", "ran"))
    escaped = sorted(os.listdir(markers))
    assert escaped == [], [combos[name] for name in escaped]
    # every combination was tried one way or the other, and most did run
    assert len(ran) + len(refused) == len(combos)
    assert len(ran) >= 200
    for rtype, attr, value, message in refused:
        assert attr in message, (rtype, attr, value, message)
    # writes: only under the node's .nepi-prefect (this experiment and the app builds)
    # and this run's results directory
    allowed = (os.path.join(home, ".nepi-prefect"), ec.run_dir)
    outside = sorted(p for p in _tree(box) if not p.startswith(allowed)
                     and p not in {os.path.join(box, s) for s in
                                   ("markers", "home", "results", "control", "control/ran",
                                    "probe")}
                     and not p.startswith(os.path.join(box, "probe")))
    parents = {os.path.dirname(ec.run_dir), os.path.dirname(os.path.dirname(ec.run_dir))}
    assert [p for p in outside if p not in parents] == []
    exp_dirs = os.listdir(os.path.join(home, ".nepi-prefect", "exp"))
    assert exp_dirs == ["payloads"]
    # nothing made from a payload in the login directory (others' tests write there too,
    # so only names that come from a payload count)
    new = set(os.listdir(login_home)) - before_home
    assert [n for n in new if n == "x" or any(p in n for p in ("touch", "$(", "`"))] == []
