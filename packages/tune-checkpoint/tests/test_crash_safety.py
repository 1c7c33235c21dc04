"""A save killed with SIGKILL at any point leaves the previous step loadable and picked by latest()."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from tune.checkpoint import CheckpointManager

# The child commits step 1, arms one kill point, then saves step 2 and dies there.
CHILD = textwrap.dedent(
    """
    import os, shutil, signal, sys
    import torch
    import tune.checkpoint.training_state as ts
    import tune.checkpoint.safetensors_dir as sd

    root, point = sys.argv[1], sys.argv[2]
    # fsync only matters for power loss; SIGKILL keeps the page cache, so skip it for speed.
    manager = ts.CheckpointManager(root, keep_last_n=1, fsync=False)

    def state(step):
        return dict(
            model_state={f"w{i}": torch.full((128, 128), float(step)) for i in range(4)},
            optimizer_state={"state": {0: {"exp_avg": torch.full((128,), float(step))}}},
            extra={"step": step},
        )

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    manager.save(1, **state(1))
    manager.max_shard_size = 70_000  # step 2 has several weight shards

    if point == "mid_weights":  # the second shard is half written
        original = sd.write_safetensors_file
        calls = []
        def write(path, *args, **kwargs):
            calls.append(path)
            n = original(path, *args, **kwargs)
            if len(calls) == 2:
                os.truncate(path, n // 2)
                die()
            return n
        sd.write_safetensors_file = write
    elif point == "mid_optimizer":  # optimizer.pt half written
        original_save = ts.torch_save_durable
        def save(path, obj, fsync):
            if path.name == "optimizer.pt":
                path.write_bytes(b"PK\\x03\\x04 partial")
                die()
            original_save(path, obj, fsync)
        ts.torch_save_durable = save
    elif point == "mid_manifest":  # manifest half written
        def manifest(directory, *args, **kwargs):
            (directory / "manifest.json").write_text('{"format": "tune-checkpoint/1", "st')
            die()
        ts.write_manifest = manifest
    elif point == "before_rename":  # everything written, not yet renamed
        os.rename = lambda *a: die()
    elif point == "before_retention":  # committed, old step not yet removed
        ts.CheckpointManager._apply_retention = lambda self, keep: die()
    elif point == "mid_retention":  # old step renamed aside and partly deleted
        original_rmtree = shutil.rmtree
        def rmtree(path, *args, **kwargs):
            for f in sorted(os.listdir(path))[:2]:
                full = os.path.join(path, f)
                os.remove(full) if os.path.isfile(full) else original_rmtree(full)
            die()
        shutil.rmtree = rmtree
    manager.save(2, **state(2))
    sys.exit(3)  # not reached: every point kills the process
    """
)

POINTS = {
    "mid_weights": 1,
    "mid_optimizer": 1,
    "mid_manifest": 1,
    "before_rename": 1,
    "before_retention": 2,
    "mid_retention": 2,
}


@pytest.mark.parametrize("point", list(POINTS))
def test_sigkill_during_save_keeps_a_loadable_step(tmp_path: Path, point: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp_path), point],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    manager = CheckpointManager(tmp_path, keep_last_n=1, fsync=False)
    expected = POINTS[point]
    assert manager.latest(checksums=True) == tmp_path / f"step_{expected}"
    state = manager.load()
    assert state.step == expected
    assert state.extra == {"step": expected}
    for i in range(4):
        assert torch.equal(state.model_state[f"w{i}"], torch.full((128, 128), float(expected)))
    assert torch.equal(
        state.optimizer_state["state"][0]["exp_avg"], torch.full((128,), float(expected))
    )
    # The next save clears the debris and commits normally.
    manager.save(3, model_state={"w": torch.ones(2)})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_3"]
