"""Phi-3 / Phi-4-mini (``model_type`` "phi3").

HF checkpoints fuse ``qkv_proj`` and ``gate_up_proj``. The native model keeps them split
(``attn.q_proj``/``k_proj``/``v_proj``, ``mlp.gate_proj``/``up_proj``) so that LoRA targets,
TP plans and quantization filters are the same for every family; the state-dict converters split
and concatenate the tensors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from tune.models.decoder_builder import assemble_decoder
from tune.models.decoder_config import DecoderConfig, common_fields
from tune.models.hf_config import ConfigFields, UnsupportedConfigError
from tune.models.key_map import LLAMA_KEY_MAP
from tune.models.llama import default_rotary, llama_block
from tune.models.registry import ModelFamily, register_family
from tune.models.transformer import Transformer


@dataclass(frozen=True)
class Phi3Config(DecoderConfig):
    """Phi-3 sizes.

    Args:
        rotary_dim: leading head dimensions that rotate (``head_dim * partial_rotary_factor``).
        sliding_window: local attention window of every layer, or None.
    """

    rotary_dim: int = 0
    sliding_window: int | None = None

    @classmethod
    def from_hf(cls, f: ConfigFields) -> Phi3Config:
        """Read an HF ``Phi3Config``-style ``config.json``."""
        f.expect("hidden_act", ("silu",), "silu")
        common = common_fields(f, eps_default=1e-5)
        rotary_dim = int(common["head_dim"] * f.partial_rotary_factor())
        if rotary_dim < 2 or rotary_dim % 2:
            raise UnsupportedConfigError(
                f"{f.source}: partial_rotary_factor: expected head_dim * factor to be an even "
                f"number >= 2, got head_dim {common['head_dim']} -> rotary_dim {rotary_dim}"
            )
        return cls(
            **common,
            rotary_dim=rotary_dim,
            sliding_window=f.positive_int("sliding_window", None),
        )


def build_phi3(cfg: Phi3Config) -> Transformer:
    """A Phi-3 / Phi-4-mini model from its config."""
    blocks = [llama_block(cfg, sliding_window=cfg.sliding_window) for _ in range(cfg.num_layers)]
    return assemble_decoder(cfg, blocks, default_rotary(cfg, cfg.rotary_dim))


def split_fused(state_dict: dict[str, torch.Tensor], cfg: Phi3Config) -> dict[str, torch.Tensor]:
    """HF Phi-3 keys with ``qkv_proj``/``gate_up_proj`` split into Llama-style HF keys."""
    q = cfg.num_heads * cfg.head_dim
    kv = cfg.num_kv_heads * cfg.head_dim
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key.endswith(".self_attn.qkv_proj.weight"):
            if value.shape[0] != q + 2 * kv:
                raise ValueError(
                    f"{key}: expected {q + 2 * kv} rows (q {q} + k {kv} + v {kv}), got "
                    f"{tuple(value.shape)}"
                )
            prefix = key[: -len("qkv_proj.weight")]
            out[prefix + "q_proj.weight"] = value[:q]
            out[prefix + "k_proj.weight"] = value[q : q + kv]
            out[prefix + "v_proj.weight"] = value[q + kv :]
        elif key.endswith(".mlp.gate_up_proj.weight"):
            if value.shape[0] != 2 * cfg.intermediate_size:
                raise ValueError(
                    f"{key}: expected {2 * cfg.intermediate_size} rows (gate + up), got "
                    f"{tuple(value.shape)}"
                )
            prefix = key[: -len("gate_up_proj.weight")]
            gate, up = value.chunk(2, dim=0)
            out[prefix + "gate_proj.weight"] = gate
            out[prefix + "up_proj.weight"] = up
        else:
            out[key] = value
    return out


def fuse_split(state_dict: dict[str, torch.Tensor], cfg: Phi3Config) -> dict[str, torch.Tensor]:
    """Inverse of ``split_fused``: concatenate q/k/v and gate/up back into HF Phi-3 keys."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key.endswith(".self_attn.q_proj.weight"):
            prefix = key[: -len("q_proj.weight")]
            parts = [state_dict[prefix + f"{p}_proj.weight"] for p in "qkv"]
            out[prefix + "qkv_proj.weight"] = torch.cat(parts, dim=0)
        elif key.endswith(".mlp.gate_proj.weight"):
            prefix = key[: -len("gate_proj.weight")]
            parts = [state_dict[prefix + "gate_proj.weight"], state_dict[prefix + "up_proj.weight"]]
            out[prefix + "gate_up_proj.weight"] = torch.cat(parts, dim=0)
        elif key.endswith((".self_attn.k_proj.weight", ".self_attn.v_proj.weight")) or key.endswith(
            ".mlp.up_proj.weight"
        ):
            continue
        else:
            out[key] = value
    return out


def _phi(vocab: int, heads: int, kv: int, max_pos: int, extra: dict[str, Any]) -> dict[str, Any]:
    return {
        "model_type": "phi3",
        "vocab_size": vocab,
        "hidden_size": 3072,
        "intermediate_size": 8192,
        "num_hidden_layers": 32,
        "num_attention_heads": heads,
        "num_key_value_heads": kv,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-5,
        "max_position_embeddings": max_pos,
        "original_max_position_embeddings": 4096,
        "rope_theta": 10000.0,
        **extra,
    }


# Phi-4-mini's published config uses LongRoPE factors (not reproduced here): the named size
# describes the architecture and parameter count; build from the checkpoint's config.json for
# the exact rotary scaling.
PHI3_SIZES: dict[str, dict[str, Any]] = {
    "phi3-mini-4k": _phi(
        32064, 32, 32, 4096, {"sliding_window": 2047, "tie_word_embeddings": False}
    ),
    "phi4-mini": _phi(
        200064,
        24,
        8,
        131072,
        {"partial_rotary_factor": 0.75, "sliding_window": 262144, "tie_word_embeddings": True},
    ),
}

PHI3 = register_family(
    ModelFamily(
        name="phi3",
        model_types=("phi3",),
        config_from_hf=Phi3Config.from_hf,
        build=build_phi3,
        key_map=LLAMA_KEY_MAP,
        split_fused=split_fused,
        fuse_split=fuse_split,
        named_sizes=PHI3_SIZES,
    )
)

__all__ = ["PHI3", "PHI3_SIZES", "Phi3Config", "build_phi3", "fuse_split", "split_fused"]
