"""NEPI's ExperimentRunner: repeat an experiment until a metric converges.

Each run is a fresh EC loaded from the saved description, so runs are
independent; they share the experiment id, and each has its own run id
(and results directory).
"""

from __future__ import annotations

import math
import os
import statistics
import time
from typing import Any, Callable

from nepi_prefect.execution.ec import ExperimentController
from nepi_prefect.execution.errors import ExperimentError
from nepi_prefect.execution.recording import Recorder
from nepi_prefect.execution.states import ECState

MetricCallback = Callable[[ExperimentController, int], Any]
ConvergenceCallback = Callable[[ExperimentController, int, list], bool]


class ExperimentFailedError(ExperimentError, RuntimeError):
    """One run of the experiment FAILED."""


class ExperimentRunner:
    """Run the same experiment independently, again and again, until it converges.

    :param recorder_factory: makes the recorder of each run (default: the EC's default)
    :param ec_kwargs: more arguments for each run's EC (``local_dir``, ``nthreads``...)
    """

    def __init__(self, recorder_factory: Callable[[], Recorder] | None = None, **ec_kwargs: Any):
        self.recorder_factory = recorder_factory
        self.ec_kwargs = ec_kwargs
        #: the metrics of the runs so far (those that were not None)
        self.samples: list[Any] = []

    def run(self, ec: ExperimentController | str, min_runs: int = 1, max_runs: int = -1,
            wait_time: float = 0, wait_guids: list[int] | None = None,
            compute_metric_callback: MetricCallback | None = None,
            evaluate_convergence_callback: ConvergenceCallback | None = None) -> int:
        """Run the experiment until ``evaluate_convergence_callback(ec, run, samples)``
        says so, at least ``min_runs`` and at most ``max_runs`` (-1: no limit) times.
        Returns the number of runs.

        ``ec`` is an undeployed EC (its description is saved and every run loads
        it; ``ec`` itself is not run) or the path of a saved description. Each run
        waits for ``wait_guids`` to finish (None: the description's ``wait_for``
        or every resource that ends by itself), then ``wait_time`` seconds, then
        ``compute_metric_callback(ec, run)`` gives its metric. Without a
        convergence callback, metrics are taken as normal and the runs stop
        when the 95% confidence interval is within 5% of the mean.
        """
        if (not max_runs or max_runs < 0) and not compute_metric_callback:
            raise ExperimentError("undefined stop condition: set compute_metric_callback or max_runs")
        if compute_metric_callback and not evaluate_convergence_callback:
            evaluate_convergence_callback = self.evaluate_normal_convergence
        path = self._saved(ec)
        self.samples = []
        run = 0
        while True:
            run += 1
            run_ec = self.run_experiment(path, wait_time, wait_guids)
            try:
                stop = self._after_run(run_ec, run, compute_metric_callback,
                                       evaluate_convergence_callback, min_runs)
            finally:
                run_ec.shutdown()
            if stop or (max_runs is not None and max_runs > -1 and run >= max(max_runs, min_runs)):
                return run

    def _after_run(self, ec: ExperimentController, run: int, compute: MetricCallback | None,
                   evaluate: ConvergenceCallback | None, min_runs: int) -> bool:
        if not compute:
            return False
        metric = compute(ec, run)
        if metric is None:
            return False
        self.samples.append(metric)
        return run >= min_runs and bool(evaluate and evaluate(ec, run, list(self.samples)))

    def _saved(self, ec: ExperimentController | str) -> str:
        if isinstance(ec, (str, os.PathLike)):
            return str(ec)
        self.ec_kwargs.setdefault("exp_id", ec.exp_id)
        self.ec_kwargs.setdefault("local_dir", ec.local_dir)
        return ec.save(os.path.join(ec.exp_dir, "experiment.yaml"))

    def run_experiment(self, filepath: str, wait_time: float = 0,
                       wait_guids: list[int] | None = None) -> ExperimentController:
        """One run: load, deploy, wait, release. Raises ExperimentFailedError if it FAILED."""
        kwargs = dict(self.ec_kwargs)
        if self.recorder_factory is not None:
            kwargs["recorder"] = self.recorder_factory()
        ec = ExperimentController.load(filepath, **kwargs)
        try:
            if wait_guids is None:
                wait_guids = ec.end_guids()  # a description's wait_for, or what ends by itself
            ec.deploy()
            ec.wait_finished(wait_guids)
            time.sleep(wait_time)
            ec.release()
        except BaseException:
            ec.shutdown()
            raise
        if ec.ecstate == ECState.FAILED:
            ec.shutdown()
            raise ExperimentFailedError(f"experiment {ec.exp_id} run {ec.run_id} failed: {ec.failure}")
        return ec

    def evaluate_normal_convergence(self, ec: ExperimentController, run: int,
                                    metrics: list[float]) -> bool:
        """True when the 95% confidence interval (data taken as normal) is
        within 5% of the mean."""
        if not metrics:
            raise ExperimentError("0 samples collected")
        n = len(metrics)
        mean, std = statistics.fmean(metrics), statistics.pstdev(metrics)
        ci95 = 2 * std / math.sqrt(n)
        ec.logger.info("RUN %d - SAMPLES %d MEAN %.2f STD %.2f CI (95%%) %.2f", run, n, mean, std, ci95)
        return mean * 0.05 >= ci95
