"""Fan-out over many SSH hosts: nepi-prefect against apssh, same hosts, same commands.

Starts H namespace hosts, each with its own sshd on its own veth address
(tests/fixtures/multihost.py), and runs ``echo hello-<host>-<i>`` N times per
host: deploy until every stdout is read back and checked, then release and
shutdown. Each measurement runs in its own subprocess, so peak memory
(ru_maxrss) is its own. Modes:

* ``apssh``: apssh/asynciojobs, one SshJob per command (if apssh is installed);
* ``engine``: nepi-prefect, no record;
* ``prefect``: nepi-prefect with the Prefect record on a local ``prefect server``
  on a free port, with the settings of nepi-prefect's own local server (started
  here, under a temporary PREFECT_HOME; if it does not
  come up within the fixture's time limit, this mode is skipped and says so);
* ``cli`` / ``cli-none``: the whole command ``nepi-prefect run DESCRIPTION`` of a
  description of the same hosts and apps (every stdout collected and checked),
  timed from start to exit, with the record on (``cli``) or ``--recorder none``.

    python benchmarks/bench_many_hosts.py [--sizes 5x10 20x50] [--modes apssh engine prefect]
                                          [--repeat N] [--hosts-fs journaled|root]

``--hosts-fs`` (default journaled): where the hosts' homes are, a journaled ext4
of the lab's own (like a real host's) or this machine's root file system (here an
ext4 without a journal, where making files after many deletions costs far more,
see docs/linux.md); the first line says which one the hosts got.

With ``--repeat N`` the modes alternate N times (apssh, engine, ... again), so a
shared machine's changing load hits them alike; each run starts once the record's
server is idle (it ingests a recorded run's record for tens of seconds after it); each line shows the load
average, and the target is checked on the medians. Targets (issue 14): at
20x50, engine <= apssh's time, record <= apssh + 1 s, release+shutdown < 2 s.
"release" is ec.release() (every app killed if need be, every node cleaned and
disconnected); "release+shutdown" adds closing the record, which with Prefect
waits until the server confirms every task run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _expected(h: int, n: int) -> str:
    return f"hello-{h}-{n}\n"


def _child_apssh(hosts: list[dict], n: int) -> dict:
    import asyncio

    from apssh import SshJob, SshNode, load_private_keys
    from apssh.formatters import CaptureFormatter
    from asynciojobs import Scheduler

    keys = load_private_keys([hosts[0]["identity"]])
    scheduler = Scheduler()
    formatters = []
    start = time.perf_counter()
    for h, attrs in enumerate(hosts):
        fmt = CaptureFormatter(verbose=False)
        formatters.append(fmt)
        node = SshNode(attrs["hostname"], username=attrs["username"], keys=keys,
                       formatter=fmt)
        for i in range(n):
            scheduler.add(SshJob(node=node, command=f"echo hello-{h}-{i}"))
    ok = scheduler.run()
    elapsed = time.perf_counter() - start
    outs = [sorted(f.get_capture().splitlines(keepends=True)) for f in formatters]
    wanted = [sorted(_expected(h, i) for i in range(n)) for h in range(len(hosts))]
    assert ok and outs == wanted, "apssh: wrong output"
    start = time.perf_counter()
    asyncio.run(scheduler.co_shutdown()) if hasattr(scheduler, "co_shutdown") else None
    shut = time.perf_counter() - start
    return {"run_s": elapsed, "release_s": shut, "shutdown_s": shut}


def _child_nepi(hosts: list[dict], n: int, record: bool) -> dict:
    from nepi_prefect.execution.ec import ExperimentController
    from nepi_prefect.execution.recording import Recorder
    from nepi_prefect.execution.resource import ResourceState

    results = tempfile.mkdtemp(prefix="nepi-bench-hosts-")
    recorder = None
    if record:
        from nepi_prefect.orchestration.recorder import PrefectRecorder

        ExperimentController(exp_id="warm-up", local_dir=results,
                             recorder=PrefectRecorder()).shutdown()
        recorder = PrefectRecorder()
    ec = ExperimentController(exp_id=f"hosts-{len(hosts)}x{n}", local_dir=results,
                              recorder=recorder or Recorder())
    apps = []
    for h, attrs in enumerate(hosts):
        node = ec.register_resource("LinuxNode")
        for key, value in attrs.items():
            ec.set(node, key, value)
        ec.set(node, "cleanExperiment", True)
        for i in range(n):
            app = ec.register_resource("LinuxApplication")
            ec.set(app, "command", f"echo hello-{h}-{i}")
            ec.register_connection(app, node)
            apps.append((app, _expected(h, i)))
    start = time.perf_counter()
    ec.deploy()
    ec.wait_finished([a for a, _ in apps])
    outs = [ec.trace(a, "stdout") for a, _ in apps]
    elapsed = time.perf_counter() - start
    bad = [a for a, _ in apps if ec.state(a) != ResourceState.FINISHED]
    assert not bad, f"{len(bad)} apps did not finish: {ec.get_resource(bad[0]).failure}"
    assert outs == [want for _, want in apps], "wrong stdout"
    start = time.perf_counter()
    ec.release()
    released = time.perf_counter() - start
    ec.shutdown()  # with the record: waits until the server confirms it
    out = {"run_s": elapsed, "release_s": released, "shutdown_s": time.perf_counter() - start}
    shutil.rmtree(results, ignore_errors=True)
    return out


def _child(mode: str, hosts_file: str, n: int) -> None:
    with open(hosts_file) as f:
        hosts = json.load(f)
    if mode == "apssh":
        out = _child_apssh(hosts, n)
    else:
        out = _child_nepi(hosts, n, record=(mode == "prefect"))
    out["maxrss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(out), flush=True)


def _run(mode: str, hosts: list[dict], n: int, env: dict[str, str], tmp: str) -> dict | str:
    hosts_file = os.path.join(tmp, f"hosts-{len(hosts)}.json")
    with open(hosts_file, "w") as f:
        json.dump(hosts, f)
    proc = subprocess.run([sys.executable, __file__, "--child", mode, hosts_file, str(n)],
                          env=env, capture_output=True, text=True, timeout=1200)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    return f"failed: {(proc.stderr or proc.stdout).strip()[-800:]}"


def _description(hosts: list[dict], n: int) -> dict:
    """The experiment as a description for ``nepi-prefect run``."""
    resources, connections = [], []
    for h, attrs in enumerate(hosts):
        resources.append({"name": f"node{h}", "rtype": "LinuxNode",
                          "attributes": {**attrs, "cleanExperiment": True}})
        for i in range(n):
            resources.append({"name": f"app{h}_{i}", "rtype": "LinuxApplication",
                              "attributes": {"command": f"echo hello-{h}-{i}"},
                              "collect": ["stdout"]})
            connections.append([f"node{h}", f"app{h}_{i}"])
    apps = [r["name"] for r in resources if r["rtype"] == "LinuxApplication"]
    return {"name": f"hosts-{len(hosts)}x{n}", "resources": resources,
            "connections": connections, "wait_for": apps, "timeout": "10m"}


def _run_cli(hosts: list[dict], n: int, env: dict[str, str], tmp: str, record: bool) -> dict | str:
    """Time ``nepi-prefect run`` of the description as a whole process."""
    desc = os.path.join(tmp, f"hosts-{len(hosts)}x{n}.json")
    with open(desc, "w") as f:
        json.dump(_description(hosts, n), f)
    results = tempfile.mkdtemp(prefix="nepi-bench-cli-", dir=tmp)
    cli = os.path.join(os.path.dirname(sys.executable), "nepi-prefect")
    start = time.perf_counter()
    proc = subprocess.run([cli, "run", desc, "--recorder", "prefect" if record else "none",
                           "--results", results], env=env, capture_output=True, text=True,
                          timeout=1200)
    elapsed = time.perf_counter() - start
    # exit 3: the run succeeded and its record waits in the journal for the server
    if proc.returncode not in (0, 3):
        return f"failed ({proc.returncode}): {(proc.stderr or proc.stdout).strip()[-800:]}"
    outs = []
    for root, _dirs, files in os.walk(results):
        if "stdout" in files and "LinuxApplication" in root:
            with open(os.path.join(root, "stdout")) as f:
                outs.append(f.read())
    want = sorted(_expected(h, i) for h in range(len(hosts)) for i in range(n))
    if sorted(outs) != want:
        return f"wrong stdout: {len(outs)} collected, {len(want)} expected"
    return {"command_s": elapsed, "pending": proc.returncode == 3}


def _line(h: int, n: int, mode: str, res: dict | str) -> str:
    load = f"load {os.getloadavg()[0]:5.1f}"
    if isinstance(res, str):
        return f"  {h:3d} x {n:3d}  {mode:8s} {res}"
    if "command_s" in res:
        note = "   (exit 3: record still on its way)" if res["pending"] else ""
        return (f"  {h:3d} x {n:3d}  {mode:8s} whole command (nepi-prefect run) "
                f"{res['command_s']:6.2f} s   {load}{note}")
    return (f"  {h:3d} x {n:3d}  {mode:8s} deploy->stdout {res['run_s']:6.2f} s   "
            f"release {res['release_s']:5.2f} s   release+shutdown {res['shutdown_s']:6.2f} s   "
            f"peak RSS {res['maxrss_mb']:6.1f} MB   {load}")


def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def _server_idle(pid: int | None, cap: float = 180.0) -> None:
    """Until the record server is idle (under 5 % of a CPU for a second): it ingests a
    recorded run's record for many seconds after the run, and every run measured
    meanwhile (apssh's too) would share the machine with it."""
    deadline = time.monotonic() + cap
    while pid is not None and time.monotonic() < deadline:
        before = _cpu_ticks(pid)
        time.sleep(1.0)
        if _cpu_ticks(pid) - before < 5:
            return


def _measure(lab, modes: list[str], h: int, n: int, repeat: int, env: dict[str, str],
             tmp: str, server_pid: int | None = None) -> bool:
    """Every mode ``repeat`` times, alternating; prints each figure and, at 20x50,
    the target on the medians. True if something failed or missed its target."""
    hosts = [host.node_attrs() for host in lab.hosts[:h]]
    figures: dict[str, list[dict]] = {mode: [] for mode in modes}
    failed = False
    for _ in range(max(1, repeat)):
        for mode in modes:
            _server_idle(server_pid)
            res = (_run_cli(hosts, n, env, tmp, record=(mode == "cli")) if mode.startswith("cli")
                   else _run(mode, hosts, n, env, tmp))
            print(_line(h, n, mode, res), flush=True)
            if isinstance(res, str):
                failed = True
            else:
                figures[mode].append(res)
    if (h, n) != (20, 50) or not figures.get("apssh"):
        return failed
    med = {mode: {k: statistics.median(r[k] for r in runs) for k in runs[0]}
           for mode, runs in figures.items() if runs and "run_s" in runs[0]}
    ref = med["apssh"]["run_s"]
    for mode, slack in (("engine", 0.0), ("prefect", 1.0)):
        if mode in med:
            m = med[mode]
            ok = m["run_s"] <= ref + slack and m["shutdown_s"] < 2.0
            failed |= not ok
            print(f"  target {mode} (medians of {len(figures[mode])}): deploy->stdout "
                  f"{m['run_s']:.2f} s <= apssh {ref:.2f} s{' + 1 s' if slack else ''}, "
                  f"release+shutdown {m['shutdown_s']:.2f} s < 2 s: {'ok' if ok else 'MISSED'}")
    return failed


def _fs_of(path: str) -> str:
    """The file system of ``path`` and whether it has a journal (ext4 without one
    skips recently deleted inodes at each file it makes)."""
    src = subprocess.run(["findmnt", "-n", "-o", "SOURCE,FSTYPE", "-T", path],
                         capture_output=True, text=True).stdout.split()
    if len(src) < 2:
        return "unknown"
    dev = os.path.basename(os.path.realpath(src[0]))
    journal = any(j.startswith(dev + "-") for j in os.listdir("/proc/fs/jbd2")) \
        if os.path.isdir("/proc/fs/jbd2") else False
    return f"{src[0]} {src[1]}, {'journal' if journal else 'no journal'}"


def _apssh_installed() -> bool:
    try:
        import apssh  # noqa: F401
        return True
    except ImportError:
        return False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["5x10", "20x50"])
    parser.add_argument("--modes", nargs="+", default=["apssh", "engine", "prefect"],
                        choices=("apssh", "engine", "prefect", "cli", "cli-none"))
    parser.add_argument("--repeat", type=int, default=1,
                        help="alternate the modes this many times (medians for the target)")
    parser.add_argument("--hosts-fs", choices=("journaled", "root"), default="journaled",
                        help="the hosts' homes on a journaled ext4 of their own, or on the "
                             "root file system")
    parser.add_argument("--child", nargs=3, metavar=("MODE", "HOSTS_JSON", "N"))
    args = parser.parse_args()
    if args.child:
        _child(args.child[0], args.child[1], int(args.child[2]))
        return 0

    from tests.fixtures.multihost import start_hosts, stop_hosts

    # SIGTERM (timeout, kill) unwinds through the finally below: no host is left behind
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    modes = [m for m in args.modes if m != "apssh" or _apssh_installed()]
    if "apssh" in args.modes and "apssh" not in modes:
        print("apssh is not installed: no apssh comparison (pip install apssh)")
    sizes = [tuple(int(x) for x in s.split("x")) for s in args.sizes]
    tmp = tempfile.mkdtemp(prefix="nepi-bench-many-")
    env = dict(os.environ, PREFECT_SERVER_ANALYTICS_ENABLED="false", NEPI_PREFECT_RECORDER="none")
    server = None
    lab = start_hosts(max(h for h, _ in sizes), fs=args.hosts_fs)
    failed = False
    try:
        if "prefect" in modes or "cli" in modes:
            from nepi_prefect.orchestration.local_server import SERVER_ENV
            from tests.fixtures.prefect_api import free_port, launch_server

            home = Path(tmp) / "prefect-home"
            home.mkdir()
            port = free_port()
            try:
                # the settings nepi-prefect's own local server starts with (batched writes)
                server = launch_server(home, port, extra_env=SERVER_ENV)
                env.update(PREFECT_HOME=str(home), PREFECT_API_URL=f"http://127.0.0.1:{port}/api")
            except RuntimeError as exc:  # a loaded machine: say so, measure the rest
                # (not Prefect's ephemeral API: its server process outlives the child)
                print(f"no figures with the record: {str(exc).splitlines()[0]}")
                modes = [m for m in modes if m not in ("prefect", "cli")]
        print(f"{len(lab.hosts)} namespace hosts up ({lab.prefix}*, 10.{lab.block}.0.0/16), "
              f"their homes on the {'journaled ext4 of the lab' if lab.fs == 'journaled' else 'root file system'}"
              f" ({_fs_of(lab.workdir)})", flush=True)
        for h, n in sizes:
            failed |= _measure(lab, modes, h, n, args.repeat, env, tmp,
                               server.pid if server is not None else None)
    finally:
        if server is not None:
            from tests.fixtures.prefect_api import stop_server

            stop_server(server)
        stop_hosts(lab)
        left = lab.leftovers()
        if left:
            print(f"LEFT OVER: {left}")
        shutil.rmtree(tmp, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
