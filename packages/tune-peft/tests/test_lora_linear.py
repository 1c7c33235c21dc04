"""LoRALinear numerics against hand-computed formulas: LoRA, rsLoRA, DoRA, inits, dropout."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from tune.peft import LoraConfig, LoRALinear


def _adapted(in_f: int, out_f: int, config: LoraConfig, bias: bool = True) -> LoRALinear:
    layer = LoRALinear.from_linear(nn.Linear(in_f, out_f, bias=bias))
    layer.add_adapter("default", config)
    with torch.no_grad():  # non-trivial factors
        layer.lora_A.weight.normal_(0, 0.3)
        layer.lora_B.weight.normal_(0, 0.3)
    return layer


def test_wrapper_shares_base_parameters() -> None:
    linear = nn.Linear(6, 5)
    layer = LoRALinear.from_linear(linear)
    assert layer.weight is linear.weight
    assert layer.bias is linear.bias
    layer.add_adapter("default", LoraConfig(r=2))
    names = [n for n, _ in layer.named_parameters()]
    assert names == ["weight", "bias", "lora_A.weight", "lora_B.weight"]
    assert layer.lora_A.weight.shape == (2, 6)
    assert layer.lora_B.weight.shape == (5, 2)


@pytest.mark.parametrize("use_rslora", [False, True])
def test_lora_forward_matches_formula(use_rslora: bool) -> None:
    config = LoraConfig(r=4, alpha=12.0, use_rslora=use_rslora)
    layer = _adapted(16, 8, config)
    x = torch.randn(3, 5, 16)
    scale = 12.0 / (math.sqrt(4) if use_rslora else 4)
    assert config.scaling == pytest.approx(scale)
    a, b = layer.lora_A.weight, layer.lora_B.weight
    expected = x @ layer.weight.T + layer.bias + scale * (x @ a.T @ b.T)
    torch.testing.assert_close(layer(x), expected, atol=1e-6, rtol=1e-5)


def test_default_init_is_an_exact_no_op_with_kaiming_a() -> None:
    linear = nn.Linear(64, 32)
    layer = LoRALinear.from_linear(linear)
    layer.add_adapter("default", LoraConfig(r=8))
    x = torch.randn(4, 64)
    assert torch.equal(layer(x), linear(x))
    assert torch.count_nonzero(layer.lora_B.weight) == 0
    bound = 1 / math.sqrt(64)  # kaiming_uniform(a=sqrt(5)) on fan_in 64
    assert layer.lora_A.weight.abs().max() <= bound
    assert layer.lora_A.weight.std() > bound / 3


def test_gaussian_init_std_is_one_over_r() -> None:
    layer = LoRALinear.from_linear(nn.Linear(2048, 4))
    layer.add_adapter("default", LoraConfig(r=8, init="gaussian"))
    assert torch.count_nonzero(layer.lora_B.weight) == 0
    assert layer.lora_A.weight.std().item() == pytest.approx(1 / 8, rel=0.05)


def test_pissa_init_keeps_output_and_takes_top_singular_directions() -> None:
    linear = nn.Linear(24, 16)
    w0 = linear.weight.detach().clone()
    x = torch.randn(5, 24)
    y0 = linear(x).detach()
    layer = LoRALinear.from_linear(linear)
    config = LoraConfig(r=4, alpha=8.0, init="pissa")
    layer.add_adapter("default", config)
    torch.testing.assert_close(layer(x), y0, atol=1e-5, rtol=1e-5)
    low_rank = config.scaling * layer.lora_B.weight @ layer.lora_A.weight
    u, s, vh = torch.linalg.svd(w0)
    best = u[:, :4] @ torch.diag(s[:4]) @ vh[:4]
    torch.testing.assert_close(low_rank, best, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(layer.weight + low_rank, w0, atol=1e-6, rtol=1e-5)


def _dora_reference(layer: LoRALinear, x: torch.Tensor) -> torch.Tensor:
    """DoRA by the paper: m * V x / ||V||_row + b with V = W + s B A and the norm detached."""
    s = layer.active_config.scaling
    v = layer.weight + s * layer.lora_B.weight @ layer.lora_A.weight
    norm = torch.linalg.norm(v, dim=1).detach()
    w_eff = (layer.lora_magnitude_vector / norm).view(-1, 1) * v
    return x @ w_eff.T + layer.bias


def test_dora_magnitude_starts_at_the_weight_row_norms() -> None:
    linear = nn.Linear(16, 8)
    layer = LoRALinear.from_linear(linear)
    layer.add_adapter("default", LoraConfig(r=4, use_dora=True))
    torch.testing.assert_close(
        layer.lora_magnitude_vector.detach(), torch.linalg.norm(linear.weight.detach(), dim=1)
    )
    x = torch.randn(3, 16)
    torch.testing.assert_close(layer(x), linear(x), atol=1e-6, rtol=1e-5)


def test_dora_forward_and_gradients_match_the_detached_norm_formula() -> None:
    layer = _adapted(16, 8, LoraConfig(r=4, alpha=8.0, use_dora=True))
    with torch.no_grad():
        layer.lora_magnitude_vector.mul_(1 + 0.2 * torch.randn(8))
    x = torch.randn(3, 16)
    target = torch.randn(3, 8)
    out = layer(x)
    ref = _dora_reference(layer, x)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    params = [layer.lora_A.weight, layer.lora_B.weight, layer.lora_magnitude_vector]
    grads = torch.autograd.grad(((out - target) ** 2).sum(), params)
    ref_grads = torch.autograd.grad(((ref - target) ** 2).sum(), params)
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("use_dora", [False, True])
def test_dropout_applies_in_training_only(use_dora: bool) -> None:
    layer = _adapted(32, 16, LoraConfig(r=4, dropout=0.5, use_dora=use_dora))
    plain = LoRALinear.from_linear(nn.Linear(32, 16))
    plain.weight, plain.bias = layer.weight, layer.bias
    plain.add_adapter("default", LoraConfig(r=4, dropout=0.0, use_dora=use_dora))
    with torch.no_grad():
        plain.lora_A.weight.copy_(layer.lora_A.weight)
        plain.lora_B.weight.copy_(layer.lora_B.weight)
        if use_dora:
            plain.lora_magnitude_vector.copy_(layer.lora_magnitude_vector)
    x = torch.randn(8, 32)
    layer.eval()
    assert torch.equal(layer(x), plain(x))
    layer.train()
    assert not torch.allclose(layer(x), plain(x))


def test_two_adapters_switch_by_moving_the_same_parameters() -> None:
    layer = _adapted(8, 6, LoraConfig(r=2))
    first_a = layer.lora_A.weight
    layer.add_adapter("second", LoraConfig(r=3, alpha=3.0))
    assert layer.active_adapter == "default"
    assert layer.adapter_names == ["default", "second"]
    layer.set_active_adapter("second")
    assert layer.lora_A.weight.shape == (3, 8)
    assert layer.adapter_tensors("default")["lora_A.weight"] is first_a
    assert "lora_inactive.default.lora_A.weight" in dict(layer.named_parameters())
    layer.set_active_adapter("default")
    assert layer.lora_A.weight is first_a
    with pytest.raises(KeyError, match="nope"):
        layer.set_active_adapter("nope")
    with pytest.raises(ValueError, match="already has an adapter named 'second'"):
        layer.add_adapter("second", LoraConfig(r=2))


@pytest.mark.slow
@pytest.mark.parametrize("use_dora", [False, True])
def test_forward_compiles_as_one_graph(use_dora: bool) -> None:
    layer = _adapted(32, 16, LoraConfig(r=4, dropout=0.0, use_dora=use_dora))
    compiled = torch.compile(layer, fullgraph=True)
    x = torch.randn(4, 32)
    torch.testing.assert_close(compiled(x), layer(x), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("use_dora", [False, True])
def test_float32_adapters_over_a_bf16_base(use_dora: bool) -> None:
    linear = nn.Linear(16, 8).to(torch.bfloat16)
    layer = LoRALinear.from_linear(linear)
    layer.add_adapter("default", LoraConfig(r=4, use_dora=use_dora), dtype=torch.float32)
    with torch.no_grad():
        layer.lora_B.weight.normal_(0, 0.3)
    assert layer.lora_A.weight.dtype == torch.float32
    x = torch.randn(3, 16, dtype=torch.bfloat16)
    out = layer(x)
    assert out.dtype == torch.bfloat16
    ref = _dora_reference(layer, x.float()) if use_dora else None
    if ref is None:
        w = (
            linear.weight.float()
            + layer.active_config.scaling * layer.lora_B.weight @ layer.lora_A.weight
        )
        ref = x.float() @ w.T + linear.bias.float()
    torch.testing.assert_close(out.float(), ref.detach(), atol=0.05, rtol=0.02)
    out.float().sum().backward()
    assert layer.lora_A.weight.grad.dtype == torch.float32
