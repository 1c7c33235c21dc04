"""Asynchronous saves write the same files as synchronous ones, hold the values at the call even
when training changes tensors afterwards, and re-raise background errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from tune.checkpoint import AsyncCheckpointSaver, CheckpointManager


def _state():
    torch.manual_seed(0)
    model = nn.Linear(64, 64)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 64)).sum().backward()
    optimizer.step()
    return model, optimizer


def test_async_save_equals_sync_save(tmp_path: Path) -> None:
    model, optimizer = _state()
    parts = dict(
        model_state=model.state_dict(),
        optimizer_state=optimizer.state_dict(),
        data_state={"position": 128},
        extra={"epoch": 1},
        config={"lr": 0.1},
    )
    sync_dir = CheckpointManager(tmp_path / "sync", fsync=False).save(4, **parts)
    saved_weight = model.weight.detach().clone()
    saver = AsyncCheckpointSaver(CheckpointManager(tmp_path / "async", fsync=False))
    saver.save(4, **parts)
    with torch.no_grad():  # training goes on and updates the tensors in place
        model.weight.add_(1.0)
        optimizer.state[model.weight]["momentum_buffer"].zero_()
    async_dir = saver.wait()
    assert async_dir == tmp_path / "async" / "step_4"
    sync_files = json.loads((sync_dir / "manifest.json").read_text())["files"]
    async_files = json.loads((async_dir / "manifest.json").read_text())["files"]
    assert sync_files == async_files  # same names, sizes and sha256: byte-identical files
    loaded = CheckpointManager(tmp_path / "async").load()
    assert torch.equal(loaded.model_state["weight"], saved_weight)


def test_background_error_is_raised_on_wait(tmp_path: Path) -> None:
    (tmp_path / "not_a_dir").write_text("")
    saver = AsyncCheckpointSaver(CheckpointManager(tmp_path / "not_a_dir" / "ckpt", fsync=False))
    saver.save(1, model_state={"w": torch.ones(2)})
    with pytest.raises(OSError):
        saver.wait()
    assert saver.wait() is None  # the error is raised once
