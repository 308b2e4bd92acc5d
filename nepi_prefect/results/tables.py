"""Tables of runs: the helpers the CLI and the flows share.

Rows are plain dicts (one per run); these functions flatten a run's summary
into a row, give every row the same columns, write them as CSV, and read the
``summary.json`` files a results directory holds.
"""

from __future__ import annotations

import csv
import json
import math
import os
import statistics
from pathlib import Path
from typing import Any


def ci95(samples: list[float]) -> float:
    """Half-width of the normal 95% confidence interval of the mean (NEPI's test).

    Infinite below two samples: nothing is known of the spread yet.
    """
    if len(samples) < 2:
        return math.inf
    return 2 * statistics.pstdev(samples) / math.sqrt(len(samples))


def flat_metrics(summary: dict[str, Any]) -> dict[str, Any]:
    """``{"<resource name>.<metric>": value}`` over a summary's resources."""
    return {f"{res.get('name', res['guid'])}.{key}": value
            for res in summary.get("resources", [])
            for key, value in (res.get("metrics") or {}).items()}


def uniform_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Same columns in every row (a table needs them), in first-seen order; missing cells None."""
    columns = list(dict.fromkeys(k for row in rows for k in row))
    return [{c: row.get(c) for c in columns} for row in rows]


def write_csv(rows: list[dict[str, Any]], path: str) -> str:
    """Write ``rows`` (uniform, see :func:`uniform_rows`) to ``path``, creating its directory."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]) if rows else [])
        writer.writeheader()
        writer.writerows(rows)
    return path


def artifact_key(name: str | None, kind: str) -> str:
    """A Prefect artifact key for ``kind`` of experiment ``name``, e.g. ``nepi-sweep-ping``.

    Prefect accepts lowercase letters, digits and dashes only.
    """
    base = "".join(c if c.isalnum() else "-" for c in (name or "experiment").lower())
    return f"nepi-{kind}-{base}".strip("-")[:100]


def load_summaries(root: str, exp_id: str | None = None) -> list[dict[str, Any]]:
    """Every ``summary.json`` under ``root`` (of ``exp_id`` only, if given), oldest first.

    Unreadable files are skipped; each summary gets ``run_dir`` if it lacks one.
    """
    pattern = f"{exp_id}/*/summary.json" if exp_id else "*/*/summary.json"
    found = []
    for path in sorted(Path(root).glob(pattern)):
        try:
            summary = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        summary.setdefault("run_dir", str(path.parent))
        found.append(summary)
    return sorted(found, key=lambda s: (str(s.get("run_id")), str(s.get("exp_id"))))
