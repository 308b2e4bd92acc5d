"""NetnsTransport: persistent shells inside a namespace, framed like the SSH transport's."""

from __future__ import annotations

import os
import subprocess
import threading

import pytest

from nepi_prefect.transport.base import TransportError, TransportTimeout
from nepi_prefect.transport.netns import NetnsTransport
from tests.fixtures.netns import netns_supported


@pytest.fixture
def netns():
    why = netns_supported()
    if why:
        pytest.skip(why)
    name = f"npt{os.getpid() % 100000}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    subprocess.run(["ip", "-n", name, "addr", "add", "10.9.9.9/32", "dev", "lo"], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


def test_commands_run_in_the_namespace_with_output_and_exit_code(netns):
    t = NetnsTransport(netns)
    t.connect()
    try:
        r = t.run("ip -o addr show dev lo; echo oops >&2; exit 3")
        assert "10.9.9.9/32" in r.stdout and r.stderr == "oops\n" and r.exitcode == 3
        assert t.run("echo still here").stdout == "still here\n"  # `exit` left the shell alone
        assert t.run("if then").exitcode != 0  # a syntax error neither
        assert t.run("printf 'no newline'").stdout == "no newline"
        with pytest.raises(TransportTimeout):
            t.run("sleep 5", timeout=0.3)
        assert t.run("echo after a timeout").ok
    finally:
        t.close()


def test_concurrent_commands_use_several_shells_and_close_stops_them(netns):
    t = NetnsTransport(netns, max_shells=3)
    results = []
    threads = [threading.Thread(target=lambda i=i: results.append(t.run(f"sleep 0.3; echo {i}")))
               for i in range(6)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert sorted(r.stdout for r in results) == [f"{i}\n" for i in range(6)]
    pids = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True).stdout
    assert 1 <= len(pids.split()) <= 3
    t.close()
    pids = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True).stdout
    assert pids.split() == []


def test_a_missing_namespace_is_an_error(netns):
    with pytest.raises(TransportError, match="no such network namespace"):
        NetnsTransport(netns + "x").connect()
