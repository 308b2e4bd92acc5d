"""The fault-injection suite (issue 11): real processes, real faults, clean ends.

Every scenario runs real applications on a real loopback sshd (processes named
``<marker>-...``), and records into a real ``prefect server`` where it says so,
then injects one fault:

=========================  ===============================================
module                     fault
=========================  ===============================================
test_node_lost             sshd killed for good mid-run (and back later)
test_silent_host           a host that accepts TCP and never speaks
test_controller_signals    the controller SIGINTed; SIGKILLed then the
                           next run on the host (``cleanProcesses``)
test_cleanup               the controller SIGKILLed, then ``cleanup RUN``
test_attach                the controller SIGKILLed, then ``attach RUN``
test_prefect_killed        the Prefect server killed mid-run (the engine-only
                           side: ``tests/test_prefect_resilience.py``)
test_results_full          a results directory on a full tmpfs
test_large_stdout          an app printing tens of MiB (memory: test_trace_memory)
=========================  ===============================================

and asserts what :mod:`tests.faults.common` checks: every wait returned within
its bound, no process with the marker left on the host, no trace lost (or the
loss named in the summary), and the final state in ``summary.json`` and in
Prefect (read back through Prefect's client). Run it with
``pytest tests/faults`` (root: the tmpfs mount).
"""
