"""Test session setup shared by every test module.

Fixture modules live in tests/fixtures/; they are loaded here, at the root,
because pytest only accepts ``pytest_plugins`` in the top-level conftest.
"""

import os
import shutil
import signal
import tempfile

import pytest

# The suite sends Ctrl-C (SIGINT) to scripts and CLIs it starts. Started as a background
# job of a non-interactive shell (`... &`, nohup), this process has SIGINT ignored and
# every child would inherit that: they would not see the Ctrl-C. Handle it as Python does
# when started from a terminal, so children start with the default disposition.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

# Keep test runs away from the user's own Prefect database and results, and
# keep the engine-only tests fast: Prefect tests opt in to the Prefect recorder.
_session_home = tempfile.mkdtemp(prefix="nepi-prefect-tests-")
os.environ.setdefault("PREFECT_HOME", os.path.join(_session_home, "prefect"))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("NEPI_PREFECT_RESULTS", os.path.join(_session_home, "results"))
os.environ.setdefault("NEPI_PREFECT_RECORDER", "none")
# the per-host notes of each run's processes (resources/linux/lostruns.py): the session's own
os.environ.setdefault("NEPI_PREFECT_LOST_RUNS", os.path.join(_session_home, "host-runs"))
# the files of the emulated (netns) hosts the tests make: the session's own
os.environ.setdefault("NEPI_PREFECT_NETNS_HOMES", os.path.join(_session_home, "netns-homes"))
# where tests put the homes of the Prefect servers they start (50 MB and more each):
# removed with the rest when the session passes, kept for a look when it fails
os.environ["NEPI_PREFECT_TEST_TMP"] = _session_home

pytest_plugins = ["tests.fixtures.sshd", "tests.fixtures.prefect_api", "tests.fixtures.netns",
                  "tests.fixtures.sudo_user"]

#: fixtures that start or talk to a Prefect API
PREFECT_FIXTURES = {"prefect_server", "scheduling_server"}


def pytest_collection_modifyitems(config, items):
    """A test that uses a Prefect API must say so, so ``-m "not prefect"`` runs without one."""
    unmarked = [item.nodeid for item in items
                if PREFECT_FIXTURES & set(getattr(item, "fixturenames", ()))
                and item.get_closest_marker("prefect") is None]
    if unmarked:
        raise pytest.UsageError("tests using a Prefect API need @pytest.mark.prefect: "
                                + ", ".join(unmarked))


def pytest_sessionfinish(session, exitstatus):
    """A session that passed leaves nothing in the temporary directory."""
    if exitstatus == 0:
        shutil.rmtree(_session_home, ignore_errors=True)
