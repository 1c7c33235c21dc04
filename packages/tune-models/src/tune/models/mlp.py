"""Gated feed-forward layers (SwiGLU, GeGLU)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from tune.models.gated_function import can_fuse_gated, gated_hidden


def _gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "silu": F.silu,
    "gelu_tanh": _gelu_tanh,
    "gelu": F.gelu,
}


class GatedMLP(nn.Module):
    """``down_proj(act(gate_proj(x)) * up_proj(x))``.

    Args:
        dim: model width.
        hidden_dim: width of the gated hidden layer.
        activation: one of ``ACTIVATIONS`` ("silu" for SwiGLU, "gelu_tanh" for GeGLU).
        bias: whether the three projections have biases.
    """

    def __init__(self, dim: int, hidden_dim: int, activation: str = "silu", bias: bool = False):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(
                f"unsupported MLP activation {activation!r}; supported: {sorted(ACTIVATIONS)}"
            )
        self.activation = activation
        self._act = ACTIVATIONS[activation]
        self.gate_proj = nn.Linear(dim, hidden_dim, bias=bias)
        self.up_proj = nn.Linear(dim, hidden_dim, bias=bias)
        self.down_proj = nn.Linear(hidden_dim, dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the gated MLP to ``x`` [B, T, dim] -> [B, T, dim]."""
        gate, up = self.gate_proj(x), self.up_proj(x)  # [B, T, hidden_dim] each
        if can_fuse_gated(gate, up):  # saves gate and up only (see tune.models.gated_function)
            fn = None if self.activation == "silu" else self._gated
            return self.down_proj(gated_hidden(gate, up, fn))
        return self.down_proj(self._gated(gate, up))

    def _gated(self, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        return self._act(gate) * up
