"""The fused LoRA function equals the module path (base + scaled adapter) in values and grads."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tune.peft.lora_function import can_fuse_lora, lora_linear


def _inputs(bias: bool) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(11)
    x = torch.randn(3, 7, 16, generator=g, requires_grad=True)
    weight = torch.randn(24, 16, generator=g)
    b = torch.randn(24, generator=g) if bias else None
    lora_a = torch.randn(4, 16, generator=g).requires_grad_()
    lora_b = torch.randn(24, 4, generator=g).requires_grad_()
    return x, weight, b, lora_a, lora_b


@pytest.mark.parametrize(("scaling", "bias"), [(2.0, True), (2.0, False), (1.7, True)])
def test_fused_lora_equals_the_module_formula(scaling: float, bias: bool) -> None:
    x, weight, b, lora_a, lora_b = _inputs(bias)
    assert can_fuse_lora(x, weight, b, lora_a, lora_b)
    ref = F.linear(x, weight, b) + F.linear(F.linear(x, lora_a), lora_b) * scaling
    got = lora_linear(x, weight, b, lora_a, lora_b, scaling)
    upstream = torch.randn(ref.shape, generator=torch.Generator().manual_seed(2))
    ref_grads = torch.autograd.grad(ref, (x, lora_a, lora_b), upstream)
    got_grads = torch.autograd.grad(got, (x, lora_a, lora_b), upstream)
    if scaling == 2.0:  # a power of two: scaling the factor instead of the output is exact
        assert torch.equal(got, ref)
        assert all(torch.equal(a, c) for a, c in zip(got_grads, ref_grads, strict=True))
    else:
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
        for a, c in zip(got_grads, ref_grads, strict=True):
            torch.testing.assert_close(a, c, rtol=1e-5, atol=1e-4)


def test_fused_lora_skips_the_grads_nobody_needs() -> None:
    x, weight, b, lora_a, lora_b = _inputs(True)
    x = x.detach()
    out = lora_linear(x, weight, b, lora_a, lora_b, 2.0)
    out.sum().backward()
    assert x.grad is None
    assert weight.grad is None
    assert lora_a.grad is not None
    assert lora_b.grad is not None


def test_fusion_needs_a_frozen_plain_base_of_one_dtype() -> None:
    x, weight, b, lora_a, lora_b = _inputs(True)
    assert not can_fuse_lora(x, weight.requires_grad_(), b, lora_a, lora_b)
    weight.requires_grad_(False)
    assert not can_fuse_lora(x, weight, b, lora_a.double(), lora_b)
    assert not can_fuse_lora(x, weight, b.requires_grad_(), lora_a, lora_b)
