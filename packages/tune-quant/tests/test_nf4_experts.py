"""NF4 stacked expert weights [E, out, in]: torchao's numbers, state dicts, QLoRA-style training."""

from __future__ import annotations

import copy
import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchao.quantization import to_nf4

from tune.quant import (
    NF4_EXPERT_SAFE_GLOBALS,
    NF4ExpertTensor,
    tensor_storage_bytes,
    to_nf4_expert_weights,
    to_nf4_experts,
    unshardable_nf4_params,
)

E, DIM, HIDDEN, RANK = 4, 128, 32, 4  # gate_up [4, 64, 128], down [4, 128, 32]: 16,384 multiples


class _Experts(nn.Module):
    """Stacked gated experts named like tune.models' (``gate_up_proj``, ``down_proj``), each token
    sent to one expert, with an optional per-expert low-rank delta on the weights (what tune-peft's
    expert LoRA does: read the base through ``get_original_weight()``, add ``B @ A``)."""

    def __init__(self, lora: bool = False) -> None:
        super().__init__()
        self.gate_up_proj = nn.Parameter(torch.randn(E, 2 * HIDDEN, DIM) * 0.05)
        self.down_proj = nn.Parameter(torch.randn(E, DIM, HIDDEN) * 0.05)
        self.lora = nn.ParameterDict()
        if lora:
            for name, (out_f, in_f) in (
                ("gate_up_proj", (2 * HIDDEN, DIM)),
                ("down_proj", (DIM, HIDDEN)),
            ):
                self.lora[f"{name}_lora_A"] = nn.Parameter(torch.randn(E, RANK, in_f) * 0.1)
                self.lora[f"{name}_lora_B"] = nn.Parameter(torch.randn(E, out_f, RANK) * 0.1)

    def weight(self, name: str) -> torch.Tensor:
        base = self._parameters[name]
        if not self.lora:
            return base  # the model reads the (NF4) stack directly
        dense = base.get_original_weight() if isinstance(base, NF4ExpertTensor) else base
        return torch.baddbmm(dense, self.lora[f"{name}_lora_B"], self.lora[f"{name}_lora_A"])

    def forward(self, x: torch.Tensor, experts: torch.Tensor, path: str) -> torch.Tensor:
        """x: [N, dim], experts: [N] sorted expert ids; path: grouped_mm, unbind or index."""
        gate_up, down = self.weight("gate_up_proj"), self.weight("down_proj")
        if path == "grouped_mm":
            offs = torch.cumsum(torch.bincount(experts, minlength=E), 0).to(torch.int32)
            gate, up = torch._grouped_mm(x, gate_up.transpose(-2, -1), offs=offs).chunk(2, -1)
            return torch._grouped_mm(F.silu(gate) * up, down.transpose(-2, -1), offs=offs)
        rows = []
        per_expert = zip(gate_up.unbind(0), down.unbind(0), strict=True) if path == "unbind" else (
            (gate_up[e], down[e]) for e in range(E)
        )  # fmt: skip
        for e, (w1, w2) in enumerate(per_expert):
            gate, up = F.linear(x[experts == e], w1).chunk(2, -1)  # [n_e, hidden] each
            rows.append(F.linear(F.silu(gate) * up, w2))  # [n_e, dim]
        return torch.cat(rows)


def _frozen(lora: bool = False, seed: int = 0) -> _Experts:
    torch.manual_seed(seed)
    module = _Experts(lora)
    for name, p in module.named_parameters():
        p.requires_grad_(name.startswith("lora"))
    return module


def _dequantized_twin(quantized: _Experts) -> _Experts:
    """The same module with the NF4 stacks replaced by their float dequantization."""
    twin = copy.deepcopy(quantized)
    for name in ("gate_up_proj", "down_proj"):
        dense = quantized._parameters[name].get_original_weight()  # type: ignore[union-attr]
        twin._parameters[name] = nn.Parameter(dense, requires_grad=False)
    return twin


def test_dequantize_is_torchao_nf4_of_the_flat_view_and_memory_is_measured() -> None:
    torch.manual_seed(0)
    w = torch.randn(E, 2 * HIDDEN, DIM)
    stack = to_nf4_experts(w)
    flat = to_nf4(w.view(E * 2 * HIDDEN, DIM))
    assert isinstance(stack, NF4ExpertTensor)
    assert stack.shape == w.shape
    assert not stack.requires_grad
    assert torch.equal(stack.get_original_weight(), flat.get_original_weight().view(w.shape))
    assert torch.equal(stack.dequantize(), stack.get_original_weight())
    # Blocks of 64 never straddle experts: each expert's codes are torchao's for that expert alone
    # (an expert of 8,192 elements needs smaller second-level groups, which codes do not depend on).
    codes = stack.quantized_data.view(E, -1)
    for e in range(E):
        assert torch.equal(codes[e], to_nf4(w[e], 64, 128).quantized_data)
    # NF4 rounding error of Gaussian weights, relative: measured ~0.09
    rel = ((stack.get_original_weight() - w).norm() / w.norm()).item()
    assert 0.05 < rel < 0.15, rel
    # Storage: codes (n/2) + int8 block scales (n/64) + fp32 factors (4n/16384) + mean + table.
    n = w.numel()
    assert tensor_storage_bytes(stack) == n // 2 + n // 64 + 4 * n // 16384 + 4 + 16 * 4
    print(
        f"NF4 stack {tuple(w.shape)}: {tensor_storage_bytes(stack)} B vs fp32 {4 * n}, bf16 {2 * n}"
    )
    assert tensor_storage_bytes(stack) / n < 0.52  # vs 4 (fp32) and 2 (bf16) bytes per param


@pytest.mark.parametrize("path", ["grouped_mm", "unbind", "index"])
def test_stack_read_directly_equals_dequantized_weights(path: str) -> None:
    quantized = _frozen()
    to_nf4_expert_weights(quantized)
    reference = _dequantized_twin(quantized)
    x = torch.randn(24, DIM, requires_grad=True)
    experts = torch.sort(torch.randint(0, E, (24,))).values
    out = quantized(x, experts, path)
    assert torch.equal(out, reference(x, experts, path))
    grad = torch.randn_like(out)
    (x_grad,) = torch.autograd.grad(out, x, grad)
    (x_grad_ref,) = torch.autograd.grad(reference(x, experts, path), x, grad)
    assert torch.equal(x_grad, x_grad_ref)


@pytest.mark.parametrize("path", ["grouped_mm", "unbind"])
def test_low_rank_delta_over_nf4_trains_only_the_factors(path: str) -> None:
    quantized = _frozen(lora=True)
    stats = to_nf4_expert_weights(quantized)
    assert stats.modules == ("gate_up_proj", "down_proj")  # the factors are never quantized
    assert stats.float_bytes == 4 * stats.num_params == 4 * 3 * E * HIDDEN * DIM
    reference = _dequantized_twin(quantized)
    x = torch.randn(32, DIM)
    experts = torch.sort(torch.randint(0, E, (32,))).values
    out = quantized(x, experts, path)
    assert torch.equal(out, reference(x, experts, path))
    target = torch.randn_like(out)
    F.mse_loss(out, target).backward()
    F.mse_loss(reference(x, experts, path), target).backward()
    ref_params = dict(reference.named_parameters())
    for name, p in quantized.named_parameters():
        if name.startswith("lora"):
            assert p.grad is not None, name
            assert p.grad.abs().sum() > 0, name
            torch.testing.assert_close(p.grad, ref_params[name].grad, rtol=0, atol=1e-7)
        else:
            assert p.grad is None, name
            assert isinstance(p, NF4ExpertTensor), name
    codes = quantized.gate_up_proj.quantized_data.clone()
    opt = torch.optim.AdamW([p for p in quantized.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(5):
        loss = F.mse_loss(quantized(x, experts, path), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses
    assert torch.equal(quantized.gate_up_proj.quantized_data, codes)  # the base stays frozen


def test_state_dict_round_trip_device_and_dtype_moves() -> None:
    quantized = _frozen()
    to_nf4_expert_weights(quantized)
    buffer = io.BytesIO()
    torch.save(quantized.state_dict(), buffer)
    buffer.seek(0)
    with torch.serialization.safe_globals(list(NF4_EXPERT_SAFE_GLOBALS)):
        state = torch.load(buffer, weights_only=True)
    other = _frozen(seed=1)  # different weights, quantized: load_state_dict copies the codes in
    to_nf4_expert_weights(other)
    other.load_state_dict(state)
    for name in ("gate_up_proj", "down_proj"):
        ours, theirs = quantized._parameters[name], other._parameters[name]
        assert isinstance(theirs, NF4ExpertTensor)
        for inner in ("quantized_data", "quantized_scalers", "quantization_factor", "scaler_mean"):
            assert torch.equal(getattr(theirs, inner), getattr(ours, inner)), (name, inner)
    floats = _frozen(seed=2)
    floats.load_state_dict(state)  # into float Parameters: the dequantized values
    assert torch.equal(floats.down_proj, quantized.down_proj.get_original_weight())
    requantized = _frozen(seed=3)
    to_nf4_expert_weights(requantized)
    requantized.load_state_dict(_frozen().state_dict())  # float into NF4: quantized like to_nf4
    assert torch.equal(requantized.down_proj.quantized_data, quantized.down_proj.quantized_data)
    quantized.to(torch.bfloat16)  # stays NF4, dequantizes to bf16 now
    assert isinstance(quantized.down_proj, NF4ExpertTensor)
    assert quantized.down_proj.get_original_weight().dtype == torch.bfloat16
    quantized.to("meta")
    assert quantized.down_proj.quantized_data.device.type == "meta"
    assert unshardable_nf4_params(other, 2) == [other.gate_up_proj, other.down_proj]


def test_errors_name_the_parameter() -> None:
    module = _frozen()
    module.down_proj.requires_grad_(True)
    with pytest.raises(ValueError, match="parameter 'down_proj' requires grad"):
        to_nf4_expert_weights(module)
    module = _frozen()
    with pytest.raises(ValueError, match=r"include patterns \['experts.up_proj'\] match no 3-D"):
        to_nf4_expert_weights(module, include=["experts.up_proj"])
    module.odd = nn.Parameter(torch.randn(3, 64, 64), requires_grad=False)
    with pytest.raises(ValueError, match=r"'odd' of shape \(3, 64, 64\) \(12288 elements\).*16384"):
        to_nf4_expert_weights(module)
    stats = to_nf4_expert_weights(module, include=["*_proj"])
    assert stats.modules == ("gate_up_proj", "down_proj")
    with pytest.raises(ValueError, match="'down_proj' already holds an NF4ExpertTensor"):
        to_nf4_expert_weights(module, include=["down_proj"])
    assert to_nf4_expert_weights(nn.Linear(4, 4)).modules == ()  # nothing stacked: nothing done
