"""An HF `config.json` -> llama.cpp metadata (the inverse of `config_import`), refusing what llama.cpp
would compute differently.

Reads transformers 5 (`rope_parameters`) and transformers 4 (`rope_theta` + `rope_scaling`,
`rope_local_base_freq`) spellings.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import gguf
import torch

from tune.checkpoint.gguf.architectures import GgufArchitecture
from tune.checkpoint.gguf.errors import UnsupportedGgufError
from tune.checkpoint.gguf.rope_scaling import llama3_rope_divisors

logger = logging.getLogger(__name__)

_GEMMA_27B_LAYERS = {"gemma2": 46, "gemma3": 62}
_ACTIVATIONS = {"silu": ("silu", "swish"), "gelu_pytorch_tanh": ("gelu_pytorch_tanh", "gelu_tanh")}


def _int(config: Mapping[str, Any], key: str, where: str, default: Any = None) -> int:
    value = config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise UnsupportedGgufError(f"{where}: config {key} = {value!r}, expected an integer")
    return value


def head_dim_of(config: Mapping[str, Any], where: str) -> int:
    """`head_dim`, else hidden_size / num_attention_heads."""
    if config.get("head_dim") is not None:
        return _int(config, "head_dim", where)
    return _int(config, "hidden_size", where) // _int(config, "num_attention_heads", where)


def rope_settings(config: Mapping[str, Any], layer_type: str | None = None) -> dict[str, Any]:
    """The rope parameters (`rope_type`, `rope_theta`, ...) of `layer_type` layers (or the only ones)."""
    params = config.get("rope_parameters")
    if isinstance(params, Mapping):
        if layer_type is not None and isinstance(params.get(layer_type), Mapping):
            params = params[layer_type]
        elif "full_attention" in params and isinstance(params["full_attention"], Mapping):
            params = params["full_attention"]
        out = dict(params)
    else:
        out = dict(config.get("rope_scaling") or {})
        if layer_type == "sliding_attention":
            out = {"rope_theta": config.get("rope_local_base_freq", 10000.0)}
        out.setdefault("rope_theta", config.get("rope_theta", 10000.0))
    out["rope_type"] = out.get("rope_type", out.get("type", "default")) or "default"
    return out


def _check_activation(family: GgufArchitecture, config: Mapping[str, Any], where: str) -> None:
    key, expected = family.activation
    value = config.get(key, config.get("hidden_act", expected))
    if value not in _ACTIVATIONS.get(expected, (expected,)):
        raise UnsupportedGgufError(
            f"{where}: config {key} = {value!r}; llama.cpp's {family.gguf_arch!r} uses {expected!r}"
        )


def _add_rope(
    writer: gguf.GGUFWriter,
    family: GgufArchitecture,
    config: Mapping[str, Any],
    head_dim: int,
    where: str,
) -> dict[str, torch.Tensor]:
    """Write the rope keys; returns extra tensors (Llama 3 `rope_freqs.weight`)."""
    rope = rope_settings(config)
    writer.add_rope_freq_base(float(rope["rope_theta"]))
    kind = rope["rope_type"]
    if kind == "default":
        return {}
    if kind == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope["factor"]))
        return {}
    if kind == "yarn":
        writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        writer.add_rope_scaling_factor(float(rope["factor"]))
        original = rope.get("original_max_position_embeddings")
        if original is not None:
            writer.add_rope_scaling_orig_ctx_len(int(original))
        if rope.get("beta_fast") is not None:
            writer.add_rope_scaling_yarn_beta_fast(float(rope["beta_fast"]))
        if rope.get("beta_slow") is not None:
            writer.add_rope_scaling_yarn_beta_slow(float(rope["beta_slow"]))
        if rope.get("attention_factor") not in (None, 1.0) or rope.get("mscale"):
            raise UnsupportedGgufError(
                f"{where}: yarn attention_factor/mscale {rope.get('attention_factor')!r} is not "
                "written by this export"
            )
        return {}
    if kind == "llama3" and family.permute_qk:
        params = dict(rope)
        params.setdefault("original_max_position_embeddings", 8192)
        divisors = llama3_rope_divisors(head_dim, float(rope["rope_theta"]), params)
        return {"rope_freqs.weight": divisors}
    raise UnsupportedGgufError(
        f"{where}: rope_type {kind!r} cannot be exported for {family.hf_class}; supported: "
        "default, linear, yarn, llama3 (llama family)"
    )


def _layer_pattern(family: GgufArchitecture, layer_types: list[str]) -> list[bool] | None:
    """The explicit per-layer sliding flags, or None when llama.cpp's default pattern matches."""
    swa = [t == "sliding_attention" for t in layer_types]
    n = family.swa_pattern or 1
    default = [n > 1 and i % n < n - 1 for i in range(len(swa))]
    return None if swa == default else swa


def _add_gemma(
    writer: gguf.GGUFWriter,
    family: GgufArchitecture,
    config: Mapping[str, Any],
    head_dim: int,
    where: str,
) -> None:
    layers = _int(config, "num_hidden_layers", where)
    heads = _int(config, "num_attention_heads", where)
    is_27b = _GEMMA_27B_LAYERS.get(family.gguf_arch) == layers
    llama_cpp_scalar = _int(config, "hidden_size", where) // heads if is_27b else head_dim
    scalar = config.get("query_pre_attn_scalar", llama_cpp_scalar)
    if scalar != llama_cpp_scalar:
        raise UnsupportedGgufError(
            f"{where}: query_pre_attn_scalar = {scalar!r}, but llama.cpp scales queries by "
            f"{llama_cpp_scalar} for a {layers}-layer {family.gguf_arch} (head_dim, or hidden / "
            "heads for the 27B size); the GGUF would compute other attention"
        )
    if family.gguf_arch == "gemma2":
        for key, add in (
            ("attn_logit_softcapping", writer.add_attn_logit_softcapping),
            ("final_logit_softcapping", writer.add_final_logit_softcapping),
        ):
            value = config.get(key)
            if value is None:
                raise UnsupportedGgufError(
                    f"{where}: {key} is None; llama.cpp's gemma2 always soft-caps (default 50/30)"
                )
            add(float(value))
    else:
        if config.get("attn_logit_softcapping") is not None:
            raise UnsupportedGgufError(
                f"{where}: attn_logit_softcapping = {config['attn_logit_softcapping']!r}; "
                "llama.cpp's gemma3 has no attention soft-capping"
            )
        if config.get("final_logit_softcapping") is not None:
            writer.add_final_logit_softcapping(float(config["final_logit_softcapping"]))
        local = rope_settings(config, "sliding_attention")
        if local["rope_type"] != "default":
            raise UnsupportedGgufError(
                f"{where}: sliding-layer rope_type {local['rope_type']!r}; llama.cpp scales only "
                "the full-attention layers"
            )
        writer.add_rope_freq_base_swa(float(local["rope_theta"]))
    layer_types = config.get("layer_types")
    window = config.get("sliding_window")
    if window is None or (layer_types and "sliding_attention" not in layer_types):
        if family.gguf_arch == "gemma2":
            raise UnsupportedGgufError(
                f"{where}: a gemma2 without sliding-window layers cannot be stored; llama.cpp "
                "always uses its window"
            )
        return
    writer.add_sliding_window(int(window))
    if layer_types:
        if len(layer_types) != layers:
            raise UnsupportedGgufError(
                f"{where}: layer_types has {len(layer_types)} entries for {layers} layers"
            )
        pattern = _layer_pattern(family, list(layer_types))
        if pattern is not None:
            writer.add_sliding_window_pattern(pattern)


def _warn_ignored_window(family: GgufArchitecture, config: Mapping[str, Any], where: str) -> None:
    window = config.get("sliding_window")
    long_context = _int(config, "max_position_embeddings", where, 0)
    if family.model_type == "mistral" and window is not None and window < long_context:
        logger.warning(
            "%s: sliding_window %d is not stored: llama.cpp runs Mistral as llama with full "
            "attention (outputs differ beyond %d tokens)",
            where,
            window,
            window,
        )
    if family.model_type in ("qwen2", "qwen3") and config.get("use_sliding_window"):
        logger.warning("%s: use_sliding_window is not stored; llama.cpp attends fully", where)


def add_model_metadata(
    writer: gguf.GGUFWriter,
    family: GgufArchitecture,
    config: Mapping[str, Any],
    where: str,
) -> dict[str, torch.Tensor]:
    """Write the `<arch>.*` keys of `config`; returns extra tensors llama.cpp needs (GGUF names).

    Raises:
        UnsupportedGgufError: a setting llama.cpp would not reproduce (names the key and value).
    """
    _check_activation(family, config, where)
    heads = _int(config, "num_attention_heads", where)
    head_dim = head_dim_of(config, where)
    hidden = _int(config, "hidden_size", where)
    writer.add_context_length(_int(config, "max_position_embeddings", where))
    writer.add_embedding_length(hidden)
    writer.add_block_count(_int(config, "num_hidden_layers", where))
    writer.add_feed_forward_length(_int(config, "intermediate_size", where))
    writer.add_head_count(heads)
    writer.add_head_count_kv(_int(config, "num_key_value_heads", where, heads))
    writer.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-6)))
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_vocab_size(_int(config, "vocab_size", where))
    rope = rope_settings(config)
    partial = rope.get("partial_rotary_factor", config.get("partial_rotary_factor", 1.0)) or 1.0
    if partial != 1.0 and not family.partial_rotary:
        raise UnsupportedGgufError(
            f"{where}: partial_rotary_factor = {partial!r}; {family.hf_class} rotates whole heads"
        )
    if family.permute_qk or family.partial_rotary:
        writer.add_rope_dimension_count(int(head_dim * partial))
    extra = _add_rope(writer, family, config, int(head_dim * partial), where)
    if family.model_type == "phi3":
        original = config.get("original_max_position_embeddings")
        if original is not None:
            writer.add_rope_scaling_orig_ctx_len(int(original))
        if config.get("sliding_window") is not None:
            writer.add_sliding_window(int(config["sliding_window"]))
    if family.norm_offset:
        _add_gemma(writer, family, config, head_dim, where)
    _warn_ignored_window(family, config, where)
    return extra
