"""A key/value cache attached to attention layers only for inference."""

from __future__ import annotations

import torch
from torch import nn


class KVCache(nn.Module):
    """Preallocated keys and values [B, H_kv, max_seq_len, head_dim] filled left to right.

    Args:
        batch_size: rows decoded together.
        max_seq_len: prompt plus generated tokens.
        num_kv_heads: key/value heads of the layer.
        head_dim: per-head width.
        dtype: cache dtype (the model's).
        device: cache device (the model's).
        value_dim: per-head width of the values when it differs from the keys' (MLA caches its
            latent as keys and its rotary key part as values).
    """

    k_cache: torch.Tensor
    v_cache: torch.Tensor

    def __init__(
        self,
        batch_size: int,
        max_seq_len: int,
        num_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device | str,
        value_dim: int | None = None,
    ) -> None:
        super().__init__()
        shape = (batch_size, num_kv_heads, max_seq_len, head_dim)
        v_shape = (*shape[:3], head_dim if value_dim is None else value_dim)
        # Not part of the model's state: never saved with a checkpoint.
        self.register_buffer(
            "k_cache", torch.zeros(shape, dtype=dtype, device=device), persistent=False
        )
        self.register_buffer(
            "v_cache", torch.zeros(v_shape, dtype=dtype, device=device), persistent=False
        )
        self.max_seq_len = max_seq_len
        self.length = 0

    def reset(self) -> None:
        """Forget every cached token."""
        self.length = 0

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append ``k``, ``v`` [B, H_kv, T, head_dim]; return the whole caches [B, H_kv, S, D].

        The first update resizes the head dimension to ``k``'s: under tensor parallelism a rank
        computes ``num_kv_heads / tp`` heads.
        """
        start, steps = self.length, k.shape[2]
        if start + steps > self.max_seq_len:
            raise ValueError(
                f"KV cache overflow: {start} cached + {steps} new tokens > max_seq_len "
                f"{self.max_seq_len}; set up the cache with a larger max_seq_len"
            )
        if k.shape[0] != self.k_cache.shape[0]:
            raise ValueError(
                f"KV cache was set up for batch size {self.k_cache.shape[0]}, got {k.shape[0]}"
            )
        if start == 0 and k.shape[1] != self.k_cache.shape[1]:
            # Tensor parallel: this rank holds only its share of the key/value heads.
            shape = (k.shape[0], k.shape[1], self.max_seq_len, k.shape[3])
            self.k_cache = self.k_cache.new_zeros(shape)
            self.v_cache = self.v_cache.new_zeros((*shape[:3], v.shape[3]))
        self.k_cache[:, :, start : start + steps] = k
        self.v_cache[:, :, start : start + steps] = v
        self.length = start + steps
        return self.k_cache, self.v_cache


def setup_kv_cache(
    model: nn.Module,
    batch_size: int,
    max_seq_len: int,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> None:
    """Attach an empty ``KVCache`` as ``kv_cache`` to every attention layer of ``model``.

    Args:
        model: a model whose attention modules have ``num_kv_heads``, ``head_dim`` and a
            ``kv_cache`` attribute (``tune.models.Attention``), and optionally
            ``cache_value_dim`` (``MLAttention``).
        batch_size: rows decoded together.
        max_seq_len: longest prompt plus new tokens.
        dtype: cache dtype; defaults to the model's first floating-point parameter's.
        device: cache device; defaults to the model's first parameter's.
    """
    reference = next(p for p in model.parameters() if p.is_floating_point())
    found = 0
    for module in model.modules():
        if hasattr(module, "kv_cache") and hasattr(module, "num_kv_heads"):
            module.kv_cache = KVCache(
                batch_size,
                max_seq_len,
                int(module.num_kv_heads),  # type: ignore[arg-type]
                int(module.head_dim),  # type: ignore[arg-type]
                dtype or reference.dtype,
                device or reference.device,
                value_dim=getattr(module, "cache_value_dim", None),
            )
            found += 1
    if not found:
        raise ValueError(f"{type(model).__name__} has no attention layer with a kv_cache slot")


def teardown_kv_cache(model: nn.Module) -> None:
    """Detach every ``KVCache`` from ``model`` (training never sees a cache)."""
    for module in model.modules():
        if getattr(module, "kv_cache", None) is not None:
            module.kv_cache = None  # type: ignore[assignment]


def cache_length(model: nn.Module) -> int | None:
    """Tokens already cached by the first attention layer, or None when no cache is attached."""
    for module in model.modules():
        cache = getattr(module, "kv_cache", None)
        if isinstance(cache, KVCache):
            return cache.length
    return None
