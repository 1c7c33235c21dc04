"""Rotary position embeddings in the HF "rotate half" layout, with the scalings the families use.

The layout matches HF checkpoints (the first and second halves of each rotated head dimension form
the pairs), so q/k weights load without permutation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3", "yarn", "longrope")


@dataclass(frozen=True)
class RopeSpec:
    """How to compute rotary frequencies (the fields of HF's ``rope_parameters``).

    Args:
        rope_type: one of ``SUPPORTED_ROPE_TYPES``.
        theta: base of the geometric frequency progression.
        factor: context extension factor (linear, llama3, yarn, longrope).
        low_freq_factor: llama3 low-frequency bound.
        high_freq_factor: llama3 high-frequency bound.
        original_max_position_embeddings: pretraining context (llama3, yarn, longrope).
        beta_fast: yarn ramp bound (rotations).
        beta_slow: yarn ramp bound (rotations).
        attention_factor: scale of cos/sin (yarn, longrope); derived when None.
        mscale: yarn mscale.
        mscale_all_dim: yarn mscale_all_dim.
        truncate: yarn: round the correction range to integers.
        short_factor: longrope per-frequency factors below the original context.
        long_factor: longrope per-frequency factors beyond the original context.
    """

    rope_type: str = "default"
    theta: float = 10000.0
    factor: float | None = None
    low_freq_factor: float | None = None
    high_freq_factor: float | None = None
    original_max_position_embeddings: int | None = None
    beta_fast: float | None = None
    beta_slow: float | None = None
    attention_factor: float | None = None
    mscale: float | None = None
    mscale_all_dim: float | None = None
    truncate: bool = True
    short_factor: tuple[float, ...] | None = None
    long_factor: tuple[float, ...] | None = None


def default_inv_freq(rotary_dim: int, theta: float) -> torch.Tensor:
    """Inverse frequencies ``theta ** (-2i / rotary_dim)`` [rotary_dim // 2], float32."""
    exponents = torch.arange(0, rotary_dim, 2, dtype=torch.int64).float() / rotary_dim
    return 1.0 / (theta**exponents)


def _require(spec: RopeSpec, *names: str) -> None:
    missing = [n for n in names if getattr(spec, n) is None]
    if missing:
        raise ValueError(f"rope_type {spec.rope_type!r} needs rope_parameters fields {missing}")


def llama3_inv_freq(spec: RopeSpec, rotary_dim: int) -> torch.Tensor:
    """Llama 3.1 frequency scaling: long wavelengths divided by ``factor``, smooth in between."""
    _require(
        spec, "factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"
    )
    assert spec.factor is not None
    assert spec.low_freq_factor is not None
    assert spec.high_freq_factor is not None
    assert spec.original_max_position_embeddings is not None
    inv_freq = default_inv_freq(rotary_dim, spec.theta)
    context = spec.original_max_position_embeddings
    wavelen = 2 * math.pi / inv_freq
    low_freq_wavelen = context / spec.low_freq_factor
    high_freq_wavelen = context / spec.high_freq_factor
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / spec.factor, inv_freq)
    smooth = (context / wavelen - spec.low_freq_factor) / (
        spec.high_freq_factor - spec.low_freq_factor
    )
    smoothed = (1 - smooth) * scaled / spec.factor + smooth * scaled
    is_medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
    return torch.where(is_medium, smoothed, scaled)


def _yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def yarn_inv_freq(
    spec: RopeSpec, rotary_dim: int, max_position_embeddings: int
) -> tuple[torch.Tensor, float]:
    """YaRN: interpolate low frequencies, keep high ones, ramp in between; returns (inv_freq, scale)."""
    _require(spec, "original_max_position_embeddings")
    original = spec.original_max_position_embeddings
    assert original is not None
    factor = spec.factor if spec.factor is not None else max_position_embeddings / original
    if spec.attention_factor is not None:
        attention = spec.attention_factor
    elif spec.mscale and spec.mscale_all_dim:
        attention = _yarn_mscale(factor, spec.mscale) / _yarn_mscale(factor, spec.mscale_all_dim)
    else:
        attention = _yarn_mscale(factor)
    beta_fast = spec.beta_fast or 32.0
    beta_slow = spec.beta_slow or 1.0

    def correction_dim(rotations: float) -> float:
        return (rotary_dim * math.log(original / (rotations * 2 * math.pi))) / (
            2 * math.log(spec.theta)
        )

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if spec.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, rotary_dim - 1)
    if low == high:
        high += 0.001
    ramp = ((torch.arange(rotary_dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    extrapolation = default_inv_freq(rotary_dim, spec.theta)
    interpolation = extrapolation / factor
    keep = 1 - ramp
    return interpolation * (1 - keep) + extrapolation * keep, float(attention)


def longrope_inv_freq(
    spec: RopeSpec, rotary_dim: int, max_position_embeddings: int
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """LongRoPE (Phi-3/4): returns (short inv_freq, long inv_freq, cos/sin scale)."""
    _require(spec, "short_factor", "long_factor", "original_max_position_embeddings")
    original = spec.original_max_position_embeddings
    assert original is not None
    assert spec.short_factor is not None
    assert spec.long_factor is not None
    for name in ("short_factor", "long_factor"):
        if len(getattr(spec, name)) != rotary_dim // 2:
            raise ValueError(
                f"rope_parameters.{name} has {len(getattr(spec, name))} entries; expected "
                f"rotary_dim // 2 = {rotary_dim // 2}"
            )
    factor = spec.factor if spec.factor is not None else max_position_embeddings / original
    if spec.attention_factor is not None:
        attention = spec.attention_factor
    elif factor <= 1.0:
        attention = 1.0
    else:
        attention = math.sqrt(1 + math.log(factor) / math.log(original))
    base = default_inv_freq(rotary_dim, spec.theta)
    short = base / torch.tensor(spec.short_factor, dtype=torch.float32)
    long = base / torch.tensor(spec.long_factor, dtype=torch.float32)
    return short, long, float(attention)


class RotaryEmbedding(nn.Module):
    """Computes (cos, sin) tables [B, T, rotary_dim] for given positions.

    Args:
        spec: the frequency recipe.
        rotary_dim: number of leading head dimensions that rotate (head_dim unless partial).
        max_position_embeddings: the model's context (used by yarn/longrope defaults).
    """

    inv_freq: torch.Tensor
    long_inv_freq: torch.Tensor

    def __init__(self, spec: RopeSpec, rotary_dim: int, max_position_embeddings: int) -> None:
        super().__init__()
        if spec.rope_type not in SUPPORTED_ROPE_TYPES:
            raise ValueError(
                f"unsupported rope_type {spec.rope_type!r}; supported: {list(SUPPORTED_ROPE_TYPES)}"
            )
        if rotary_dim % 2:
            raise ValueError(f"rotary_dim must be even, got {rotary_dim}")
        self.spec = spec
        self.rotary_dim = rotary_dim
        self.max_position_embeddings = max_position_embeddings
        self.register_buffer("inv_freq", torch.empty(rotary_dim // 2), persistent=False)
        # LongRoPE switches to long factors once a sequence passes the original context.
        self.register_buffer("long_inv_freq", torch.empty(rotary_dim // 2), persistent=False)
        self.attention_scaling = 1.0
        self.reset_buffers()

    def _frequencies(self) -> tuple[torch.Tensor, torch.Tensor, float]:
        spec, dim = self.spec, self.rotary_dim
        if spec.rope_type == "default":
            inv = default_inv_freq(dim, spec.theta)
            return inv, inv, 1.0
        if spec.rope_type == "linear":
            _require(spec, "factor")
            assert spec.factor is not None
            inv = default_inv_freq(dim, spec.theta) / spec.factor
            return inv, inv, 1.0
        if spec.rope_type == "llama3":
            inv = llama3_inv_freq(spec, dim)
            return inv, inv, 1.0
        if spec.rope_type == "yarn":
            inv, scale = yarn_inv_freq(spec, dim, self.max_position_embeddings)
            return inv, inv, scale
        return longrope_inv_freq(spec, dim, self.max_position_embeddings)

    @torch.no_grad()
    def reset_buffers(self, device: torch.device | str | None = None) -> None:
        """(Re)compute the frequency buffers on ``device`` (default: where they are now).

        Args:
            device: target device, e.g. after ``to_empty`` from the meta device.
        """
        # Computed on the CPU even under a meta-device context.
        with torch.device("cpu"):
            short, long, scale = self._frequencies()
        self.attention_scaling = scale
        device = device if device is not None else self.inv_freq.device
        self.inv_freq = short.to(device)
        self.long_inv_freq = long.to(device)

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (cos, sin), each [B, T, rotary_dim] float32, for ``positions`` [B, T]."""
        inv_freq = self.inv_freq
        if self.spec.rope_type == "longrope":
            original = self.spec.original_max_position_embeddings or 0
            # Like HF: the whole batch uses the long factors once any position passes the context.
            use_long = positions.max() + 1 > original
            inv_freq = torch.where(use_long, self.long_inv_freq, self.inv_freq)
        freqs = positions.float()[..., None] * inv_freq.float()  # (B, T, rotary_dim/2)
        emb = torch.cat((freqs, freqs), dim=-1)  # (B, T, rotary_dim)
        return emb.cos() * self.attention_scaling, emb.sin() * self.attention_scaling

    def extra_repr(self) -> str:
        return f"rope_type={self.spec.rope_type}, theta={self.spec.theta}, rotary_dim={self.rotary_dim}"


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """``[x1, x2] -> [-x2, x1]`` over the last dimension."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the leading ``cos.shape[-1]`` dims of ``x`` [B, H, T, D]; cos/sin are [B, T, R]."""
    rotary_dim = cos.shape[-1]
    cos, sin = cos[:, None].to(x.dtype), sin[:, None].to(x.dtype)  # (B, 1, T, R)
    if rotary_dim == x.shape[-1]:
        return x * cos + rotate_half(x) * sin
    rot, rest = x[..., :rotary_dim], x[..., rotary_dim:]
    return torch.cat((rot * cos + rotate_half(rot) * sin, rest), dim=-1)
