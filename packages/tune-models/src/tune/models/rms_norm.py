"""Root-mean-square layer norm computed in float32."""

from __future__ import annotations

import torch
from torch import nn

from tune.models.rms_norm_function import can_fuse_rms_norm, rms_norm_fp32


class RMSNorm(nn.Module):
    """RMSNorm over the last dimension, normalising in float32 and casting back.

    Args:
        dim: size of the normalised (last) dimension.
        eps: added to the mean square before the reciprocal square root.
        weight_offset: the scale is ``weight_offset + weight``; Gemma stores ``weight`` as an
            offset from one (``weight_offset=1.0``, weight initialised to zeros).
    """

    def __init__(self, dim: int, eps: float = 1e-6, weight_offset: float = 0.0) -> None:
        super().__init__()
        self.eps = eps
        self.weight_offset = weight_offset
        self.weight = nn.Parameter(torch.empty(dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialise the scale to the identity (ones, or zeros when stored as an offset)."""
        nn.init.constant_(self.weight, 1.0 - self.weight_offset)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise ``x`` [..., dim] and return it in ``x``'s dtype."""
        if self.weight_offset == 0.0 and can_fuse_rms_norm(x, self.weight):
            return rms_norm_fp32(x, self.weight, self.eps)  # same forward, shorter backward
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        if self.weight_offset == 0.0:
            # Llama order: cast back first, then scale in the weight's dtype.
            return self.weight * normed.to(x.dtype)
        return (normed * (self.weight_offset + self.weight.float())).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}, weight_offset={self.weight_offset}"
