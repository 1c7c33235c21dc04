"""RMSNorm over float32 as one autograd function: the same forward, a shorter backward.

Autograd through ``w * (x * rsqrt(mean(x²) + eps))`` keeps the normed [..., dim] tensor alive
until the backward and differentiates pow, mean, rsqrt and both products one by one (about ten
full-size passes). Here only ``x`` and the [..., 1] reciprocal RMS are saved, and the input
gradient is ``rstd * (gw - n * mean(gw * n))`` with ``n`` the normed input and ``gw = g * w``;
the weight gradient is computed only when the weight trains (LoRA freezes it). The forward runs
the module's ops in the module's order, so outputs are bit-identical; gradients differ by float
round-off.
"""

from __future__ import annotations

from typing import Any

import torch


def can_fuse_rms_norm(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether ``rms_norm_fp32`` applies: plain float32 tensors on one device.

    Args:
        x: [..., dim] input.
        weight: [dim] scale.
    """
    plain = type(x) is torch.Tensor and type(weight) in (torch.Tensor, torch.nn.Parameter)
    return plain and x.dtype == weight.dtype == torch.float32 and x.device == weight.device


class _RMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:  # type: ignore[override]
        rstd = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)  # (..., 1)
        ctx.save_for_backward(x, weight, rstd)
        return weight * (x * rstd)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        x, weight, rstd = ctx.saved_tensors
        normed = x * rstd  # (..., dim)
        grad_weight = None
        if ctx.needs_input_grad[1]:
            grad_weight = (grad * normed).reshape(-1, x.shape[-1]).sum(0)  # (dim,)
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_normed = grad * weight  # (..., dim)
            dot = (grad_normed * normed).mean(-1, keepdim=True)  # (..., 1)
            grad_x = torch.addcmul(grad_normed, normed, dot, value=-1.0).mul_(rstd)
        return grad_x, grad_weight, None


def rms_norm_fp32(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``weight * x * rsqrt(mean(x², -1) + eps)`` for float32 ``x`` [..., dim], ``weight`` [dim].

    Check ``can_fuse_rms_norm`` first.
    """
    return _RMSNorm.apply(x, weight, eps)
