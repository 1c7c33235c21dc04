"""llama.cpp's storage conventions, applied on export and undone on import (HF names, torch tensors).

- Llama family: llama.cpp rotates adjacent pairs `(x[2i], x[2i+1])` of each head, HF rotates the
  two halves `(x[i], x[i + d/2])`. The converter reorders the rows of `q_proj` / `k_proj` (and
  their biases) inside each head: half-major `[2, d/2]` becomes pair-major `[d/2, 2]`.
- Gemma: RMSNorm scales by `1 + w`; llama.cpp stores `w + 1`. In float32 `(w + 1) - 1` equals `w`
  to within half an ulp of `1 + w` (exactly when `1 + w` is exact, e.g. `w = 0`).
"""

from __future__ import annotations

import torch

from tune.checkpoint.gguf.architectures import GgufArchitecture


def _regroup_rows(tensor: torch.Tensor, n_heads: int, *, to_pairs: bool) -> torch.Tensor:
    rows = tensor.shape[0]
    if rows % (2 * n_heads):
        raise ValueError(
            f"cannot permute {rows} rows for {n_heads} heads: rows must be a multiple of 2 x heads"
        )
    half = rows // n_heads // 2
    split = (n_heads, 2, half) if to_pairs else (n_heads, half, 2)
    return tensor.reshape(*split, *tensor.shape[1:]).transpose(1, 2).reshape(tensor.shape)


def permute_heads(tensor: torch.Tensor, n_heads: int) -> torch.Tensor:
    """HF rows (per head: first halves, then second halves) -> llama.cpp's interleaved pairs.

    Args:
        tensor: `[n_heads * head_dim, ...]` (a weight `[out, in]` or a bias `[out]`).
        n_heads: heads in `tensor` (query heads for q_proj, KV heads for k_proj).
    """
    return _regroup_rows(tensor, n_heads, to_pairs=True)


def unpermute_heads(tensor: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Inverse of `permute_heads`: llama.cpp's interleaved rows -> HF's half-split rows."""
    return _regroup_rows(tensor, n_heads, to_pairs=False)


def _heads_to_permute(family: GgufArchitecture, hf_name: str, config: dict) -> int | None:
    if not family.permute_qk:
        return None
    if ".self_attn.q_proj." in hf_name:
        return int(config["num_attention_heads"])
    if ".self_attn.k_proj." in hf_name:
        heads = config.get("num_key_value_heads")
        return int(heads if heads is not None else config["num_attention_heads"])
    return None


def _is_norm(hf_name: str) -> bool:
    return hf_name.endswith("norm.weight")


def to_gguf_layout(
    family: GgufArchitecture, hf_name: str, tensor: torch.Tensor, config: dict
) -> torch.Tensor:
    """An HF tensor as llama.cpp stores it (float32)."""
    tensor = tensor.to(torch.float32)
    heads = _heads_to_permute(family, hf_name, config)
    if heads is not None:
        tensor = permute_heads(tensor, heads)
    if family.norm_offset and _is_norm(hf_name):
        tensor = tensor + family.norm_offset
    return tensor


def from_gguf_layout(
    family: GgufArchitecture, hf_name: str, tensor: torch.Tensor, config: dict
) -> torch.Tensor:
    """A tensor read from GGUF (float32) in HF layout, for the HF parameter `hf_name`."""
    heads = _heads_to_permute(family, hf_name, config)
    if heads is not None:
        tensor = unpermute_heads(tensor, heads)
    if family.norm_offset and _is_norm(hf_name):
        tensor = tensor - family.norm_offset
    return tensor
