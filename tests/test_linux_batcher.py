"""A node's HostBatcher knows which groups of steps are under way, and says when one
drains (the node's monitor holds its polls while launches are on the wire)."""

from __future__ import annotations

import os
import threading

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
