"""Training state: exact resume (losses equal bit for bit), retention, latest() skipping corrupt or
uncommitted steps, and a clear error instead of a silent fresh start."""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from tune.checkpoint import (
    CheckpointManager,
    CorruptCheckpointError,
    NoCheckpointFoundError,
)


def _setup(seed: int):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(8, 16), nn.Dropout(0.3), nn.GELU(), nn.Linear(16, 1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0 / (1 + s))
    return model, optimizer, scheduler


def _train_step(model, optimizer, scheduler, data_state: dict) -> float:
    # Every RNG the checkpoint restores feeds the loss: torch (data, dropout), python, numpy.
    x = torch.randn(4, 8)
    scale = random.random() + float(np.random.rand())
    loss = ((model(x) - scale) ** 2).mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    scheduler.step()
    data_state["position"] += 4
    return loss.item()


def test_resume_reproduces_the_same_losses_exactly(tmp_path: Path) -> None:
    manager = CheckpointManager(tmp_path, fsync=False)
    random.seed(0)
    np.random.seed(0)
    model, optimizer, scheduler = _setup(0)
    data = {"position": 0}
    reference = []
    for step in range(1, 7):
        reference.append(_train_step(model, optimizer, scheduler, data))
        if step == 3:
            manager.save(
                step,
                model_state=model.state_dict(),
                optimizer_state=optimizer.state_dict(),
                scheduler_state=scheduler.state_dict(),
                data_state=dict(data),
                extra={"epoch": 0},
                config={"lr": 1e-2, "model": {"hidden": 16}},
            )

    random.seed(123)
    np.random.seed(123)
    model, optimizer, scheduler = _setup(99)  # a different init and RNG: the state must overwrite
    state = manager.load()
    assert state.step == 3
    assert state.rng_restored
    assert state.extra == {"epoch": 0}
    assert state.config == {"lr": 1e-2, "model": {"hidden": 16}}
    model.load_state_dict(state.model_state)
    optimizer.load_state_dict(state.optimizer_state)
    scheduler.load_state_dict(state.scheduler_state)
    data = state.data_state
    assert data == {"position": 12}
    resumed = [_train_step(model, optimizer, scheduler, data) for _ in range(3)]
    assert resumed == reference[3:]


def test_retention_keeps_the_newest_and_leaves_no_scratch(tmp_path: Path) -> None:
    manager = CheckpointManager(tmp_path, keep_last_n=2, fsync=False)
    for step in (10, 20, 30, 40):
        path = manager.save(step, model_state={"w": torch.full((3,), float(step))})
        assert path == tmp_path / f"step_{step}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_30", "step_40"]
    assert manager.latest() == tmp_path / "step_40"
    assert torch.equal(manager.load().model_state["w"], torch.full((3,), 40.0))


def test_saving_a_step_again_replaces_it(tmp_path: Path) -> None:
    manager = CheckpointManager(tmp_path, fsync=False)
    manager.save(5, model_state={"w": torch.zeros(2)}, config="lr: 0.1\n")
    manager.save(5, model_state={"w": torch.ones(2)}, config="lr: 0.2\n")
    state = manager.load(tmp_path / "step_5")
    assert torch.equal(state.model_state["w"], torch.ones(2))
    assert state.config == "lr: 0.2\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_5"]


def test_latest_skips_corrupt_and_uncommitted_steps(tmp_path: Path, caplog) -> None:
    manager = CheckpointManager(tmp_path, fsync=False)
    for step in (1, 2, 3, 4):
        manager.save(
            step, model_state={"w": torch.full((64,), float(step))}, optimizer_state={"s": step}
        )
    # step_4: a truncated file; step_3: no manifest; a stray temp dir of step 5.
    opt = tmp_path / "step_4" / "optimizer.pt"
    opt.write_bytes(opt.read_bytes()[:-10])
    (tmp_path / "step_3" / "manifest.json").unlink()
    (tmp_path / ".step_5.tmp").mkdir()
    with caplog.at_level(logging.WARNING):
        assert manager.latest() == tmp_path / "step_2"
    assert "step_4" in caplog.text
    assert "truncated" in caplog.text
    assert "step_3" in caplog.text
    assert "manifest" in caplog.text
    assert manager.load().step == 2
    with pytest.raises(CorruptCheckpointError, match=r"optimizer\.pt"):
        manager.load(tmp_path / "step_4")

    # Same size, different bytes: only the checksum check sees it.
    weights = tmp_path / "step_2" / "model" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    assert manager.latest() == tmp_path / "step_2"
    assert manager.latest(checksums=True) == tmp_path / "step_1"
    manifest = json.loads((tmp_path / "step_1" / "manifest.json").read_text())
    assert manifest["step"] == 1
    assert "model/model.safetensors" in manifest["files"]


def test_resume_without_a_checkpoint_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(NoCheckpointFoundError, match="refusing to start from scratch"):
        CheckpointManager(tmp_path / "never_written").load()
    (tmp_path / "empty").mkdir()
    with pytest.raises(NoCheckpointFoundError, match="empty"):
        CheckpointManager(tmp_path / "empty").load()
    (tmp_path / "half" / "step_7").mkdir(parents=True)
    with pytest.raises(NoCheckpointFoundError):
        CheckpointManager(tmp_path / "half").load()


def test_disk_full_during_a_save_names_the_step_and_keeps_the_last_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno
    import os

    import tune.checkpoint.training_state as training_state

    manager = CheckpointManager(tmp_path, fsync=False)
    manager.save(1, model_state={"w": torch.ones(3)}, optimizer_state={"s": 1})
    original = training_state.torch_save_durable

    def full_disk(path: Path, obj, fsync: bool) -> None:
        if path.name == "optimizer.pt":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as write() reports it
        original(path, obj, fsync)

    monkeypatch.setattr(training_state, "torch_save_durable", full_disk)
    with pytest.raises(OSError) as err:
        manager.save(2, model_state={"w": torch.zeros(3)}, optimizer_state={"s": 2})
    assert err.value.errno == errno.ENOSPC
    assert f"writing checkpoint step_2 into {tmp_path / '.step_2.tmp'}" in str(err.value)
    assert "No space left on device" in str(err.value)
    assert isinstance(err.value.__cause__, OSError)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".step_2.tmp", "step_1"]
    assert manager.latest(checksums=True) == tmp_path / "step_1"
    assert torch.equal(manager.load().model_state["w"], torch.ones(3))

    monkeypatch.setattr(training_state, "torch_save_durable", original)
    manager.save(2, model_state={"w": torch.zeros(3)}, optimizer_state={"s": 2})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_1", "step_2"]  # scratch removed
