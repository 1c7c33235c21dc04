"""DoRA (weight-decomposed LoRA) numerics: magnitude init, detached row norms, output, merge.

DoRA (Liu et al., 2024) writes the adapted weight as `m * (W + s B A) / ||W + s B A||_row`, with a
trainable magnitude `m` [out]. Following section 4.3 of the paper, the row norm is treated as a
constant (detached), so backward stores no [out, in] intermediate.
"""

from __future__ import annotations

import torch

from tune.peft.dense_weight import dense_weight


def dora_weight_norm(
    weight: torch.Tensor,
    lora_a: torch.Tensor,
    lora_b: torch.Tensor,
    scaling: float,
    dtype: torch.dtype,
) -> torch.Tensor:
    """Row norms of the adapted weight, detached: `||W + s B A||_2` over the input dimension.

    A quantized `weight` is dequantized for this computation only (freed on return).

    Args:
        weight: [out, in] base weight, plain or a tensor subclass.
        lora_a: [r, in] LoRA A.
        lora_b: [out, r] LoRA B.
        scaling: The LoRA scale `s`.
        dtype: Computation dtype (the input's).

    Returns:
        [out] norms, without autograd history.
    """
    with torch.no_grad():
        adapted = dense_weight(weight, dtype) + scaling * (lora_b.to(dtype) @ lora_a.to(dtype))
        return torch.linalg.norm(adapted, dim=1).to(dtype)


def dora_extra_output(
    base_no_bias: torch.Tensor,
    lora_out: torch.Tensor,
    magnitude: torch.Tensor,
    weight_norm: torch.Tensor,
    scaling: float,
) -> torch.Tensor:
    """What DoRA adds on top of the base layer's output.

    `(m / n - 1) * (x W^T) + (m / n) * s * B A x`, the same decomposition PEFT uses, so that the
    base output is computed once when dropout is off.

    Args:
        base_no_bias: [..., out] `x W^T` (no bias) of the adapter input x (after dropout).
        lora_out: [..., out] `B A x` (unscaled).
        magnitude: [out] trainable magnitude `m`.
        weight_norm: [out] detached row norms `n` from `dora_weight_norm`.
        scaling: The LoRA scale `s`.
    """
    mag_norm_scale = (magnitude / weight_norm).to(base_no_bias.dtype).view(1, -1)  # [1, out]
    return (mag_norm_scale - 1) * base_no_bias + mag_norm_scale * lora_out * scaling


def dora_merged_weight(
    weight: torch.Tensor, delta: torch.Tensor, magnitude: torch.Tensor
) -> torch.Tensor:
    """The DoRA weight folded into one matrix: `m[:, None] * (W + delta) / ||W + delta||_row`.

    Args:
        weight: [out, in] plain base weight.
        delta: [out, in] `s B A` in the same dtype.
        magnitude: [out] magnitude vector.
    """
    adapted = weight + delta
    norm = torch.linalg.norm(adapted, dim=1).to(adapted.dtype)
    return (magnitude.to(adapted.dtype) / norm).view(-1, 1) * adapted
