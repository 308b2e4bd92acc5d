"""What an application's deploy puts on its host besides its run_home: the app_home.

Sources and code go in ${APP_HOME}; build and install run in ${RUN_HOME}, as in
NEPI, once per node for the same inputs (the app_home is named by a digest of
them). What they leave in their working directory is kept in
``${APP_HOME}/.nepi-run-home`` and copied into the run_home of every later app
that reuses this app_home. Files and stdin are uploaded to the run_home.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
from collections.abc import Callable
from typing import Any

from nepi_prefect.resources.linux.appcommands import build_script, fetch_command

_URL = re.compile(r"^(https?|ftp)://", re.IGNORECASE)
#: in app_home: what build and install left in ${RUN_HOME}, for the runs that reuse the build
_KEPT_RUN_HOME = ".nepi-run-home"
_APP_HOME_INPUTS = ("sources", "code", "build", "install")


class ApplicationError(RuntimeError):
    """The application could not be deployed or run."""


def app_digest(get: Callable[[str], Any]) -> str:
    """A hash of what makes the app_home (``get``: the app's attribute getter):
    runs with the same inputs share it."""
    h = hashlib.sha256()
    for name in ("depends", *_APP_HOME_INPUTS):
        h.update(f"{name}\0{get(name) or ''}\0".encode())
    for src in (get("sources") or "").split():
        if not _URL.match(src) and os.path.exists(src):
            st = os.stat(src)
            h.update(f"{os.path.abspath(src)}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def needs_app_home(get: Callable[[str], Any]) -> bool:
    return any(get(n) for n in _APP_HOME_INPUTS)


def prepare_app_home(app: Any, node: Any) -> None:
    """Sources, code, build and install of ``app`` (a LinuxApplication) on ``node``,
    unless an earlier app with the same inputs made them (see the module's docstring)."""
    run_home, app_home = app.run_home, app.app_home
    home, run = shlex.quote(app_home), shlex.quote(run_home)
    kept = f"{app_home}/{_KEPT_RUN_HOME}"
    with node.app_lock(os.path.basename(app_home)):
        if node.transport.run(f"[ -f {home}/.nepi-ready ] && "
                              f"cp -a {shlex.quote(kept)}/. {run}/").ok:
            app.debug(f"reusing {app_home}")
            return
        _fetch_sources(app, node)
        if app.get("code") is not None:
            node.transport.write(f"{app_home}/code", app.get("code").encode())
        steps = [s for s in (app.replace_paths(app.get("build")),
                             app.replace_paths(app.get("install"))) if s]
        result = node.transport.run(build_script(run_home, app_home, steps, kept), timeout=3600)
        if not result.ok:
            err = node.transport.read(f"{app_home}/deploy_stderr") or b""
            raise ApplicationError(
                f"{app.get_rtype()} {app.guid}: build/install failed with exit code "
                f"{result.exitcode}: {err.decode(errors='replace').strip()[-500:]}")


def _fetch_sources(app: Any, node: Any) -> None:
    urls = []
    for src in (app.get("sources") or "").split():
        if _URL.match(src):
            urls.append(src)
        elif os.path.exists(src):
            node.transport.put(src, f"{app.app_home}/{os.path.basename(src.rstrip('/'))}")
        else:
            raise ApplicationError(f"{app.get_rtype()} {app.guid}: source {src!r} is neither "
                                   f"an existing local path nor a URL")
    if urls:
        node.transport.run(fetch_command(app.app_home, urls),
                           timeout=1800).check("downloading sources")


def upload_run_files(app: Any, node: Any) -> None:
    """``files`` and ``stdin`` of ``app`` into its run_home."""
    for path in (app.get("files") or "").split():
        if not os.path.exists(path):
            raise ApplicationError(f"{app.get_rtype()} {app.guid}: file {path!r} does not exist")
        node.transport.put(path, f"{app.run_home}/{os.path.basename(path.rstrip('/'))}")
    stdin = app.get("stdin")
    if stdin:
        if os.path.isfile(stdin):
            node.transport.put(stdin, f"{app.run_home}/stdin")
        else:
            node.transport.write(f"{app.run_home}/stdin", stdin.encode())
