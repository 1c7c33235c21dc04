"""NF4 base weights for QLoRA: memory measured on storage, accuracy, frozen base, gradients to adapters."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchao.quantization import NF4Tensor

from tune.quant import nf4_shardable, nf4_storage_bytes, to_nf4_linear_weights

# NF4 needs element counts that are multiples of 64 * 256 = 16384: widths 128 / 256 here.
IN, OUT = 256, 128


class _QLoRALayer(nn.Linear):
    def __init__(self) -> None:
        super().__init__(IN, OUT, bias=False)
        self.lora_A = nn.Linear(IN, 8, bias=False)
        self.lora_B = nn.Linear(8, OUT, bias=False)
        nn.init.normal_(self.lora_B.weight, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight) + self.lora_B(self.lora_A(x))


def _frozen_model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(
        _QLoRALayer(), nn.GELU(), nn.Linear(OUT, IN, bias=False), nn.Linear(IN, 32)
    )
    for name, p in model.named_parameters():
        p.requires_grad_("lora_" in name)
    return model


def test_memory_at_most_0_6_bytes_per_param_including_scales() -> None:
    model = _frozen_model()
    stats = to_nf4_linear_weights(model, exclude=["3"])
    assert stats.modules == ("0", "2")
    assert stats.num_params == 2 * IN * OUT
    assert stats.float_bytes == 4 * stats.num_params
    # 4-bit codes (0.5 B) + one int8 scale per 64 (1/64 B) + one fp32 per 64*256 + lookup table.
    assert stats.bytes_per_param <= 0.6, stats.bytes_per_param
    assert stats.bytes_per_param > 0.5  # the scales are counted
    measured = sum(nf4_storage_bytes(model[i].weight) for i in (0, 2))
    assert measured == stats.nf4_bytes
    expected = 2 * (IN * OUT // 2 + IN * OUT // 64 + 4 * IN * OUT // (64 * 256) + 4 + 16 * 4)
    assert abs(measured - expected) <= 64, (measured, expected)


def test_weights_stay_nf4_and_match_dequantized_reference() -> None:
    model = _frozen_model()
    dense = model[2].weight.detach().clone()
    to_nf4_linear_weights(model, exclude=["3"])
    weight = model[2].weight
    assert isinstance(weight, NF4Tensor)
    assert not weight.requires_grad
    x = torch.randn(5, OUT)
    dequantized = weight.get_original_weight()
    assert torch.allclose(model[2](x), x @ dequantized.T, atol=1e-5)
    # NF4 rounding of Kaiming-uniform weights: measured ~9 % relative weight error.
    rel = ((dequantized - dense).norm() / dense.norm()).item()
    assert 0.02 < rel < 0.15, rel


def test_adapters_train_while_nf4_base_stays_frozen() -> None:
    model = _frozen_model()
    to_nf4_linear_weights(model, exclude=["3"])
    assert isinstance(model[0].weight, NF4Tensor)
    assert type(model[0].lora_A.weight.data) is torch.Tensor  # adapters excluded by default
    codes_before = model[0].weight.quantized_data.clone()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    x, y = torch.randn(64, IN), torch.randn(64, 32)
    losses = []
    for _ in range(20):
        loss = F.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert model[0].lora_A.weight.grad is not None
    assert torch.equal(model[0].weight.quantized_data, codes_before)


def test_errors_name_the_module() -> None:
    model = _frozen_model()
    model[2].weight.requires_grad_(True)
    with pytest.raises(ValueError, match="module '2': weight requires grad"):
        to_nf4_linear_weights(model, exclude=["3"])
    model = _frozen_model()
    with pytest.raises(
        ValueError, match=r"module '3' has weight of shape \(32, 256\) \(8192 elements\).*16384"
    ):
        to_nf4_linear_weights(model)
    to_nf4_linear_weights(model, include=["0"])
    with pytest.raises(ValueError, match="module '0' already holds an NF4 weight"):
        to_nf4_linear_weights(model, include=["0"])


@pytest.mark.parametrize(
    ("rows", "shards", "expected"),
    [(128, 1, True), (128, 2, False), (256, 2, True), (256, 4, False), (1024, 8, True)],
)
def test_nf4_shardable_follows_the_second_level_scale_count(
    rows: int, shards: int, expected: bool
) -> None:
    # [rows, 128] holds rows * 128 / 16384 second-level scales: FSDP2 splits each inner tensor
    weight = to_nf4_weight(torch.randn(rows, 128))
    assert weight.quantization_factor.numel() == rows * 128 // (64 * 256)
    assert nf4_shardable(weight, shards) is expected
    if expected:  # what FSDP2 does with a shardable one: equal chunks along dim 0
        chunks = torch.chunk(weight, shards) if shards > 1 else [weight]
        assert [tuple(c.shape) for c in chunks] == [(rows // shards, 128)] * shards
    assert nf4_shardable(torch.randn(3, 5), 2)  # a plain tensor: FSDP2 pads it itself


def to_nf4_weight(weight: torch.Tensor) -> NF4Tensor:
    from torchao.quantization import to_nf4

    return to_nf4(weight, 64, 256)


def test_unshardable_nf4_params_names_only_small_frozen_nf4_weights() -> None:
    from tune.quant import unshardable_nf4_params

    model = nn.Sequential(nn.Linear(128, 128, bias=False), nn.Linear(128, 256, bias=False))
    model.requires_grad_(False)
    for layer in model:
        layer.weight = nn.Parameter(to_nf4_weight(layer.weight.detach()), requires_grad=False)
    bias = nn.Linear(4, 4)  # trainable and plain: never returned
    model.append(bias)
    kept = unshardable_nf4_params(model, 2)
    assert [p is model[0].weight for p in kept] == [True]  # [128, 128]: 1 second-level scale
    assert unshardable_nf4_params(model, 1) == []
