"""Deployable flow: run one experiment (entrypoint ``flows/experiment.py:experiment``)."""

from nepi_prefect.flows.experiment import experiment_flow as experiment

if __name__ == "__main__":
    import sys
    experiment(description_file=sys.argv[1])
