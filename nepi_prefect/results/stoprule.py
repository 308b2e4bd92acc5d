"""When to stop replicating a point: NEPI's confidence-interval rule, a coefficient
of variation, and minimum/maximum numbers of runs."""

from __future__ import annotations

import math
import statistics
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from nepi_prefect.results.tables import ci95


def cv(samples: list[float]) -> float:
    """Coefficient of variation (sample standard deviation over |mean|); inf if undefined."""
    if len(samples) < 2:
        return math.inf
    mean = statistics.fmean(samples)
    return statistics.stdev(samples) / abs(mean) if mean else math.inf


class StopRule(BaseModel):
    """Replicate a point until ``metric`` ("<resource>.<metric>") settles.

    It has settled when, with at least ``min_runs`` samples, the 95% CI half-width is
    within ``ci_pct`` percent of the mean (NEPI's rule) and/or the coefficient of
    variation is at most ``cv_pct`` percent. At ``max_runs`` the point stops anyway
    (decision ``max_runs``).
    """

    model_config = ConfigDict(extra="forbid")

    metric: str = Field(description='"<resource>.<metric>", e.g. "ping.rtt_avg_ms"')
    ci_pct: float | None = Field(default=None, gt=0, description="CI half-width within this % of the mean")
    cv_pct: float | None = Field(default=None, gt=0, description="coefficient of variation at most this %")
    min_runs: int = Field(default=3, ge=1)
    max_runs: int = Field(default=10, ge=1)

    @model_validator(mode="after")
    def _coherent(self) -> "StopRule":
        if "." not in self.metric:
            raise ValueError(f"metric {self.metric!r}: expected <resource>.<metric>, e.g. ping.rtt_avg_ms")
        if self.max_runs < self.min_runs:
            raise ValueError(f"max_runs {self.max_runs} < min_runs {self.min_runs}")
        if self.ci_pct is None and self.cv_pct is None and self.min_runs != self.max_runs:
            raise ValueError("a stop rule needs ci_pct or cv_pct (or min_runs == max_runs)")
        return self

    def decide(self, samples: list[float], runs: int) -> dict[str, Any]:
        """The decision for a point with ``runs`` finished runs giving ``samples``:
        ``{"decision": "converged"|"more"|"max_runs", "n", "mean", "ci95", "ci_pct", "cv_pct"}``."""
        n = len(samples)
        mean = statistics.fmean(samples) if samples else None
        half = ci95(samples)
        ci_pct = 100 * half / abs(mean) if mean else math.inf
        cv_pct = 100 * cv(samples)
        has_rule = self.ci_pct is not None or self.cv_pct is not None
        held = has_rule and runs >= self.min_runs and n >= min(2, self.min_runs) and all((
            self.ci_pct is None or ci_pct <= self.ci_pct,
            self.cv_pct is None or cv_pct <= self.cv_pct))
        if held:
            decision = "converged"
        elif runs >= self.max_runs:
            decision = "max_runs"
        else:
            decision = "more"
        finite = lambda x: None if x is None or math.isinf(x) else round(x, 6)  # noqa: E731
        return {"decision": decision, "rule": self.describe(), "runs": runs, "n": n,
                "mean": finite(mean), "ci95": finite(half), "ci_pct": finite(ci_pct),
                "cv_pct": finite(cv_pct)}

    def describe(self) -> str:
        parts = [f"{self.metric}:"]
        if self.ci_pct is not None:
            parts.append(f"ci95 <= {self.ci_pct:g}% of mean")
        if self.cv_pct is not None:
            parts.append(f"cv <= {self.cv_pct:g}%")
        parts.append(f"runs {self.min_runs}..{self.max_runs}")
        return " ".join(parts)
