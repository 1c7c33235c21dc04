"""A save that fails on one rank (2 gloo ranks under torchrun) fails on every rank at once.

Rank 0 writes the rank-0 files; when that raises (here a full disk), rank 1 must not wait at the
commit until the process group's timeout: it raises a CheckpointError naming rank 0 and its error,
and the last committed step is left as it was.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("numpy")  # DCP on CPU needs numpy

WORKER = textwrap.dedent(
    """
    import errno, json, os, sys
    from datetime import timedelta
    import torch
    import torch.distributed as dist
    from tune.checkpoint import CheckpointManager

    root, failing_phase = sys.argv[1], sys.argv[2]
    # A short timeout turns a hang into a failure within the test's time.
    dist.init_process_group("gloo", timeout=timedelta(seconds=60))
    rank = dist.get_rank()
    manager = CheckpointManager(root, fsync=False)
    manager.save(1, model_state={"w": torch.ones(4)}, data_state={"rank": rank})

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    if rank == 0:
        if failing_phase == "write":
            manager._write_rank0_files = disk_full
        else:
            manager._commit = disk_full
    try:
        manager.save(2, model_state={"w": torch.zeros(4)}, data_state={"rank": rank})
        outcome = {"raised": None}
    except Exception as err:
        outcome = {"raised": type(err).__name__, "message": str(err)}
    with open(os.path.join(root, f"outcome_{rank}.json"), "w") as f:
        json.dump(outcome, f)
    dist.destroy_process_group()
    # Leave without interpreter teardown: gloo's threads sometimes abort it ("terminate called
    # without an active exception") after the work is done.
    sys.stdout.flush(); sys.stderr.flush(); os._exit(0)
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.distributed
@pytest.mark.parametrize("failing_phase", ["write", "commit"])
def test_rank0_failure_inside_a_save_fails_every_rank(failing_phase: str, tmp_path: Path) -> None:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    root = tmp_path / "ckpt"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
        "--rdzv-backend=c10d", f"--rdzv-endpoint=localhost:{_free_port()}",
        str(script), str(root), failing_phase,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    rank0 = json.loads((root / "outcome_0.json").read_text())
    rank1 = json.loads((root / "outcome_1.json").read_text())
    assert rank0["raised"] == "OSError"
    assert "checkpoint step_2" in rank0["message"]
    assert "No space left on device" in rank0["message"]
    assert rank1["raised"] == "CheckpointError"
    assert rank1["message"].startswith(
        "checkpoint step_2 was not committed: rank 0 failed: OSError"
    )
    assert "No space left on device" in rank1["message"]
    # The last good step is untouched and still the one a resume finds.
    from tune.checkpoint import CheckpointManager

    assert not (root / "step_2").exists()
    state = CheckpointManager(root).load()
    assert state.step == 1
    assert state.model_state["w"].tolist() == [1.0, 1.0, 1.0, 1.0]
