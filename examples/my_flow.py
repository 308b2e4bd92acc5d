"""Running experiments from your own Prefect flow with ``run_experiment_task``.

    python examples/my_flow.py            # from the repository root

Each experiment becomes a child flow run of ``my-ping-study`` (its RM actions
are that child's task runs); the task returns the run's summary.
"""

from prefect import flow

from nepi_prefect.flows.tasks import run_experiment_task


@flow(name="my-ping-study", log_prints=True)
def my_ping_study(description_file: str = "examples/ping.yaml",
                  intervals: tuple[float, ...] = (0.2, 0.5)) -> dict[float, float | None]:
    """Mean ping RTT for each interval.

    Args:
        description_file: the ping experiment to run.
        intervals: the ping intervals (seconds) to try, one experiment each.
    """
    rtts = {}
    for interval in intervals:
        summary = run_experiment_task(description_file, overrides={"ping.interval": interval})
        (ping,) = [r for r in summary["resources"] if r["name"] == "ping"]
        rtts[interval] = ping.get("metrics", {}).get("rtt_avg_ms")
        print(f"interval {interval}: mean RTT {rtts[interval]} ms")
    return rtts


if __name__ == "__main__":
    my_ping_study()
