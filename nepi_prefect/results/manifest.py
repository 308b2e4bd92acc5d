"""Read and compare run manifests (``<run_dir>/manifest.json``).

A manifest (written by ``nepi_prefect.execution.environment``) holds the
controller's facts and each resource's, by guid. Here it is flattened to
``{"<resource name>.<path>": value}`` so that two runs, or all the runs of a
campaign, can be compared key by key, and each difference judged: a
different kernel, tool version, qdisc or ``net.*`` sysctl changes what a
network measurement shows; a different clock offset or address list rarely
does.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Iterable

MANIFEST_FILE = "manifest.json"

#: flattened keys whose difference can change a measurement (searched in the key)
SIGNIFICANT = (
    re.compile(r"\.kernel$"), re.compile(r"\.distribution$"), re.compile(r"\.tools\."),
    re.compile(r"\.sysctl\."), re.compile(r"\.interfaces\.[^.]+\.(qdisc|mtu|speed_mbps|driver)$"),
    re.compile(r"\.cpu\.(model|count)$"), re.compile(r"\.extra\."),
    re.compile(r"^controller\.(nepi_prefect|prefect|python)$"),
)
#: keys that differ from run to run by nature: never reported
VOLATILE = re.compile(r"(\.clock\.(epoch|offset_s|offset_bound_s)|\.collect_s|"
                      r"\.interfaces\.[^.]+\.state)$")


def load_manifest(run_dir: str) -> dict[str, Any] | None:
    """The manifest of the run in ``run_dir``, or None if it has none."""
    try:
        with open(os.path.join(run_dir, MANIFEST_FILE)) as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


def flatten(manifest: dict[str, Any], names: dict[str, str] | None = None) -> dict[str, Any]:
    """``{"controller.python": "3.11.7", "node1.sysctl.net.core.rmem_max": "4194304", ...}``.

    Resources are named by ``names`` (guid string -> name), else ``<rtype><guid>``.
    Lists become one comma-separated value.
    """
    flat: dict[str, Any] = {}
    _walk("controller", manifest.get("controller", {}), flat)
    for guid, res in manifest.get("resources", {}).items():
        name = (names or {}).get(str(guid)) or f"{str(res.get('rtype', 'rm')).lower()}{guid}"
        _walk(name, res.get("facts", {}), flat)
    return flat


def _walk(prefix: str, value: Any, flat: dict[str, Any]) -> None:
    if isinstance(value, dict):
        for key, sub in value.items():
            _walk(f"{prefix}.{key}", sub, flat)
    elif isinstance(value, list):
        flat[prefix] = ", ".join(map(str, value))
    else:
        flat[prefix] = value


def is_significant(key: str) -> bool:
    """Whether a difference at flattened ``key`` can change a measurement."""
    return any(p.search(key) for p in SIGNIFICANT)


def differences(a: dict[str, Any], b: dict[str, Any], significant_only: bool = False,
                common_only: bool = False) -> list[dict[str, Any]]:
    """Keys whose values differ between two flattened manifests, as
    ``{"key", "a", "b", "significant"}`` rows, sorted by key. ``common_only``
    skips keys one side lacks (e.g. an interface another user created)."""
    rows = []
    for key in sorted(set(a) | set(b)):
        if VOLATILE.search(key) or a.get(key) == b.get(key):
            continue
        if common_only and (key not in a or key not in b):
            continue
        significant = is_significant(key)
        if significant or not significant_only:
            rows.append({"key": key, "a": a.get(key), "b": b.get(key), "significant": significant})
    return rows


def campaign_warnings(runs: Iterable[tuple[str, dict[str, Any], dict[str, str] | None]]) -> list[str]:
    """Warnings for runs of one campaign whose environments differ in what matters.

    ``runs`` gives ``(label, manifest, names)`` per run (``names``: guid -> resource
    name). Each significant key that takes more than one value across the
    runs gives one warning naming the values and the runs with each.
    """
    seen: dict[str, dict[Any, list[str]]] = {}
    labels: list[str] = []
    flats = []
    for label, manifest, names in runs:
        labels.append(label)
        flats.append(flatten(manifest, names))
    if len(flats) < 2:
        return []
    # Only keys every run has: an interface that came and went is another user's.
    common = set.intersection(*(set(f) for f in flats))
    for label, flat in zip(labels, flats):
        for key in common:
            if not VOLATILE.search(key) and is_significant(key):
                seen.setdefault(key, {}).setdefault(_hashable(flat[key]), []).append(label)
    warnings = []
    for key, values in sorted(seen.items()):
        if len(values) > 1:
            parts = "; ".join(f"{v!r} in {_runs(who)}" for v, who in values.items())
            warnings.append(f"{key} differs between runs: {parts}")
    return warnings


def _hashable(value: Any) -> Any:
    return value if isinstance(value, (str, int, float, bool, type(None))) else repr(value)


def _runs(labels: list[str], shown: int = 3) -> str:
    more = f" and {len(labels) - shown} more" if len(labels) > shown else ""
    return ", ".join(labels[:shown]) + more
