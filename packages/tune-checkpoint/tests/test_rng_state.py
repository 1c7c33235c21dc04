"""RNG states survive a torch.save(weights_only) round trip and replay the same draws."""

from __future__ import annotations

import io
import random

import numpy as np
import pytest
import torch
from torch import nn

from tune.checkpoint import capture_rng_state, restore_rng_state


def _draws() -> list[float]:
    out = [random.random(), random.gauss(0, 1), float(np.random.rand()), float(np.random.randn())]
    out += torch.rand(3).tolist()
    if torch.cuda.is_available():
        out += torch.rand(3, device="cuda").tolist()
    return out


def _through_disk(state: dict) -> dict:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def test_restored_rng_replays_the_same_draws() -> None:
    random.seed(1)
    np.random.seed(1)
    torch.manual_seed(1)
    random.gauss(0, 1)  # leaves a cached gaussian in python's state
    state = _through_disk(capture_rng_state())
    want = _draws()
    _draws()  # move every generator on
    restore_rng_state(state)
    assert _draws() == want


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_rng_and_loading_onto_cuda(tmp_path) -> None:
    from tune.checkpoint import load_hf_checkpoint, save_hf_checkpoint

    assert "cuda" in capture_rng_state()
    source = nn.Linear(8, 4)
    save_hf_checkpoint(tmp_path, source.state_dict())
    with torch.device("meta"):
        target = nn.Linear(8, 4)
    load_hf_checkpoint(target, tmp_path, device="cuda")
    assert target.weight.device.type == "cuda"
    assert torch.equal(target.weight.cpu(), source.weight.detach())
