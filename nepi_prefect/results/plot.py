"""Plots of a metric against a parameter, with 95 % confidence intervals.

Works on any runs frame (``query.runs_frame`` or a campaign's frame): one
column per parameter (``NAME.ATTR``) and per metric (``<resource>.<metric>``).
Figures are drawn with matplotlib's Agg canvas directly (no pyplot state, no
display needed). :func:`attach_plot` shows a saved picture on the Prefect
API as a markdown artifact holding it as a data URI.
"""

from __future__ import annotations

import base64
import math
import os
import re
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from nepi_prefect.results.tables import ci95

#: the default figure: 6.4 x 4 inches at 100 dpi = 640 x 400 pixels
FIGSIZE = (6.4, 4.0)
DPI = 100
FORMATS = (".png", ".svg")


class PlotError(ValueError):
    """The frame cannot give the plot asked for (unknown column, no numbers)."""


def _check_column(frame: pd.DataFrame, name: str, what: str) -> None:
    if name not in frame.columns:
        known = frame.attrs.get("parameters" if what == "parameter" else "metrics") or \
            [c for c in frame.columns if "." in c]
        raise PlotError(f"no {what} {name!r} in these runs; known: {', '.join(known) or 'none'}")


def aggregate(frame: pd.DataFrame, x: str, y: str, hue: str | None = None) -> pd.DataFrame:
    """Mean, 95 % CI half-width and count of ``y`` per value of ``x`` (and ``hue``)."""
    _check_column(frame, x, "parameter")
    _check_column(frame, y, "metric")
    if hue:
        _check_column(frame, hue, "parameter")
    data = frame.assign(**{y: pd.to_numeric(frame[y], errors="coerce")}).dropna(subset=[x, y])
    if data.empty:
        raise PlotError(f"no run has both {x} and a numeric {y}")
    keys = [hue, x] if hue else [x]
    grouped = data.groupby(keys, sort=True, dropna=True)[y]
    out = grouped.agg(mean="mean", n="count").reset_index()
    # tables.ci95 is infinite below two samples: no bar is drawn for a single run.
    out["ci95"] = grouped.agg(lambda s: ci95(list(s))).replace(math.inf, math.nan).to_numpy()
    return out


def _numeric(series: pd.Series) -> pd.Series | None:
    values = pd.to_numeric(series, errors="coerce")
    return None if values.isna().any() else values


def draw(frame: pd.DataFrame, x: str, y: str, hue: str | None = None,
         title: str | None = None) -> Figure:
    """A figure of mean ``y`` against ``x`` with 95 % CI error bars, one line per ``hue``."""
    table = aggregate(frame, x, y, hue)
    fig = Figure(figsize=FIGSIZE, dpi=DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    xs_num = _numeric(table[x])
    categories = list(dict.fromkeys(table[x].astype(str))) if xs_num is None else []
    groups = table.groupby(hue, sort=True) if hue else [(None, table)]
    for label, part in groups:
        part = part.sort_values(x)
        xs = (_numeric(part[x]) if xs_num is not None
              else [categories.index(v) for v in part[x].astype(str)])
        ax.errorbar(xs, part["mean"], yerr=part["ci95"].fillna(0), marker="o", capsize=4,
                    label=None if label is None else f"{hue}={label[0] if isinstance(label, tuple) else label}")
    if categories:
        ax.set_xticks(range(len(categories)), categories)
    ax.set_xlabel(x)
    ax.set_ylabel(f"{y} (mean, 95% CI)")
    n = int(table["n"].sum())
    ax.set_title(title or f"{y} vs {x}  (n={n} runs)")
    ax.grid(True, alpha=0.3)
    if hue:
        ax.legend()
    fig.tight_layout()
    return fig


def default_name(x: str, y: str, hue: str | None = None, ext: str = ".png") -> str:
    """``<y>-vs-<x>[-by-<hue>].png`` with unsafe characters replaced."""
    name = f"{y}-vs-{x}" + (f"-by-{hue}" if hue else "")
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name) + ext


def plot_metric(frame: pd.DataFrame, x: str, y: str, out: str | os.PathLike,
                hue: str | None = None, title: str | None = None) -> Path:
    """Draw and save the plot (PNG or SVG by ``out``'s extension); the path."""
    path = Path(out)
    if path.suffix.lower() not in FORMATS:
        raise PlotError(f"{out}: the plot is saved as .png or .svg; got {path.suffix or 'no extension'!r}")
    fig = draw(frame, x, y, hue, title)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    return path


def plot_markdown(path: str | os.PathLike, title: str) -> str:
    """Markdown that shows the picture inline (data URI) and names the file."""
    path = Path(path)
    mime = "image/svg+xml" if path.suffix.lower() == ".svg" else "image/png"
    data = base64.b64encode(path.read_bytes()).decode()
    return f"## {title}\n\n![{title}](data:{mime};base64,{data})\n\nFile: `{path}`\n"


def attach_plot(path: str | os.PathLike, title: str, key: str,
                flow_run_id: Any = None) -> str | None:
    """Post the plot as a markdown artifact when a Prefect API is configured
    (``PREFECT_API_URL``); the artifact id, or None when there is no API."""
    # Prefect is imported only here: reading and plotting results must not need it.
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import ArtifactCreate
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        return None
    with get_client(sync_client=True) as client:
        artifact = client.create_artifact(ArtifactCreate(
            key=key, type="markdown", data=plot_markdown(path, title),
            description=f"nepi-prefect plot: {title}", flow_run_id=flow_run_id))
    return str(artifact.id)


def default_axes(frame: pd.DataFrame) -> tuple[str, str, str | None] | None:
    """The plot a sweep draws by itself: the first numeric parameter that varies
    on x, the first metric that varies (an average if there is one) on y, and a
    second varying parameter with at most 6 values as hue; None if nothing varies."""
    varying = [p for p in frame.attrs.get("parameters", [])
               if p in frame and frame[p].astype(str).nunique() > 1]
    metrics = [m for m in frame.attrs.get("metrics", [])
               if m in frame and pd.to_numeric(frame[m], errors="coerce").nunique() > 1]
    numeric = [p for p in varying if _numeric(frame[p].dropna()) is not None]
    if not varying or not metrics:
        return None
    x = (numeric or varying)[0]
    y = next((m for m in metrics if re.search(r"avg|mean|throughput|rate", m)), metrics[0])
    hue = next((p for p in varying if p != x and frame[p].astype(str).nunique() <= 6), None)
    return x, y, hue


def default_plot(frame: pd.DataFrame, out_dir: str | os.PathLike,
                 title: str | None = None) -> Path | None:
    """Draw :func:`default_axes`'s plot into ``out_dir``; its path, or None if
    the runs vary in nothing that can be plotted."""
    axes = default_axes(frame)
    if axes is None:
        return None
    x, y, hue = axes
    return plot_metric(frame, x, y, Path(out_dir) / default_name(x, y, hue), hue=hue, title=title)
