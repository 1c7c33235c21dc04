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
    """Read the ``DecoderConfig`` fields from an HF config; keyword arguments for the dataclass."""
    hidden = f.integer("hidden_size")
    heads = f.integer("num_attention_heads")
    kv_heads = f.integer("num_key_value_heads", heads)
    if heads % kv_heads:
        raise UnsupportedConfigError(
            f"{f.source}: num_attention_heads={heads} is not a multiple of "
            f"num_key_value_heads={kv_heads}"
        )
    head_dim = f.integer("head_dim", None)
    if head_dim is None:
        if hidden % heads:
            raise UnsupportedConfigError(
                f"{f.source}: hidden_size={hidden} is not divisible by num_attention_heads="
                f"{heads} and no head_dim is given"
            )
        head_dim = hidden // heads
    return {
        "model_type": f.model_type,
        "vocab_size": f.integer("vocab_size"),
        "hidden_size": hidden,
        "intermediate_size": f.integer("intermediate_size"),
        "num_layers": f.integer("num_hidden_layers"),
        "num_heads": heads,
        "num_kv_heads": kv_heads,
        "head_dim": head_dim,
        "rms_norm_eps": f.number("rms_norm_eps", eps_default),
        "rope": f.rope(),
        "max_position_embeddings": f.integer("max_position_embeddings", 2048),
        "tie_word_embeddings": bool(f.get("tie_word_embeddings", tie_default)),
    }


def layer_windows(f: ConfigFields, num_layers: int) -> tuple[int | None, ...]:
    """Per-layer sliding window from ``layer_types`` (None = full attention)."""
    types = f.get("layer_types", None)
    if types is None:
        return (None,) * num_layers
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
        windows.append(f.integer("sliding_window") if kind == "sliding_attention" else None)
    return tuple(windows)
