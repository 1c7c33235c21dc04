"""Fields every decoder family shares; each family's frozen config dataclass extends it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tune.models.hf_config import ConfigFields, UnsupportedConfigError
from tune.models.rotary import RopeSpec


@dataclass(frozen=True)
class DecoderConfig:
    """Sizes common to all supported decoder-only families.

    Args:
        model_type: HF ``model_type`` the config came from.
        vocab_size: embedding rows.
        hidden_size: model width.
        intermediate_size: MLP hidden width.
        num_layers: transformer blocks.
        num_heads: query heads.
        num_kv_heads: key/value heads.
        head_dim: per-head width.
        rms_norm_eps: norm epsilon.
        rope: rotary recipe.
        max_position_embeddings: context length.
        tie_word_embeddings: LM head shares the embedding matrix.
    """

    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope: RopeSpec
    max_position_embeddings: int
    tie_word_embeddings: bool


def common_fields(
    f: ConfigFields, *, tie_default: bool = False, eps_default: float = 1e-6
) -> dict[str, Any]:
    """Read and check the ``DecoderConfig`` fields of an HF config; keyword arguments for it.

    Sizes and counts must be positive integers, ``num_attention_heads`` a multiple of
    ``num_key_value_heads``, ``hidden_size`` a multiple of ``num_attention_heads`` when no
    ``head_dim`` is given, ``head_dim`` even (rotary pairs), ``rms_norm_eps`` finite and > 0 and
    ``tie_word_embeddings`` a boolean.

    Raises:
        UnsupportedConfigError: ``<source>: <key>: expected ..., got <value>``.
    """
    sizes = {
        key: f.positive_int(key)
        for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers")
    }
    hidden = sizes["hidden_size"]
    heads = f.positive_int("num_attention_heads")
    kv_heads = f.positive_int("num_key_value_heads", heads)
    if heads % kv_heads:
        raise UnsupportedConfigError(
            f"{f.source}: num_attention_heads: expected a multiple of num_key_value_heads="
            f"{kv_heads}, got {heads}"
        )
    head_dim = f.positive_int("head_dim", None)
    if head_dim is None:
        if hidden % heads:
            raise UnsupportedConfigError(
                f"{f.source}: hidden_size: expected a multiple of num_attention_heads={heads} "
                f"when no head_dim is given, got {hidden}"
            )
        head_dim = hidden // heads
    if head_dim % 2:
        raise UnsupportedConfigError(
            f"{f.source}: head_dim: expected an even number (rotary embeddings rotate pairs), "
            f"got {head_dim}"
        )
    return {
        "model_type": f.model_type,
        "vocab_size": sizes["vocab_size"],
        "hidden_size": hidden,
        "intermediate_size": sizes["intermediate_size"],
        "num_layers": sizes["num_hidden_layers"],
        "num_heads": heads,
        "num_kv_heads": kv_heads,
        "head_dim": head_dim,
        "rms_norm_eps": f.number("rms_norm_eps", eps_default, positive=True),
        "rope": f.rope(),
        "max_position_embeddings": f.positive_int("max_position_embeddings", 2048),
        "tie_word_embeddings": f.boolean("tie_word_embeddings", tie_default),
    }


def layer_windows(f: ConfigFields, num_layers: int) -> tuple[int | None, ...]:
    """Per-layer sliding window from ``layer_types`` (None = full attention)."""
    types = f.get("layer_types", None)
    if types is None:
        return (None,) * num_layers
    if not isinstance(types, list):
        raise UnsupportedConfigError(
            f"{f.source}: layer_types: expected a list of strings, got {types!r}"
        )
    if len(types) != num_layers:
        raise UnsupportedConfigError(
            f"{f.source}: layer_types has {len(types)} entries for {num_layers} layers"
        )
    supported = ("full_attention", "sliding_attention")
    windows: list[int | None] = []
    for i, kind in enumerate(types):
        if kind not in supported:
            raise UnsupportedConfigError(
                f"{f.source}: layer_types[{i}] = {kind!r} is not supported; supported: "
                f"{list(supported)}"
            )
        windows.append(f.positive_int("sliding_window") if kind == "sliding_attention" else None)
    return tuple(windows)
