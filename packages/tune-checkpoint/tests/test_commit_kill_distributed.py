"""2 gloo ranks: rank 0 is killed between the two renames of a re-save; the step survives."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from tune.checkpoint import CheckpointManager

pytest.importorskip("numpy")

WORKER = textwrap.dedent(
    """
    import os, signal, sys
    from datetime import timedelta
    import torch
    import torch.distributed as dist
    import tune.checkpoint.training_state as ts

    root = sys.argv[1]
    dist.init_process_group("gloo", timeout=timedelta(seconds=60))
    rank = dist.get_rank()
    manager = ts.CheckpointManager(root, fsync=False)
    manager.save(1, model_state={"w": torch.ones(4)}, data_state={"rank": rank, "v": 1})
    if rank == 0:
        def killed_between_renames(tmp, final, fsync):
            os.rename(final, final.with_name(f".{final.name}.old"))
            os.kill(os.getpid(), signal.SIGKILL)
        ts.commit_step = killed_between_renames
    manager.save(1, model_state={"w": torch.zeros(4)}, data_state={"rank": rank, "v": 2})
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.distributed
def test_rank0_killed_between_commit_renames_keeps_the_step(tmp_path: Path) -> None:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    root = tmp_path / "ckpt"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
        "--rdzv-backend=c10d", f"--rdzv-endpoint=localhost:{_free_port()}",
        str(script), str(root),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode != 0
    assert not (root / "step_1").exists()  # only the scratch copies are left
    manager = CheckpointManager(root, fsync=False)
    found = manager.latest(checksums=True)
    assert found is not None
    state = manager.load(found, restore_rng=False)
    # the new copy (complete, all ranks' files) is preferred over the old one
    assert found.name == ".step_1.tmp"
    assert torch.equal(state.model_state["w"], torch.zeros(4))  # type: ignore[index]
    assert {p.name for p in found.glob("data_rank*.pt")} == {"data_rank0.pt", "data_rank1.pt"}
    manager.recover()
    assert sorted(p.name for p in root.iterdir()) == ["step_1"]
    assert manager.load(restore_rng=False).data_state == {"rank": 0, "v": 2}


EVERY_POINT_WORKER = textwrap.dedent(
    """
    import os, shutil, signal, sys
    from datetime import timedelta
    import torch
    import torch.distributed as dist
    import tune.checkpoint.training_state as ts

    root, victim, kill_at = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    dist.init_process_group("gloo", timeout=timedelta(seconds=30))
    rank = dist.get_rank()
    manager = ts.CheckpointManager(root, fsync=False)

    def state(v):
        return {"model": {"w": torch.full((4,), float(v))}}

    manager.save(1, sharded_state=state(1), data_state={"rank": rank, "v": 1})
    dist.barrier()
    if rank == victim:
        calls = [0]
        for module, name in ((os, "rename"), (os, "replace"), (os, "mkdir"), (shutil, "rmtree")):
            def counted(*args, _original=getattr(module, name), **kwargs):
                calls[0] += 1
                if calls[0] == kill_at:
                    os.kill(os.getpid(), signal.SIGKILL)
                return _original(*args, **kwargs)
            setattr(module, name, counted)
    manager.save(1, sharded_state=state(2), data_state={"rank": rank, "v": 2})
    """
)


@pytest.mark.distributed
# Rank 0 makes 7 mkdir/rename/replace/rmtree calls in a sharded re-save, rank 1 one (measured).
@pytest.mark.parametrize(("victim", "kill_at"), [*((0, k) for k in range(1, 8)), (1, 1)])
def test_a_rank_killed_at_each_point_of_a_sharded_re_save_keeps_the_step(
    tmp_path: Path, victim: int, kill_at: int
) -> None:
    """Either copy may survive, but always whole: both ranks' files of one version."""
    script = tmp_path / "worker.py"
    script.write_text(EVERY_POINT_WORKER)
    root = tmp_path / "ckpt"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
        "--rdzv-backend=c10d", f"--rdzv-endpoint=localhost:{_free_port()}",
        str(script), str(root), str(victim), str(kill_at),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    killed = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert killed.returncode != 0, "the save finished before the kill point"
    manager = CheckpointManager(root, fsync=False)
    found = manager.latest(checksums=True)
    assert found is not None, sorted(p.name for p in root.iterdir())
    versions = {torch.load(p, weights_only=True)["v"] for p in found.glob("data_rank*.pt")}
    assert len(list(found.glob("data_rank*.pt"))) == 2
    assert len(versions) == 1, versions
    manager.recover()
    assert [p.name for p in root.iterdir() if p.name.startswith(".")] == []
    assert (root / "step_1" / "data_rank0.pt").is_file()
