"""deployments/prefect.yaml: a scheduled deployment run by a process worker,
against a real `prefect server start` on loopback that this test starts and stops."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.fixtures.prefect_api import free_port, launch_server, server_home, stop_server
from tests.helpers import wait_until

ROOT = Path(__file__).resolve().parent.parent
PREFECT = str(Path(sys.executable).with_name("prefect"))
POOL = "nepi-test-pool"

pytestmark = pytest.mark.prefect


@pytest.fixture
def scheduling_server():
    """A Prefect server whose scheduler wakes every second."""
    home = server_home("nepi-prefect-sched-")
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    proc = launch_server(home, port, extra_env={
        "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "1",
        "PREFECT_SERVER_SERVICES_LATE_RUNS_ENABLED": "false"})
    try:
        client_env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
        client_env.update(PREFECT_API_URL=api_url, PREFECT_HOME=str(home / "client"),
                          PREFECT_SERVER_ANALYTICS_ENABLED="false")
        yield api_url, client_env
    finally:
        stop_server(proc)


def _prefect(args: list[str], env: dict, timeout: float = 120) -> str:
    proc = subprocess.run([PREFECT, "--no-prompt", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"prefect {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def _scheduled_copy(tmp_path: Path) -> Path:
    """deployments/prefect.yaml with its scheduled deployment firing every 5 s, on a
    short local experiment and the test's pool."""
    config = yaml.safe_load((ROOT / "deployments/prefect.yaml").read_text())
    (dep,) = [d for d in config["deployments"] if d.get("schedules")]
    assert dep["schedules"][0]["cron"]  # the shipped one is a cron schedule
    desc = tmp_path / "echo.yaml"
    desc.write_text("name: scheduled-echo\nresources:\n"
                    "  - {name: node, rtype: LinuxNode, attributes: {hostname: localhost}}\n"
                    "  - {name: app, rtype: LinuxApplication, attributes: {command: echo hi}}\n"
                    "connections: [[node, app]]\n")
    dep.update(name="echo-every-5s", schedules=[{"interval": 5}],
               parameters={"description_file": str(desc), "results_dir": str(tmp_path / "results")},
               work_pool={"name": POOL})
    config["deployments"] = [dep]
    path = tmp_path / "prefect.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


async def _completed_runs(api_url: str, name: str) -> list:
    from prefect.client.orchestration import PrefectClient
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName

    async with PrefectClient(api_url) as client:
        runs = await client.read_flow_runs(deployment_filter=DeploymentFilter(
            name=DeploymentFilterName(any_=[name])))
    return [r for r in runs if r.state and r.state.is_completed()]


def test_scheduled_deployment_runs_on_a_process_worker(scheduling_server, tmp_path):
    api_url, env = scheduling_server
    _prefect(["work-pool", "create", "--type", "process", POOL], env)
    out = _prefect(["deploy", "--all", "--prefect-file", str(_scheduled_copy(tmp_path))], env)
    assert "echo-every-5s" in out
    worker = subprocess.Popen([PREFECT, "worker", "start", "--pool", POOL, "--limit", "2"],
                              env=env, cwd=tmp_path, stdout=open(tmp_path / "worker.log", "wb"),
                              stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until(lambda: asyncio.run(_completed_runs(api_url, "echo-every-5s")), timeout=120,
                   message=lambda: (tmp_path / "worker.log").read_text()[-3000:], interval=2)
        summaries = list((tmp_path / "results" / "scheduled-echo").glob("*/summary.json"))
        assert summaries  # the experiment itself ran, in the worker's flow run
    finally:
        stop_server(worker)


# --- the README's recipe, verbatim ------------------------------------------------

def _readme_recipe() -> list[str]:
    """The command lines of the README's deploy recipe (the bash block after
    `deployments/prefect.yaml`), comments stripped."""
    text = (ROOT / "README.md").read_text()
    start = text.index("`deployments/prefect.yaml`")
    block = text[text.index("```bash\n", start) + 8:]
    block = block[:block.index("```")]
    return [line.split("  #")[0].strip() for line in block.splitlines() if line.strip()]


def _processes_with(marker: str) -> list[int]:
    """Pids of the processes whose environment holds ``marker`` (this test's PREFECT_HOME)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and entry.name != str(os.getpid()):
            try:
                if marker.encode() in (entry / "environ").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


async def _run_state(api_url: str, run_id: str):
    from prefect.client.orchestration import PrefectClient

    async with PrefectClient(api_url) as client:
        run = await client.read_flow_run(run_id)
        dep = await client.read_deployment(run.deployment_id)
    return run, dep


@pytest.mark.timeout(1200)  # a server, a deploy of three flows, a worker, a run
def test_readme_recipe_deploys_and_a_process_worker_runs_the_experiment(tmp_path):
    lines = _readme_recipe()
    assert lines[0].startswith("prefect server start &")  # the server: this test's own
    assert "cd deployments && prefect deploy --all" in lines
    home = server_home("nepi-prefect-recipe-")
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    server = launch_server(home, port)
    marker = str(home / "client")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PREFECT_API", "NEPI_PREFECT_RECORDER"))}
    env.update(PREFECT_API_URL=api_url, PREFECT_HOME=marker, PREFECT_CLI_PROMPT="false",
               PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PATH=f"{Path(sys.executable).parent}:{env.get('PATH', '')}")
    log = tmp_path / "recipe.log"
    recipe = subprocess.Popen(["bash", "-e", "-c", "\n".join(lines[1:])], cwd=ROOT, env=env,
                              stdout=open(log, "wb"), stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_until(lambda: "Worker" in log.read_text() and "started" in log.read_text()
                   or recipe.poll() is not None, timeout=240, interval=1,
                   message=lambda: log.read_text()[-3000:])
        assert recipe.poll() is None, log.read_text()[-3000:]
        results = tmp_path / "results"
        out = _prefect(["deployment", "run", "nepi-experiment/ping-hourly", "-jv",
                        f'env={{"NEPI_PREFECT_RESULTS": "{results}"}}'], env)
        run_id = out.split("UUID:")[1].split()[0]

        def finished():
            run, _ = asyncio.run(_run_state(api_url, run_id))
            return run if run.state and run.state.is_final() else None

        run = wait_until(finished, timeout=240, interval=2,
                         message=lambda: log.read_text()[-3000:])
        assert run.state.is_completed(), f"{run.state}\n{log.read_text()[-3000:]}"
        _, dep = asyncio.run(_run_state(api_url, run_id))
        # the hourly run never overlaps itself: one at a time, the next one waits
        assert dep.global_concurrency_limit.limit == 1
        assert dep.concurrency_options.collision_strategy == "ENQUEUE"
        assert dep.pull_steps[0]["prefect.deployments.steps.set_working_directory"][
            "directory"] == str(ROOT)
        assert list((results / "ping").glob("*/summary.json"))  # the job variable's results dir
    finally:
        stop_server(recipe)
        stop_server(server)
    wait_until(lambda: not _processes_with(marker), timeout=30,
               message=lambda: f"left running: {_processes_with(marker)}")
