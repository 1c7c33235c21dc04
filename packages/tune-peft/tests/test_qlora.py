"""LoRA over a frozen torchao NF4 base: trains, keeps no dense weight alive, refuses in-place merge."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn
from torchao.quantization import NF4Tensor, to_nf4

from tune.peft import (
    LoraConfig,
    LoRALinear,
    apply_lora,
    merge_adapters,
    merge_and_unload,
    trainable_parameters,
)

DIM = 128  # 128 x 128 = 16,384 elements: NF4's minimum block multiple


def _nf4_net(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Linear(DIM, DIM), nn.ReLU(), nn.Linear(DIM, DIM), nn.ReLU(), nn.Linear(DIM, 8)
    )
    for layer in (net[0], net[2]):
        layer.weight = nn.Parameter(to_nf4(layer.weight.detach()), requires_grad=False)
    return net


def _nf4_inner(weight: NF4Tensor) -> list[torch.Tensor]:
    names, _ = weight.__tensor_flatten__()
    return [getattr(weight, n).clone() for n in names]


@pytest.mark.parametrize("use_dora", [False, True])
def test_lora_over_nf4_trains_and_leaves_the_base_untouched(use_dora: bool) -> None:
    net = _nf4_net()
    teacher = nn.Sequential(nn.Linear(DIM, 32), nn.Tanh(), nn.Linear(32, 8))
    x = torch.randn(256, DIM)
    with torch.no_grad():
        y = teacher(x) * 3
    before = [_nf4_inner(net[i].weight) for i in (0, 2)]
    apply_lora(net, LoraConfig(r=8, alpha=16.0, targets=["0", "2"], use_dora=use_dora))
    assert isinstance(net[0], LoRALinear)
    assert isinstance(net[0].weight, NF4Tensor)
    assert net[0].lora_A.weight.dtype == torch.float32
    optimizer = torch.optim.AdamW(trainable_parameters(net).values(), lr=3e-3)
    losses = []
    for _ in range(20):
        loss = nn.functional.mse_loss(net(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    print(f"dora={use_dora}: NF4 + LoRA loss {losses[0]:.4f} -> {losses[-1]:.4f}")
    assert losses[-1] < 0.7 * losses[0]
    assert all(b < a * 1.05 for a, b in itertools.pairwise(losses))  # no blow-ups
    assert net[0].weight.grad is None
    assert net[4].weight.grad is None
    for i, inner in zip((0, 2), before, strict=True):
        assert isinstance(net[i].weight, NF4Tensor)
        assert all(torch.equal(a, b) for a, b in zip(_nf4_inner(net[i].weight), inner, strict=True))


@pytest.mark.parametrize("use_dora", [False, True])
def test_forward_matches_dequantized_math_and_saves_no_dense_weight(use_dora: bool) -> None:
    net = _nf4_net()
    apply_lora(net, LoraConfig(r=4, targets=["0"], use_dora=use_dora))
    layer = net[0]
    with torch.no_grad():
        layer.lora_B.weight.normal_(0, 0.1)
    x = torch.randn(6, DIM, requires_grad=True)  # like hidden states inside a model
    dense = layer.weight.get_original_weight()
    v = dense + layer.active_config.scaling * layer.lora_B.weight @ layer.lora_A.weight
    w_eff = (
        (layer.lora_magnitude_vector / torch.linalg.norm(v, dim=1)).view(-1, 1) * v
        if use_dora
        else v
    )
    expected = x @ w_eff.T + layer.bias
    # Record what autograd keeps for backward: no [out, in] dense copy of the base may be among it.
    saved: list[torch.Tensor] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = layer(x)
    torch.testing.assert_close(out, expected.detach(), atol=1e-5, rtol=1e-5)
    dense_saved = [t for t in saved if type(t) is torch.Tensor and t.shape == (DIM, DIM)]
    assert dense_saved == []
    assert any(isinstance(t, NF4Tensor) for t in saved)  # the quantized weight itself is kept
    out.sum().backward()
    assert layer.lora_A.weight.grad is not None


def test_merging_over_nf4_is_refused_or_explicitly_dequantized() -> None:
    net = _nf4_net()
    apply_lora(net, LoraConfig(r=4, targets=["0", "2"], use_dora=True))
    with torch.no_grad():
        for i in (0, 2):
            net[i].lora_B.weight.normal_(0, 0.1)
    x = torch.randn(4, DIM)
    adapted = net(x).detach()
    with pytest.raises(TypeError, match=r"NF4Tensor.*merge_and_unload\(model, dequantize=True\)"):
        merge_adapters(net)
    with pytest.raises(TypeError, match="dequantize=True"):
        merge_and_unload(net)
    merge_and_unload(net, dequantize=True)
    assert type(net[0]) is nn.Linear
    assert type(net[0].weight) is nn.Parameter
    assert (net(x) - adapted).abs().max() < 1e-5


def test_pissa_over_nf4_is_refused() -> None:
    with pytest.raises(TypeError, match="PiSSA init of '0' needs a plain floating-point weight"):
        apply_lora(_nf4_net(), LoraConfig(r=4, targets=["0"], init="pissa"))
