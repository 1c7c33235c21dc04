"""MXFP4 (OCP microscaling FP4) weights, as the published gpt-oss checkpoints store their experts.

Each block of 32 consecutive values along a row shares one scale:

- ``*_blocks`` [..., G, 16] uint8: 16 bytes per block, two FP4 E2M1 codes per byte, the low
  nibble first (value ``2j`` of the block in the low nibble of byte ``j``, ``2j + 1`` in the high).
  An E2M1 code is a sign bit and 3 magnitude bits: 0, 0.5, 1, 1.5, 2, 3, 4, 6.
- ``*_scales`` [..., G] uint8: an E8M0 exponent, the scale being ``2 ** (s - 127)``.

A row of ``in`` values has ``G = in / 32`` blocks; the value is ``code * 2 ** (s - 127)``, which
bfloat16 and float32 hold exactly (a 2-bit significand). gpt-oss stores ``gate_up_proj_blocks``
[E, 2 * I, D / 32, 16] and ``down_proj_blocks`` [E, D, I / 32, 16]: rows are output features,
the ``[E, out, in]`` orientation of ``nn.Linear``.
"""

from __future__ import annotations

import torch

#: Value of each 4-bit E2M1 code (bit 3 = sign).
_MAGNITUDES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
FP4_E2M1_VALUES = (*_MAGNITUDES, *(-v for v in _MAGNITUDES))
MXFP4_BLOCK = 32


def dequantize_mxfp4(
    blocks: torch.Tensor,
    scales: torch.Tensor,
    dtype: torch.dtype = torch.bfloat16,
    *,
    name: str = "blocks",
) -> torch.Tensor:
    """MXFP4 ``blocks`` [..., G, 16] and ``scales`` [..., G] -> values [..., G * 32] in ``dtype``.

    Works one slice of the leading dimension at a time, so the temporary index tensors stay
    small next to a 120B checkpoint's expert tensors.

    Args:
        blocks: uint8 packed codes.
        scales: uint8 E8M0 exponents.
        dtype: the output dtype (bfloat16 and float32 are exact).
        name: the checkpoint key, for error messages.

    Raises:
        ValueError: dtypes other than uint8, or shapes that do not fit together (named).
    """
    if blocks.dtype != torch.uint8 or scales.dtype != torch.uint8:
        raise ValueError(
            f"{name}: MXFP4 blocks and scales must be uint8, got {blocks.dtype} and {scales.dtype}"
        )
    if blocks.dim() < 2 or blocks.shape[-1] != MXFP4_BLOCK // 2:
        raise ValueError(
            f"{name}: MXFP4 blocks must be [..., G, {MXFP4_BLOCK // 2}], got {tuple(blocks.shape)}"
        )
    if blocks.shape[:-1] != scales.shape:
        raise ValueError(
            f"{name}: MXFP4 scales shape {tuple(scales.shape)} must equal the blocks shape "
            f"{tuple(blocks.shape)} without its last dimension"
        )
    lut = torch.tensor(FP4_E2M1_VALUES, dtype=torch.float32, device=blocks.device)
    lead = blocks.shape[0] if blocks.dim() > 2 else 1
    blocks_3d = blocks.reshape(lead, -1, MXFP4_BLOCK // 2)
    scales_2d = scales.reshape(lead, -1)
    out = torch.empty(*blocks.shape[:-1], MXFP4_BLOCK, dtype=dtype, device=blocks.device)
    out_3d = out.view(lead, -1, MXFP4_BLOCK)
    for i in range(lead):
        packed = blocks_3d[i].long()  # (rows * G, 16)
        codes = torch.stack([packed & 0x0F, packed >> 4], dim=-1).flatten(-2)  # (rows * G, 32)
        exponent = scales_2d[i].to(torch.int32).unsqueeze(-1) - 127  # (rows * G, 1)
        out_3d[i] = torch.ldexp(lut[codes], exponent.float()).to(dtype)
    return out.flatten(-2)
