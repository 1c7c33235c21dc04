"""Llama 3 RoPE scaling <-> llama.cpp's `rope_freqs.weight` tensor.

llama.cpp has no metadata for the `llama3` rope type; the converter stores one divisor per rotary
frequency instead (`rope_freqs.weight`, shape `[head_dim / 2]`). With wavelength `w = 2 pi / f`,
`L` = original_max_position_embeddings, `a` = low_freq_factor, `b` = high_freq_factor:

    divisor = 1                        if w < L / b    (high frequencies: unchanged)
            = factor                   if w > L / a    (low frequencies: scaled by 1/factor)
            = 1 / ((1 - s) / factor + s),  s = (L / w - a) / (b - a)   in between

On import the parameters are solved from the divisors: `factor` is the largest, and `s` is affine in
`1 / w` (slope `L / (b - a)`, intercept `-a / (b - a)`), so two in-between frequencies give `a` and
`b` once `L` is fixed (the stored `rope.scaling.original_context_length`, else 8192, the value of
every Llama 3.x release; a different `L` with `a`, `b` scaled alike gives the same frequencies). The
result is accepted only if it reproduces every stored divisor.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

LLAMA3_DEFAULT_ORIGINAL_CONTEXT = 8192
_RTOL = 1e-5


def rotary_inv_freq(head_dim: int, theta: float) -> torch.Tensor:
    """`theta ** (-2i / head_dim)` for `i < head_dim / 2`, shape `[head_dim / 2]`, float64."""
    exponents = torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim
    return 1.0 / (theta**exponents)


def llama3_rope_divisors(head_dim: int, theta: float, params: Mapping[str, Any]) -> torch.Tensor:
    """The `rope_freqs.weight` llama.cpp uses for HF `rope_type: llama3`, shape `[head_dim / 2]`.

    Args:
        head_dim: rotary dimension of one head.
        theta: the rope base (`rope_theta`).
        params: `factor`, `low_freq_factor`, `high_freq_factor`, `original_max_position_embeddings`.
    """
    factor = float(params["factor"])
    low = float(params["low_freq_factor"])
    high = float(params["high_freq_factor"])
    context = float(params["original_max_position_embeddings"])
    wavelength = 2 * math.pi / rotary_inv_freq(head_dim, theta)
    smooth = (context / wavelength - low) / (high - low)
    between = 1.0 / ((1 - smooth) / factor + smooth)
    divisors = torch.where(wavelength < context / high, torch.ones_like(wavelength), between)
    divisors = torch.where(wavelength > context / low, torch.full_like(divisors, factor), divisors)
    return divisors.to(torch.float32)


def _round_nicely(value: float) -> float:
    """`value` rounded to 4 decimals when that is within float32 noise of it."""
    rounded = round(value, 4)
    return rounded if abs(rounded - value) <= 1e-4 * max(1.0, abs(value)) else value


def llama3_params_from_divisors(
    divisors: torch.Tensor,
    head_dim: int,
    theta: float,
    original_context: int | None = None,
) -> dict[str, Any] | None:
    """The HF `rope_parameters` (llama3) that reproduce `divisors`, or None if they cannot be solved.

    Args:
        divisors: `rope_freqs.weight`, shape `[head_dim / 2]`.
        head_dim: rotary dimension of one head.
        theta: the rope base.
        original_context: `original_max_position_embeddings` if the file states it.
    """
    if divisors.shape != (head_dim // 2,):
        return None
    values = divisors.to(torch.float64)
    factor = float(values.max())
    if factor <= 1.0 or not math.isclose(float(values[-1]), factor, rel_tol=_RTOL):
        return None
    context = float(original_context or LLAMA3_DEFAULT_ORIGINAL_CONTEXT)
    inv_wavelength = rotary_inv_freq(head_dim, theta) / (2 * math.pi)
    between = (values > 1.0 + _RTOL) & (values < factor * (1 - _RTOL))
    if int(between.sum()) < 2:
        return None
    smooth = (1.0 / values[between] - 1.0 / factor) / (1.0 - 1.0 / factor)
    x = inv_wavelength[between]
    slope, intercept = (
        torch.linalg.lstsq(torch.stack([x, torch.ones_like(x)], dim=1), smooth[:, None])
        .solution.flatten()
        .tolist()
    )
    if slope <= 0:
        return None
    span = context / slope  # b - a
    low = _round_nicely(-intercept * span)
    high = _round_nicely(low + span)
    if not 0 < low < high:
        return None
    params = {
        "rope_type": "llama3",
        "rope_theta": theta,
        "factor": _round_nicely(factor),
        "low_freq_factor": low,
        "high_freq_factor": high,
        "original_max_position_embeddings": int(context),
    }
    rebuilt = llama3_rope_divisors(head_dim, theta, params).to(torch.float64)
    if not torch.allclose(rebuilt, values, rtol=1e-4, atol=0.0):
        return None
    return params
