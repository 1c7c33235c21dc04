"""Float8 training: CUDA only (compute capability >= 8.9); a clear error elsewhere."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tune.quant import UnsupportedSchemeError, apply_float8_training, check_float8_supported


def _needs_float8_gpu() -> None:
    if not torch.cuda.is_available():
        pytest.skip("float8 training needs a CUDA GPU; this machine has none (CPU-only torch)")
    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip(
            f"float8 needs compute capability >= 8.9, found {torch.cuda.get_device_capability()}"
        )


def test_cpu_model_is_rejected_before_conversion() -> None:
    model = nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 64))
    with pytest.raises(UnsupportedSchemeError, match="float8 training needs a CUDA device"):
        apply_float8_training(model, exclude=[])
    assert all(type(m) is nn.Linear for m in model)


def test_unknown_recipe_and_cpu_device() -> None:
    with pytest.raises(UnsupportedSchemeError, match="unknown float8 recipe 'blockwise'"):
        check_float8_supported("cuda", "blockwise")
    with pytest.raises(UnsupportedSchemeError, match="got 'cpu'"):
        check_float8_supported("cpu")


@pytest.mark.gpu
def test_float8_training_matches_bf16_loss_and_trains() -> None:
    _needs_float8_gpu()
    from torchao.float8.float8_linear import Float8Linear

    torch.manual_seed(0)
    ref = nn.Sequential(
        nn.Linear(256, 512), nn.GELU(), nn.Linear(512, 256), nn.Linear(256, 10)
    ).cuda()
    model = nn.Sequential(
        nn.Linear(256, 512), nn.GELU(), nn.Linear(512, 256), nn.Linear(256, 10)
    ).cuda()
    model.load_state_dict(ref.state_dict())
    converted = apply_float8_training(model, exclude=["3"])
    assert converted == ["0", "2"]
    assert isinstance(model[0], Float8Linear)
    assert type(model[3]) is nn.Linear
    assert list(model.state_dict()) == list(ref.state_dict())
    x = torch.randn(64, 256, device="cuda")
    y = torch.randint(0, 10, (64,), device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        ref_out, out = ref(x), model(x)
    rel = ((out.float() - ref_out.float()).norm() / ref_out.float().norm()).item()
    assert rel < 0.1, rel  # e4m3 has 3 mantissa bits: a few percent error per matmul
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(30):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
