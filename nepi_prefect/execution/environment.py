"""The run's environment manifest: what the experiment ran on.

At shutdown the EC calls :func:`record_environment`: it gathers the facts
each RM reported (``ResourceManager.facts()``; a Linux node gathers its
host's at deploy, in one command) and this controller's own (Python,
nepi-prefect and Prefect versions, OS, the hash of the run's saved
description), writes ``<run_dir>/manifest.json`` and returns the manifest,
which the summary carries to the recorder. Comparing manifests is
``nepi_prefect.results.manifest``'s job.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import platform
import socket
import sys
from importlib import metadata
from typing import Any

from nepi_prefect.execution.experiment import Experiment
from nepi_prefect.execution.persistence import NoSerializerError
from nepi_prefect.util.files import atomic_file

MANIFEST_FILE = "manifest.json"
#: the run's description as ``spec.run.run_experiment`` saves it before deploy, and as
#: the EC saves it at shutdown when nobody did (JSON: fast for thousands of RMs)
DESCRIPTION_FILES = ("experiment.yaml", "experiment.json")
SCHEMA = 1

log = logging.getLogger(__name__)


def package_version(name: str) -> str | None:
    """The installed version of distribution ``name`` (without importing it)."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


@functools.lru_cache(maxsize=1)
def _static_controller_facts() -> dict[str, Any]:
    # Package metadata scans sys.path: read once per process.
    try:
        distribution = platform.freedesktop_os_release().get("PRETTY_NAME")
    except OSError:
        distribution = None
    return {
        "hostname": socket.gethostname(), "kernel": platform.release(),
        "machine": platform.machine(), "distribution": distribution,
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(), "python_implementation": platform.python_implementation(),
        "nepi_prefect": package_version("nepi-prefect"), "prefect": package_version("prefect"),
        "executable": sys.executable,
    }


def controller_facts() -> dict[str, Any]:
    """This machine and the software that drove the run."""
    return dict(_static_controller_facts())


def file_sha256(path: str) -> str | None:
    """The SHA-256 of a file, or None if it cannot be read."""
    try:
        with open(path, "rb") as handle:
            return hashlib.sha256(handle.read()).hexdigest()
    except OSError:
        return None


def description_path(run_dir: str) -> str | None:
    """The saved description of the run in ``run_dir``, if there is one."""
    for name in DESCRIPTION_FILES:
        if os.path.isfile(os.path.join(run_dir, name)):
            return os.path.join(run_dir, name)
    return None


def build_manifest(ec: Experiment) -> dict[str, Any]:
    """The manifest of ``ec``'s run: controller facts and each RM's facts, by guid."""
    resources = {}
    for guid in ec.resources:
        rm = ec.get_resource(guid)
        try:
            facts = rm.facts()
        except Exception as exc:  # a third-party hook must not lose the run's record
            facts = {"error": f"facts() raised {type(exc).__name__}: {exc}"}
        if facts:
            resources[str(guid)] = {"rtype": rm.get_rtype(), "facts": facts}
    controller = controller_facts()
    path = description_path(ec.run_dir)
    controller["description"] = {"file": path and os.path.basename(path),
                                 "sha256": path and file_sha256(path)}
    return {"schema": SCHEMA, "exp_id": ec.exp_id, "run_id": ec.run_id,
            "controller": controller, "resources": resources}


def record_environment(ec: Experiment) -> dict[str, Any]:
    """Save the run's description if nobody did, write ``manifest.json``; the manifest.

    A run driven through the Python API saves its description here, at
    shutdown; ``spec.run.run_experiment`` saves it before deploy.
    """
    try:
        os.makedirs(ec.run_dir, exist_ok=True)
        if description_path(ec.run_dir) is None:
            ec.save(os.path.join(ec.run_dir, DESCRIPTION_FILES[1]))
    except NoSerializerError:
        # Nothing lent the engine a description format (nepi_prefect.spec not imported).
        log.info("run %s: no description saved (import nepi_prefect.spec to save it)", ec.run_id)
    except Exception as exc:  # the description is a convenience; the run stands without it
        log.warning("could not save the description of run %s: %s", ec.run_id, exc)
    manifest = build_manifest(ec)
    try:
        with atomic_file(os.path.join(ec.run_dir, MANIFEST_FILE), "w") as out:
            json.dump(manifest, out, indent=2, default=str)
    except OSError as exc:
        log.warning("could not write the manifest in %s: %s", ec.run_dir, exc)
    return manifest
