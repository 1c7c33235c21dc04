"""The RMSNorm autograd function: bit-identical forward, gradients equal to autograd's."""

from __future__ import annotations

import pytest
import torch

from tune.models.rms_norm_function import can_fuse_rms_norm, rms_norm_fp32


def _reference(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


@pytest.mark.parametrize("weight_trains", [True, False])
def test_rms_norm_function_equals_autograd(weight_trains: bool) -> None:
    g = torch.Generator().manual_seed(7)
    x = torch.randn(3, 5, 32, generator=g) * 3.0
    weight = (torch.rand(32, generator=g) + 0.5).requires_grad_(weight_trains)
    upstream = torch.randn(3, 5, 32, generator=g)
    ref_x, got_x = x.clone().requires_grad_(), x.clone().requires_grad_()
    ref = _reference(ref_x, weight, 1e-5)
    got = rms_norm_fp32(got_x, weight, 1e-5)
    assert torch.equal(got, ref)
    inputs = (ref_x, weight) if weight_trains else (ref_x,)
    ref_grads = torch.autograd.grad(ref, inputs, upstream)
    inputs = (got_x, weight) if weight_trains else (got_x,)
    got_grads = torch.autograd.grad(got, inputs, upstream)
    for a, b in zip(got_grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_fusion_only_for_plain_float32() -> None:
    x, weight = torch.randn(2, 8), torch.ones(8)
    assert can_fuse_rms_norm(x, torch.nn.Parameter(weight))
    assert not can_fuse_rms_norm(x.bfloat16(), weight)
    assert not can_fuse_rms_norm(x, weight.double())
