"""A node's HostBatcher knows which groups of steps are under way, and says when one
drains (the node's monitor holds its polls while launches are on the wire)."""

from __future__ import annotations

import os
import threading
import time

from nepi_prefect.resources.linux import hostops
from nepi_prefect.resources.linux.hostops import HostBatcher, Step, StepGroup
from nepi_prefect.transport.local import LocalTransport

PLAIN = StepGroup(lambda script, tag: script)


def test_a_group_is_pending_while_its_batch_runs_and_drained_once_back(tmp_path):
    gate = tmp_path / "gate"
    os.mkfifo(gate)
    drained, done = [], threading.Event()
    batcher = HostBatcher(LocalTransport(), "t", on_drained=lambda g: (drained.append(g),
                                                                       done.set()))
    try:
        outs = []
        # the step blocks on the fifo until the test opens it: the batch is on the wire
        batcher.submit(Step(f"read -r x < {gate}; echo got-$x",
                            lambda rc, out: outs.append((rc, out.strip())), 30, PLAIN))
        assert batcher.pending(PLAIN)
        assert not batcher.pending(None)  # another group is not held by this one
        with open(gate, "w") as f:
            f.write("go\n")
        assert done.wait(30), "on_drained was never called"
        assert drained == [PLAIN] and outs == [(0, "got-go")]
        assert not batcher.pending(PLAIN)
    finally:
        batcher.close()


class _Counting(LocalTransport):
    """A local transport that counts the scripts it ran (one per batch)."""

    def __init__(self) -> None:
        super().__init__()
        self.runs = 0

    def run(self, command, timeout=None):
        self.runs += 1
        return super().run(command, timeout)


def test_a_burst_that_trickles_in_goes_out_in_few_batches(tmp_path, monkeypatch):
    """Apps start a fraction of a ms apart (the dispatcher starts one at a time): the
    batch waits while steps keep coming, and one worker gathers at a time, so a
    trickle of 20 steps does not become a batch (a watcher on the host) per 3 ms.
    The gather window is widened here (3 ms to 0.5 s) so that one thread switch on a
    loaded machine does not close it: the rule is tested, not the machine's pace."""
    monkeypatch.setattr(hostops, "GATHER", 0.5)
    monkeypatch.setattr(hostops, "GATHER_MAX", 10.0)
    transport = _Counting()
    batcher = HostBatcher(transport, "t", window=64, workers=3)
    outs, done = [], threading.Event()

    def got(rc, out):
        outs.append(rc)
        if len(outs) == 20:
            done.set()

    try:
        for _ in range(20):
            batcher.submit(Step("true", got, 5, PLAIN))
            time.sleep(0.001)  # the pace of a burst of starts (not a synchronisation)
        assert done.wait(30)
        assert outs == [0] * 20
        assert transport.runs <= 3, f"{transport.runs} batches for one trickling burst"
    finally:
        batcher.close()
