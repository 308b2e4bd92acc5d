"""``sources`` given as URLs are downloaded on the host, from a real HTTP server on loopback."""

from __future__ import annotations

import functools
import http.server
import threading
import uuid

import pytest

from nepi_prefect.execution.ec import ExperimentController
from nepi_prefect.execution.recording import Recorder
from nepi_prefect.execution.resource import ResourceState
from tests.fixtures.sshd import node_attrs

DONE = (ResourceState.FINISHED, ResourceState.FAILED)


@pytest.fixture
def web(tmp_path):
    """An HTTP server on 127.0.0.1 serving ``tmp_path/site``; yields (base URL, site dir)."""
    site = tmp_path / "site"
    site.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", site
    server.shutdown()
    server.server_close()


def run_app(sshd, tmp_path, **attrs):
    ec = ExperimentController(exp_id=f"url-{uuid.uuid4().hex[:6]}", local_dir=str(tmp_path),
                              recorder=Recorder())
    node = ec.register_resource("LinuxNode")
    for name, value in node_attrs(sshd).items():
        ec.set(node, name, value)
    app = ec.register_resource("LinuxApplication")
    for name, value in {"critical": False, **attrs}.items():
        ec.set(app, name, value)
    ec.register_connection(app, node)
    ec.deploy()
    assert ec.wait(app, DONE, timeout=60)
    return ec, app


@pytest.mark.ssh
def test_url_sources_are_downloaded_into_app_home(sshd, web, tmp_path):
    base, site = web
    token = uuid.uuid4().hex
    (site / f"payload-{token}.txt").write_text(f"downloaded {token}\n")
    (site / "tool.sh").write_text("#!/bin/sh\necho tool ran\n")
    ec, app = run_app(sshd, tmp_path,
                      sources=f"{base}/payload-{token}.txt {base}/tool.sh",
                      command=f"cat ${{APP_HOME}}/payload-{token}.txt; sh ${{APP_HOME}}/tool.sh")
    try:
        assert ec.state(app) == ResourceState.FINISHED, ec.get_resource(app).failure
        assert ec.trace(app, "stdout").splitlines() == [f"downloaded {token}", "tool ran"]
    finally:
        ec.shutdown()


@pytest.mark.ssh
def test_a_missing_url_fails_the_app_with_a_clear_error(sshd, web, tmp_path):
    base, _ = web
    missing = f"{base}/nothing-{uuid.uuid4().hex}.tar.gz"
    ec, app = run_app(sshd, tmp_path, sources=missing, command="true")
    try:
        assert ec.state(app) == ResourceState.FAILED
        failure = ec.get_resource(app).failure
        assert "downloading sources failed" in failure and "404" in failure, failure
        assert ec.summary()["resources"][1]["failure"] == failure
    finally:
        ec.shutdown()
